"""Expert pools of several expert counts (Pyramid-MoE, docs/methods/pr_moe.md; groups from config/pyramid.py).

Einsum letters: L MoE layers, P pool entries, E experts.

Every group g of MoE layers with E_g experts has its own pool (ExpertPool, leading axes [P_g, E_g]) and, with
learned mixing, its own mixing logits ([n_g, P_g] or [n_g, E_g, P_g]); the first group's modules are the standard
`expert_pool` / `mixing_logits`, so one group is exactly the model without pyramid. This module builds a group's
modules and turns the groups' pools into every MoE layer's experts, in MoE-layer order.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from samoe_jax.config.pyramid import ExpertGroup
from samoe_jax.layers.experts import ExpertPool, ExpertWeights, MixingLogits, mix_all_layers
from samoe_jax.layers.low_rank_experts import LowRankSparsePool


def group_modules(spec, group: ExpertGroup) -> tuple[ExpertPool | LowRankSparsePool, MixingLogits | None]:
  """A group's pool and (learned mixing) mixing logits, unnamed (the caller assigns them in setup). The pool stores
  dense experts, or low-rank plus sparse ones when low_rank_sparse.rank > 0 (layers/low_rank_experts.py)."""
  if spec.expert_rank:
    pool = LowRankSparsePool(group.pool_size, group.num_experts, spec.d_model, spec.expert_d_ff, spec.expert_rank,
                             spec.init_std, spec.out_init_std)
  else:
    pool = ExpertPool(group.pool_size, group.num_experts, spec.d_model, spec.expert_d_ff, spec.init_std,
                      spec.out_init_std)
  if spec.mixing != 'learned':
    return pool, None
  return pool, MixingLogits(len(group.layers), group.pool_size, group.num_experts, spec.granularity,
                            spec.temperature, spec.mixing_init, group.entries, spec.one_hot_scale)


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
      for layer, entry in zip(group.layers, group.entries):
        out[layer] = (pool.entry(entry), None)
      continue
    mixed = mix_all_layers(pool, weights) if spec.space != 'output' else None
    for i, layer in enumerate(group.layers):
      out[layer] = (pool, weights[i]) if mixed is None else (mixed.entry(i), None)
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
