"""Expert weights and the expert FFN computation (one layer's experts applied to their dispatched tokens).

Einsum letters: P pool entries, E experts, D model width, F expert hidden width, X tokens (slots) per expert.

Where the experts come from (the SaMoE global pool and its mixing) is layers/pool.py.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp



@dataclasses.dataclass(frozen=True)
class ExpertWeights:
  """Stacked expert FFN weights, with optional leading axes (e.g. the pool axis P).

  w_in: [..., E, D, F], b_in: [..., E, F], w_out: [..., E, F, D], b_out: [..., E, D].
  """
  w_in: jax.Array
  b_in: jax.Array
  w_out: jax.Array
  b_out: jax.Array

  def entry(self, j: int) -> 'ExpertWeights':
    """The experts of pool entry j (static index): drops the leading pool axis."""
    return jax.tree.map(lambda a: a[j], self)

  def astype(self, dtype) -> 'ExpertWeights':
    return jax.tree.map(lambda a: a.astype(dtype), self)


jax.tree_util.register_dataclass(ExpertWeights, data_fields=['w_in', 'b_in', 'w_out', 'b_out'],
                                 meta_fields=[])


@dataclasses.dataclass(frozen=True)
class LayerExperts:
  """What one MoE layer receives: its effective experts (leading E), or, for output-space mixing, the whole pool
  (leading [P, E]) and its mixing weights output_mix_weights ([P] or [E, P])."""
  experts: ExpertWeights
  output_mix_weights: jax.Array | None = None


jax.tree_util.register_dataclass(LayerExperts, data_fields=['experts', 'output_mix_weights'], meta_fields=[])

# Logical axes of one set of experts (leading E), whatever parameters a pool stores them as
EXPERT_AXES = {'w_in': ('expert', 'embed', 'expert_mlp'), 'b_in': ('expert', 'expert_mlp'),
               'w_out': ('expert', 'expert_mlp', 'embed'), 'b_out': ('expert', 'embed')}


def expert_weight_axes(leading: tuple[str | None, ...] = ()) -> ExpertWeights:
  """ExpertWeights of logical PartitionSpecs: EXPERT_AXES after the `leading` axes (e.g. ('pool',))."""
  return ExpertWeights(**{k: jax.sharding.PartitionSpec(*leading, *v) for k, v in EXPERT_AXES.items()})


def expert_ffn(x_EXD: jax.Array, w: ExpertWeights) -> jax.Array:
  """Every expert applied to its own tokens: y_EXD = W_out gelu(W_in x + b_in) + b_out."""
  h_EXF = jnp.einsum('exd,edf->exf', x_EXD, w.w_in) + w.b_in[:, None, :]
  h_EXF = jax.nn.gelu(h_EXF)
  h_EXF = nn.with_logical_constraint(h_EXF, ('expert', None, 'expert_mlp'))
  return jnp.einsum('exf,efd->exd', h_EXF, w.w_out) + w.b_out[:, None, :]


def expert_ffn_output_mixed(x_EXD: jax.Array, pool: ExpertWeights, weights: jax.Array) -> jax.Array:
  """Output-space mixing (ablation): sum_j w_j FFN_j(x); costs P times the expert FLOPs.

  weights: [P] or [E, P]; pool: leading [P, E].
  """
  y_PEXD = jax.vmap(expert_ffn, in_axes=(None, 0))(x_EXD, pool)
  w_EP = jnp.broadcast_to(weights, (x_EXD.shape[0], weights.shape[-1])).astype(y_PEXD.dtype)
  return jnp.einsum('pexd,ep->exd', y_PEXD, w_EP)
