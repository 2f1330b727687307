"""Tiny Second-Half-MoE (DeepSpeed-MoE, Rajbhandari et al. 2022, docs/methods/pr_moe.md Phenomenon-I): MoE placement.

The tiny standard MoE (tiny_moe.py: 8 experts top-2, one fixed pool entry per MoE layer) with its 2 MoE layers in
the second half of the 4 blocks (model.layer_plan='second_half': blocks 2 and 3) instead of every
other block. DeepSpeed found Second-Half-MoE clearly better than First-Half-MoE (deeper layers gain more from
experts), the motivation of Pyramid-MoE. Other placements: 'every_other' (tiny_moe.py), 'all', or a D/M pattern.

Run:  python -m samoe_jax.describe --config=configs/tiny_second_half.py
      python -m samoe_jax.train --config=configs/tiny_second_half.py --workdir=runs/tiny_second_half
"""

from samoe_jax.config.presets import tiny


def get_config():
  c = tiny('moe')
  c.model.layer_plan = 'second_half'
  return c
