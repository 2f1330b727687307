"""Tiny GShard MoE (Lepikhin et al. 2020, arXiv 2006.16668; docs/methods/routing.md): top-2 with GShard's random routing
(second_policy='random': the 2nd expert is used only when 2 g2 > U(0, 1), g2 = p2 / (p1 + p2), in training),
capacity 2 ceil(T/E) shared by both choices (fairseq's top-2 formula), causal 'position' slot priority.

Standard MoE (tiny('moe')) otherwise. docs/methods/routing.md.

Run:  python -m samoe_jax.describe --config=configs/tiny_gshard_top2_random.py
      python -m samoe_jax.train --config=configs/tiny_gshard_top2_random.py --workdir=runs/tiny_gshard_top2_random
"""

from samoe_jax.config.presets import tiny


def get_config():
  c = tiny('moe')
  c.moe.top_k = 2
  c.moe.second_policy = 'random'
  c.moe.capacity_formula = 'fairseq'
  return c
