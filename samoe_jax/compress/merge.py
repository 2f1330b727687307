"""Reducing a group of experts to one, and what the router does afterwards (MC-SMoE step 4; UNCURL).

  'merge'  frequency-weighted average after permutation alignment (MC-SMoE
           `_merge_mlp_experts_by_usage_frequency_weighting`): W_g = sum_{e in g} f_e W_e / sum_{e in g} f_e for
           w_in, b_in, w_out and b_out; a group that no token used (sum f = 0) is averaged uniformly.
  'prune'  keep the group's most used expert, drop the others (MC-SMoE's "drop" baseline; UNCURL's pruning).

Router (`router`):
  'map'    the router is kept unchanged, E logits; a token routed to any member of group g is computed by the
           reduced expert g (MC-SMoE's convention), written as moe.expert_map (config/expert_map.py).
  'sum'    the router gets one output per group whose kernel column (and bias) is the sum of its members'
           columns: logit_g = sum_{e in g} logit_e. Top-k, capacity and gates then run over the groups.
"""

from __future__ import annotations

import numpy as np

from samoe_jax.compress import align as align_lib
from samoe_jax.compress.experts import LayerExpertsNP
from samoe_jax.compress.grouping import core_experts

METHODS = ('merge', 'prune')
ROUTERS = ('map', 'sum')


def frequency_weights(freq_E: np.ndarray, members: np.ndarray) -> np.ndarray:
  """Merge weights of `members`: f_e / sum f, or uniform when the group was never used."""
  f = np.asarray(freq_E, np.float64)[members]
  return f / f.sum() if f.sum() > 0 else np.full(len(members), 1.0 / len(members))


def merge_members(experts: LayerExpertsNP, members: np.ndarray, weights: np.ndarray) -> LayerExpertsNP:
  """One expert: the weighted sum of `members`' arrays (leading axis 1)."""
  w = np.asarray(weights, np.float64)
  arrays = {k: np.tensordot(w, v[members].astype(np.float64), axes=1)[None].astype(np.float32)
            for k, v in experts.arrays().items()}
  return LayerExpertsNP(**arrays)


def reduce_layer(experts: LayerExpertsNP, labels_E: np.ndarray, freq_E: np.ndarray, method: str = 'merge',
                 align: bool = True) -> LayerExpertsNP:
  """The layer's K = max(labels) + 1 reduced experts, group g at index g. align: permute every expert to expert
  0 first ('merge' only; alignment never changes an expert's function)."""
  if method not in METHODS:
    raise ValueError(f'method={method!r}: use one of {METHODS}')
  labels_E = np.asarray(labels_E, np.int64)
  if method == 'prune':
    return experts.select(core_experts(labels_E, freq_E))
  source = align_lib.align_layer(experts, reference=0)[0] if align else experts
  parts = []
  for g in range(int(labels_E.max()) + 1):
    members = np.flatnonzero(labels_E == g)
    parts.append(merge_members(source, members, frequency_weights(freq_E, members)))
  return LayerExpertsNP.stack(parts)


def summed_router(kernel_DE: np.ndarray, bias_E: np.ndarray | None, labels_E: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray | None]:
  """The 'sum' router: kernel [D, K] (and bias [K]) with column g = the sum of group g's columns."""
  k = int(np.max(labels_E)) + 1
  one_hot_EK = np.eye(k, dtype=np.float64)[np.asarray(labels_E, np.int64)]
  kernel = (np.asarray(kernel_DE, np.float64) @ one_hot_EK).astype(np.float32)
  bias = None if bias_E is None else (np.asarray(bias_E, np.float64) @ one_hot_EK).astype(np.float32)
  return kernel, bias
