"""Expert weights, the SaMoE global expert pool, and weight-space mixing.

Einsum letters: P pool entries, E experts, D model width, F expert hidden width, X tokens (slots) per expert.

SaMoE (docs/model.md): the pool holds P global MoE layers, each a full set of E experts, stored once as stacked
arrays with a leading pool axis. MoE layer l uses the effective experts
    W^(l) = sum_j softmax(alpha_l / tau)_j W_j            (layer-level mixing, alpha_l: [P])
    W^(l)_e = sum_j softmax(alpha_{l,e} / tau)_j W_{j,e}  (expert-level mixing, alpha_l: [E, P])
so a token costs exactly one MoE layer. A fixed one-hot alpha selects one pool entry (standard MoE when P equals
the number of MoE layers; fully tied experts when P = 1).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from samoe_jax.layers import initializers


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

# Logical axes of one set of experts (leading E), whatever parameters a pool stores them as
EXPERT_AXES = {'w_in': ('expert', 'embed', 'expert_mlp'), 'b_in': ('expert', 'expert_mlp'),
               'w_out': ('expert', 'expert_mlp', 'embed'), 'b_out': ('expert', 'embed')}


def expert_weight_axes(leading: tuple[str | None, ...] = ()) -> ExpertWeights:
  """ExpertWeights of logical PartitionSpecs: EXPERT_AXES after the `leading` axes (e.g. ('pool',))."""
  return ExpertWeights(**{k: jax.sharding.PartitionSpec(*leading, *v) for k, v in EXPERT_AXES.items()})


class ExpertPool(nn.Module):
  """The global expert pool: P x E expert FFNs stored once. Returns ExpertWeights with leading axes [P, E]."""
  pool_size: int
  num_experts: int
  d_model: int
  d_ff: int
  init_std: float
  out_init_std: float

  @nn.compact
  def __call__(self) -> ExpertWeights:
    p, e, d, f = self.pool_size, self.num_experts, self.d_model, self.d_ff
    return ExpertWeights(
        w_in=self.param('w_in', initializers.normal(self.init_std, ('pool', 'expert', 'embed', 'expert_mlp')),
                        (p, e, d, f)),
        b_in=self.param('b_in', initializers.zeros(('pool', 'expert', 'expert_mlp')), (p, e, f)),
        w_out=self.param('w_out', initializers.normal(self.out_init_std,
                                                      ('pool', 'expert', 'expert_mlp', 'embed')), (p, e, f, d)),
        b_out=self.param('b_out', initializers.zeros(('pool', 'expert', 'embed')), (p, e, d)))


class MixingLogits(nn.Module):
  """Every MoE layer's own mixing logits, stored stacked: alpha [L_moe, P] (layer-level) or [L_moe, E, P]
  (expert-level). Row l belongs to MoE layer l. Returns softmax(alpha / tau) over the pool axis."""
  num_moe_layers: int
  pool_size: int
  num_experts: int
  granularity: str          # 'layer' or 'expert'
  temperature: float
  init_mode: str            # 'uniform' (alpha = 0) or 'one_hot'
  init_entries: tuple[int, ...]   # per MoE layer: the pool entry a one-hot init favours
  one_hot_scale: float

  @nn.compact
  def __call__(self) -> jax.Array:
    l, p = self.num_moe_layers, self.pool_size
    if self.granularity == 'layer':
      shape, names = (l, p), ('moe_layer', 'mixing')
    else:
      shape, names = (l, self.num_experts, p), ('moe_layer', 'expert', 'mixing')

    def init_fn(key, shape, dtype=jnp.float32):
      del key
      if self.init_mode == 'uniform':
        return jnp.zeros(shape, dtype)
      one_hot_LP = self.one_hot_scale * jax.nn.one_hot(jnp.asarray(self.init_entries), p, dtype=dtype)
      return one_hot_LP if len(shape) == 2 else jnp.broadcast_to(one_hot_LP[:, None, :], shape)

    alpha = self.param('alpha', nn.with_logical_partitioning(init_fn, names), shape)
    return mixing_weights(alpha, self.temperature)


def mixing_weights(alpha: jax.Array, temperature: float) -> jax.Array:
  """softmax(alpha / tau) over the last (pool) axis: [..., P] -> [..., P]."""
  return jax.nn.softmax(alpha.astype(jnp.float32) / temperature, axis=-1)


def mix_weight_space(pool: ExpertWeights, weights: jax.Array) -> ExpertWeights:
  """One layer's effective experts sum_j w_j W_j. pool: leading [P, E]; weights: [P] or [E, P] -> leading [E]."""
  subscripts = 'p,pe...->e...' if weights.ndim == 1 else 'ep,pe...->e...'
  return jax.tree.map(lambda a: jnp.einsum(subscripts, weights.astype(a.dtype), a), pool)


def mix_all_layers(pool: ExpertWeights, weights: jax.Array) -> ExpertWeights:
  """Every MoE layer's effective experts at once. pool: leading [P, E]; weights: [L, P] or [L, E, P] -> [L, E].

  One contraction per array: the backward pass reads the layers' gradients once and writes the pool's once.
  """
  subscripts = 'lp,pe...->le...' if weights.ndim == 2 else 'lep,pe...->le...'
  return jax.tree.map(lambda a: jnp.einsum(subscripts, weights.astype(a.dtype), a), pool)


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
