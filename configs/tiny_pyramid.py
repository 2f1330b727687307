"""Tiny Pyramid-MoE-8/16 (DeepSpeed-MoE, Rajbhandari et al. 2022, docs/methods/pr_moe.md Phenomenon-I).

The tiny standard MoE (tiny_moe.py: 4 layers, MoE on blocks 1 and 3, fixed one pool entry per MoE layer) with
top-1 routing and more experts in the deeper MoE layer: 8 experts in block 1, 16 in block 3
(moe.experts_per_layer='8,16'). The two counts form two pool groups, `expert_pool` [1, 8, ...] and
`expert_pool_e16` [1, 16, ...]; routers are [D, 8] and [D, 16]. Compare with tiny_moe.py at top-1
(--config.moe.top_k=1), tiny_residual_moe.py and tiny_prmoe.py.

Run:  python -m samoe_jax.describe --config=configs/tiny_pyramid.py
      python -m samoe_jax.train --config=configs/tiny_pyramid.py --workdir=runs/tiny_pyramid
"""

from samoe_jax.config.presets import tiny
from samoe_jax.config.pyramid import set_pr_moe


def get_config():
  c = tiny('moe')
  set_pr_moe(c, '8,16', residual='none')
  return c
