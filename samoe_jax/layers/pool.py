"""SaMoE's core: the global expert pool, every MoE layer's mixing logits, and the pool groups.

Einsum letters: L MoE layers, P pool entries, E experts, D model width, F expert hidden width.

SaMoE: the pool holds P global MoE layers, each a full set of E experts, stored once as stacked arrays with a
leading pool axis (ExpertPool; or U V + S per expert, layers/low_rank_experts.py). MoE layer l uses the
effective experts
    W^(l) = sum_j softmax(alpha_l / tau)_j W_j            (layer-level mixing, alpha_l: [P])
    W^(l)_e = sum_j softmax(alpha_{l,e} / tau)_j W_{j,e}  (expert-level mixing, alpha_l: [E, P])
mixed once per forward pass for all layers in one contraction (mix_all_layers), so a token costs exactly one MoE
layer. A fixed one-hot alpha selects one pool entry: a standard MoE when P equals the number of MoE layers, fully
tied experts (WideNet) when P = 1. Output-space mixing (pool.space='output', an ablation) instead hands the layer
the whole pool and its weights (layers/experts.LayerExperts).

Pool groups (PR-MoE's Pyramid-MoE, docs/methods/pr_moe.md; groups from config/pyramid.py): every group g of MoE
layers with E_g experts has its own pool (leading [P_g, E_g]) and, with learned mixing, its own mixing logits; the
first group's modules are the standard `expert_pool` / `mixing_logits`, so one group is exactly the model
without a pyramid. The decoder (models/transformer.py) creates the modules with `attach_pools` and gets every
layer's experts from `group_layer_experts`. docs/model.md describes the method; docs/architecture.md the layout.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from samoe_jax.config.pyramid import ExpertGroup
from samoe_jax.layers import initializers
from samoe_jax.layers.experts import ExpertWeights
from samoe_jax.layers.low_rank_experts import LowRankSparsePool
from samoe_jax.layers.mixing import MixingLogits, mixing_weights

__all__ = ['ExpertPool', 'MixingLogits', 'mixing_weights', 'mix_weight_space', 'mix_all_layers', 'group_modules',
           'group_layer_experts', 'fixed_mixing_weights', 'attach_pools', 'decoder_pools']


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


def mix_weight_space(pool: ExpertWeights, weights: jax.Array) -> ExpertWeights:
  """One layer's effective experts sum_j w_j W_j. pool: leading [P, E]; weights: [P] or [E, P] -> leading [E]."""
  subscripts = 'p,pe...->e...' if weights.ndim == 1 else 'ep,pe...->e...'
  return jax.tree.map(lambda a: jnp.einsum(subscripts, weights.astype(a.dtype), a), pool)


def unstack(a: jax.Array, n: int) -> list[jax.Array]:
  """[n, ...] -> n arrays [...] with jnp.split: the backward pass concatenates the n cotangents once, where
  indexing a[i] would pad each cotangent to the full [n, ...] array and add the n copies."""
  return [part[0] for part in jnp.split(a, n, axis=0)]


def pool_entries(pool: ExpertWeights) -> list[ExpertWeights]:
  """The P pool entries of `pool` (leading [P, E]) as P ExpertWeights (leading E), split once (see unstack)."""
  p = pool.w_in.shape[0]
  parts = {k: unstack(getattr(pool, k), p) for k in ('w_in', 'b_in', 'w_out', 'b_out')}
  return [ExpertWeights(**{k: v[j] for k, v in parts.items()}) for j in range(p)]


@jax.custom_vjp
def _contract_pool(weights: jax.Array, a_PECK: jax.Array) -> jax.Array:
  """weights [L, P] or [L, E, P] x a [P, E, C, K] -> [L, E, C, K]: every layer's mix of one pool array, its
  trailing axes flattened to C x K (K: the array's last axis).

  The forward pass and the pool's gradient are plain matrix products ([L, P] x [P, E*C*K] and its transpose; or E
  batched). The mixing weights' gradient, the sum over (e,) c, k of g[l, e, c, k] a[p, e, c, k], is written as a
  multiply and sums over k, then c (then e), which XLA fuses into one memory-bound reduction. Autodiff would
  derive it as the matrix product [L, N] x [N, P] (a tiny output, a huge contraction), which XLA:CPU ran at a
  fraction of the memory bandwidth: 0.3 s of a 1.8 s train step at E = 32, P = 4 on 2 cores (docs/model.md,
  "SaMoE's cost"). Tested against autodiff of the plain loop (tests/test_moe_layer.py).
  """
  p, e = a_PECK.shape[:2]
  w = weights.astype(a_PECK.dtype)
  if weights.ndim == 2:
    mixed = w @ a_PECK.reshape(p, -1)
  else:
    mixed = jnp.einsum('lep,pem->lem', w, a_PECK.reshape(p, e, -1))
  return mixed.reshape((weights.shape[0],) + a_PECK.shape[1:])


def _contract_pool_fwd(weights: jax.Array, a_PECK: jax.Array):
  return _contract_pool(weights, a_PECK), (weights, a_PECK)


def _contract_pool_bwd(residuals, g_LECK: jax.Array):
  weights, a_PECK = residuals
  p, e = a_PECK.shape[:2]
  w = weights.astype(a_PECK.dtype)
  g = g_LECK.astype(a_PECK.dtype)
  if weights.ndim == 2:
    g_a = (w.T @ g.reshape(g.shape[0], -1)).reshape(a_PECK.shape)
  else:
    g_a = jnp.einsum('lep,lem->pem', w, g.reshape(g.shape[0], e, -1)).reshape(a_PECK.shape)
  products_LPECK = g_LECK.astype(jnp.float32)[:, None] * a_PECK.astype(jnp.float32)[None]
  g_w_LPE = jnp.sum(jnp.sum(products_LPECK, axis=-1), axis=-1)
  g_w = jnp.sum(g_w_LPE, axis=-1) if weights.ndim == 2 else jnp.swapaxes(g_w_LPE, 1, 2)
  return g_w.astype(weights.dtype), g_a


_contract_pool.defvjp(_contract_pool_fwd, _contract_pool_bwd)


def _mix_array(a_PE: jax.Array, weights: jax.Array) -> jax.Array:
  """One stacked array a [P, E, ...] mixed for every layer: [L, E, ...] (_contract_pool on its trailing axes
  flattened to [C, K]), with no transposes of the pool or of its gradient."""
  a_PECK = a_PE.reshape(a_PE.shape[:2] + (-1, a_PE.shape[-1]))
  return _contract_pool(weights, a_PECK).reshape((weights.shape[0],) + a_PE.shape[1:])


def mix_all_layers(pool: ExpertWeights, weights: jax.Array) -> list[ExpertWeights]:
  """Every MoE layer's effective experts at once, in layer order. pool: leading [P, E]; weights: [L, P] or
  [L, E, P] -> L ExpertWeights with leading [E].

  One contraction per array (the backward pass reads the layers' gradients once and writes the pool's once), and
  the layers are split off with `unstack`, so their gradients are concatenated rather than padded and summed.
  """
  n = weights.shape[0]
  parts = {k: unstack(_mix_array(getattr(pool, k), weights), n) for k in ('w_in', 'b_in', 'w_out', 'b_out')}
  return [ExpertWeights(**{k: v[i] for k, v in parts.items()}) for i in range(n)]


def group_modules(spec, group: ExpertGroup) -> tuple[ExpertPool | LowRankSparsePool, MixingLogits | None]:
  """A group's pool and its mixing scheme's logits (None: fixed mixing; layers/mixing.py), unnamed (the caller assigns them in setup). The pool stores
  dense experts, or low-rank plus sparse ones when low_rank_sparse.rank > 0 (layers/low_rank_experts.py)."""
  if spec.expert_rank:
    pool = LowRankSparsePool(group.pool_size, group.num_experts, spec.model.d_model, spec.expert_d_ff, spec.expert_rank,
                             spec.model.init_std, spec.out_init_std)
  else:
    pool = ExpertPool(group.pool_size, group.num_experts, spec.model.d_model, spec.expert_d_ff, spec.model.init_std,
                      spec.out_init_std)
  return pool, spec.mixing.logits_module(group)


def pool_weights(spec, group: ExpertGroup, pool_params: dict) -> ExpertWeights:
  """A group's pool (leading [P_g, E_g]) from its stored parameters, through the group's own pool module."""
  return group_modules(spec, group)[0].apply({'params': pool_params})


def pad_stack(weights: Sequence[jax.Array]) -> jax.Array:
  """Per-layer mixing weights of different groups ([P_g] or [E_g, P_g]) stacked as [L, P_max] / [L, E_max, P_max],
  zero-padded (for metrics and plots; a padded entry or expert does not exist)."""
  shape = tuple(max(w.shape[i] for w in weights) for i in range(weights[0].ndim))
  return jnp.stack([jnp.pad(w, [(0, n - m) for n, m in zip(shape, w.shape)]) for w in weights])


def group_layer_experts(spec, groups: Sequence[ExpertGroup], pools: Sequence[ExpertWeights],
                        logits: Sequence[jax.Array | None]) -> tuple[list[tuple[ExpertWeights, jax.Array | None]],
                                                                     jax.Array | None]:
  """Every MoE layer's (experts, output-space mixing weights or None), in MoE-layer order, and the mixing weights
  ([L, P] / [L, E, P]; several groups: pad_stack) or None under fixed mixing.

  pools[g]: group g's pool (leading [P_g, E_g]); logits[g]: its softmax(alpha / tau) or None (fixed mixing).
  Fixed mixing selects pool entry `group.entries[i]`; weight-space mixing contracts each group once.
  """
  num_moe = sum(len(g.layers) for g in groups)
  out: list = [None] * num_moe
  per_layer: list = [None] * num_moe
  for group, pool, weights in zip(groups, pools, logits):
    if weights is None:
      entries = pool_entries(pool)
      for layer, entry in zip(group.layers, group.entries):
        out[layer] = (entries[entry], None)
      continue
    mixed = None if spec.mixing.mixes_outputs else mix_all_layers(pool, weights)
    for i, layer in enumerate(group.layers):
      out[layer] = (pool, weights[i]) if mixed is None else (mixed[i], None)
      per_layer[layer] = weights[i]
  if logits[0] is None:
    return out, None
  return out, (logits[0] if len(groups) == 1 else pad_stack(per_layer))


def fixed_mixing_weights(groups: Sequence[ExpertGroup], granularity: str) -> np.ndarray:
  """One-hot weights of fixed mixing, [L, P] (or [L, E, P]); several groups: zero-padded to P_max (, E_max)."""
  num_moe = sum(len(g.layers) for g in groups)
  p_max, e_max = max(g.pool_size for g in groups), max(g.num_experts for g in groups)
  one_hot = np.zeros((num_moe, p_max), np.float32)
  experts = np.zeros(num_moe, np.int64)
  for group in groups:
    for layer, entry in zip(group.layers, group.entries):
      one_hot[layer, entry] = 1.0
      experts[layer] = group.num_experts
  if granularity == 'layer':
    return one_hot
  out = np.zeros((num_moe, e_max, p_max), np.float32)
  for layer in range(num_moe):
    out[layer, :experts[layer]] = one_hot[layer]
  return out


def unpad(weights: np.ndarray, group: ExpertGroup, i: int) -> np.ndarray:
  """Layer i of `group`'s mixing weights cut from a padded [L, (E_max,) P_max] array: [P_g] or [E_g, P_g]."""
  row = weights[group.layers[i]]
  return row[:group.pool_size] if row.ndim == 1 else row[:group.num_experts, :group.pool_size]


def attach_pools(decoder: nn.Module, spec) -> None:
  """Creates every group's pool and mixing logits as submodules of `decoder` (inside its setup), named
  group.pool_name / group.mixing_name ('expert_pool', 'mixing_logits' for the first group), so the parameter
  paths are the checkpoints' `expert_pool/*`, `mixing_logits/alpha`, `expert_pool_g1/*`, ..."""
  for group in spec.groups:
    pool, logits = group_modules(spec, group)
    setattr(decoder, group.pool_name, pool)
    setattr(decoder, group.mixing_name, logits)


def decoder_pools(decoder: nn.Module, spec) -> tuple[list[ExpertWeights], list[jax.Array | None]]:
  """Every group's pool (leading [P_g, E_g]) and softmax(alpha / tau) (None: fixed mixing), from the modules
  attach_pools created."""
  groups = spec.groups
  logits = [getattr(decoder, g.mixing_name) for g in groups]
  return [getattr(decoder, g.pool_name)() for g in groups], [m() if m is not None else None for m in logits]
