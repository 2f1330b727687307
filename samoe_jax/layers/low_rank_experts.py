"""Experts stored as low-rank plus sparse matrices, W = U V + S (MC-SMoE's compression stage; LoSparse).

MC-SMoE (Li et al., ICLR 2024) compresses each merged expert's linear maps as in LoSparse (Li et al., ICML 2023):
a rank-R product U V, initialised from a truncated SVD of the trained W, plus a residual S = W - U V that is pruned
during fine-tuning (samoe_jax/training/sparse_pruning.py). Pruned entries of S are exact zeros of the stored
array; no separate mask is kept, so checkpoints, resume and sharding are those of any parameter.

Einsum letters: P pool entries, E experts, D model width, F expert hidden width, R rank.

`LowRankSparsePool` is a drop-in for `ExpertPool` (layers/experts.py): it returns the same `ExpertWeights`
[P, E, ...], so mixing, routing and dispatch are unchanged. The dense matrices are rebuilt once per forward pass
(P E R D F multiply-adds per matrix, like SaMoE's mixing): XLA has no fast unstructured sparse matmul, so the
expert FLOPs executed are the dense ones; accounting.py reports both (docs/compression.md).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from samoe_jax.layers import initializers
from samoe_jax.layers.experts import ExpertWeights

# Parameter names: each matrix m of the expert FFN ('w_in' [D, F], 'w_out' [F, D]) is stored as
# m_left [.., D_in, R], m_right [.., R, D_out] and m_sparse [.., D_in, D_out].
MATRICES = ('w_in', 'w_out')
SPARSE_SUFFIX = '_sparse'


def sparse_names() -> tuple[str, ...]:
  """The parameter names of the sparse residuals S (the arrays sparse_pruning prunes)."""
  return tuple(m + SPARSE_SUFFIX for m in MATRICES)


def low_rank_plus_sparse(left: jax.Array, right: jax.Array, sparse: jax.Array) -> jax.Array:
  """W = U V + S over any leading axes: left [.., M, R], right [.., R, N], sparse [.., M, N] -> [.., M, N]."""
  return jnp.einsum('...mr,...rn->...mn', left, right) + sparse


class LowRankSparsePool(nn.Module):
  """P x E expert FFNs, each matrix stored as U V + S (module doc). Returns ExpertWeights with leading [P, E].

  A fresh init (a run trained from scratch with this parameterisation) draws U, V and S so that U V + S has the
  dense pool's init scale; compressed runs overwrite them with the SVD of trained experts (compress/low_rank.py).
  """
  pool_size: int
  num_experts: int
  d_model: int
  d_ff: int
  rank: int
  init_std: float
  out_init_std: float

  def _matrix(self, name: str, d_in: str, d_out: str, shape_in: int, shape_out: int, std: float) -> jax.Array:
    p, e, r = self.pool_size, self.num_experts, self.rank
    # U V has variance r * s^2 * s^2 per entry; s = (std^2 / r)^(1/4) gives it std, like S
    factor_std = (std * std / r) ** 0.25
    left = self.param(name + '_left', initializers.normal(factor_std, ('pool', 'expert', d_in, 'expert_rank')),
                      (p, e, shape_in, r))
    right = self.param(name + '_right', initializers.normal(factor_std, ('pool', 'expert', 'expert_rank', d_out)),
                       (p, e, r, shape_out))
    sparse = self.param(name + SPARSE_SUFFIX, initializers.normal(std, ('pool', 'expert', d_in, d_out)),
                        (p, e, shape_in, shape_out))
    return low_rank_plus_sparse(left, right, sparse)

  @nn.compact
  def __call__(self) -> ExpertWeights:
    p, e, d, f = self.pool_size, self.num_experts, self.d_model, self.d_ff
    return ExpertWeights(
        w_in=self._matrix('w_in', 'embed', 'expert_mlp', d, f, self.init_std),
        b_in=self.param('b_in', initializers.zeros(('pool', 'expert', 'expert_mlp')), (p, e, f)),
        w_out=self._matrix('w_out', 'expert_mlp', 'embed', f, d, self.out_init_std),
        b_out=self.param('b_out', initializers.zeros(('pool', 'expert', 'embed')), (p, e, d)))
