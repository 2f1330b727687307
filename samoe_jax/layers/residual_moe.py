"""Residual-MoE (docs/methods/pr_moe.md, DeepSpeed-MoE, Rajbhandari et al. 2022): every token passes through one fixed
dense MLP and the routed (top-1) experts, and the two outputs are combined.

Einsum letters: B batch, L length, D width, C the two combine coefficients.

moe.residual:
  'none'             the plain MoE FFN (default; nothing is built).
  'sum'              the paper's form: y = MLP(x) + MoE(x)  (MoE(x) = sum_k g_k u_{e_k}(x), dropped tokens 0).
  'learned_softmax'  DeepSpeed's `use_residual=True` (deepspeed/moe/layer.py): a per-token convex combination
                     c_BLC = softmax(x W_c + b_c), W_c: [D, 2], b_c: [2];  y = c_0 MoE(x) + c_1 MLP(x).
The MLP is expert-shaped (width moe.expert_d_ff, else model.d_ff) and is one per MoE layer; it lives in the block
as `residual_mlp` (w_in, b_in, w_out, b_out) and the coefficient layer as `residual_coef` (kernel, bias). Both
act per token, so they are causal and need no decoding cache.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from samoe_jax.config.checks import Problems, register
from samoe_jax.layers import initializers
from samoe_jax.layers.mlp import DenseFFN

MODES: tuple[str, ...] = ('none', 'sum', 'learned_softmax')


@register('moe', moe_only=True)
def check_residual(c: ml_collections.ConfigDict, problems: Problems) -> None:
  """moe.residual (a registered check, config/checks.py)."""
  problems.one_of('moe.residual', c.moe.residual, MODES)


class ResidualCoefficients(nn.Module):
  """c_BLC = softmax(x_BLD W_c + b_c) over C = 2 (float32): [..., 0] weighs the MoE, [..., 1] the dense MLP."""
  init_std: float

  @nn.compact
  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    w_DC = self.param('kernel', initializers.normal(self.init_std, ('embed', None)), (x_BLD.shape[-1], 2))
    b_C = self.param('bias', initializers.zeros((None,)), (2,))
    return jax.nn.softmax(jnp.einsum('bld,dc->blc', x_BLD.astype(jnp.float32), w_DC) + b_C, axis=-1)


def combine(mode: str, moe_BLD: jax.Array, mlp_BLD: jax.Array, coef_BLC: jax.Array | None) -> jax.Array:
  """The Residual-MoE output of the MoE and dense-MLP outputs (see the module docstring)."""
  if mode == 'sum':
    return mlp_BLD + moe_BLD
  if mode == 'learned_softmax':
    c_BLC = coef_BLC.astype(moe_BLD.dtype)
    return c_BLC[..., 0:1] * moe_BLD + c_BLC[..., 1:2] * mlp_BLD
  raise ValueError(f'moe.residual={mode!r} is not one of {", ".join(map(repr, MODES[1:]))} here')


def residual_moe_output(mode: str, x_BLD: jax.Array, moe_BLD: jax.Array, *, d_ff: int, init_std: float,
                        out_init_std: float, dtype: jnp.dtype, train: bool) -> jax.Array:
  """Called inside a block's compact __call__ (so the parameters are the block's `residual_mlp` and
  `residual_coef`): x_BLD is the MoE FFN's (normalised) input, moe_BLD its output; returns the combined output."""
  mlp_BLD = DenseFFN(d_ff, init_std, out_init_std, dtype, name='residual_mlp')(x_BLD, train=train)
  coef_BLC = (ResidualCoefficients(init_std, name='residual_coef')(x_BLD) if mode == 'learned_softmax' else None)
  return combine(mode, moe_BLD, mlp_BLD.astype(moe_BLD.dtype), coef_BLC)


def residual_params(mode: str, d_model: int, d_ff: int) -> int:
  """Parameters one Residual-MoE layer adds: the dense MLP (2 D F + F + D) and, learned_softmax, W_c, b_c (2D + 2)."""
  if mode == 'none':
    return 0
  return 2 * d_model * d_ff + d_ff + d_model + (2 * d_model + 2 if mode == 'learned_softmax' else 0)


def residual_flops(mode: str, d_model: int, d_ff: int) -> int:
  """Forward matmul FLOPs per token one Residual-MoE layer adds: the MLP 2 * 2 D F, the coefficients 2 * D * 2."""
  if mode == 'none':
    return 0
  return 4 * d_model * d_ff + (4 * d_model if mode == 'learned_softmax' else 0)
