"""Tiny PR-MoE-8/16 = Pyramid-MoE + Residual-MoE (DeepSpeed-MoE, Rajbhandari et al. 2022, docs/methods/pr_moe.md).

tiny_pyramid.py (top-1; 8 experts in block 1, 16 in block 3, two pool groups) with a Residual-MoE dense MLP in
each MoE layer, combined as in DeepSpeed's use_residual: c = softmax(W_c x + b_c), y = c0 MoE(x) + c1 MLP(x)
(moe.residual='learned_softmax'; ':sum' gives the paper's y = MLP(x) + MoE(x)). Expected: close to an MoE with
the larger expert count everywhere, with fewer parameters.

Run:  python -m samoe_jax.describe --config=configs/tiny_prmoe.py
      python -m samoe_jax.train --config=configs/tiny_prmoe.py --workdir=runs/tiny_prmoe
"""

from samoe_jax.config.presets import tiny
from samoe_jax.config.pyramid import set_pr_moe


def get_config(residual: str | None = None):
  c = tiny('moe')
  set_pr_moe(c, '8,16', residual=residual or 'learned_softmax')
  return c
