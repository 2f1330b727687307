"""Tiny Residual-MoE-8 (DeepSpeed-MoE, Rajbhandari et al. 2022, docs/methods/pr_moe.md Phenomenon-II).

The tiny standard MoE (tiny_moe.py) with top-1 routing, where every MoE layer also runs one fixed dense MLP of
the expert's shape (d_ff 512) on every token: y = MLP(x) + MoE(x) (moe.residual='sum', the paper's form). The
argument picks the combination: ':sum' (default) or ':learned_softmax' (DeepSpeed's use_residual,
c = softmax(W_c x + b_c), y = c0 MoE(x) + c1 MLP(x)). Expected: about the loss of top-2 at top-1 expert cost.

Run:  python -m samoe_jax.describe --config=configs/tiny_residual_moe.py
      python -m samoe_jax.train --config=configs/tiny_residual_moe.py --workdir=runs/tiny_residual_moe
      python -m samoe_jax.train --config=configs/tiny_residual_moe.py:learned_softmax --workdir=runs/tiny_res_ls
"""

from samoe_jax.config.presets import tiny
from samoe_jax.config.pyramid import set_pr_moe


def get_config(residual: str | None = None):
  c = tiny('moe')
  set_pr_moe(c, '', residual=residual or 'sum')
  return c
