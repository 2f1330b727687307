"""The two compression recipes as functions of a loaded run and its routing statistics (docs/compression.md).

UNCURL (Sarkar et al. 2024, task-specific expert reduction): every MoE layer with E_l experts is reduced to
E_l / r groups (pruning factor r), grouped around its E_l / r most used experts by router-logit similarity, each
group reduced by 'merge' (frequency-weighted, aligned) or 'prune' (its most used expert).

MC-SMoE (Li et al., ICLR 2024): every expert aligned to expert 0, the global adaptive group counts with an average
of `groups` per layer, dominant-expert grouping, frequency-weighted merging, the router unchanged ('map').
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from samoe_jax.compress import grouping, merge
from samoe_jax.compress.runs import CompressedLayers, SourceRun
from samoe_jax.compress.stats import LayerStats
from samoe_jax.config import pyramid


def check_factor(source: SourceRun, factor: int, router: str = 'map') -> None:
  """A pruning factor must be an integer >= 1 that divides every MoE layer's expert count; with router 'sum' it
  must leave at least top_k experts per layer."""
  counts = [layer.num_experts for layer in source.layers]
  if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
    raise ValueError(f'pruning factor {factor!r} must be an integer >= 1')
  bad = sorted({e for e in counts if e % factor})
  if bad:
    raise ValueError(f'pruning factor {factor} does not divide the expert count(s) {bad} of {source.workdir} '
                     f'(experts per MoE layer: {counts}); use a divisor')
  top_k = source.model.spec.moe.top_k
  if router == 'sum' and min(counts) // factor < top_k:
    raise ValueError(f"pruning factor {factor} with router 'sum' leaves {min(counts) // factor} expert(s) in a "
                     f"layer, fewer than moe.top_k={top_k}: use router 'map' (which keeps the E-output router) or "
                     'a smaller factor')


def uncurl_layers(source: SourceRun, stats: Sequence[LayerStats], factor: int, reduce: str = 'merge',
                  router: str = 'map') -> CompressedLayers:
  """Every MoE layer reduced to E_l / factor experts (module doc)."""
  check_router(router)
  check_factor(source, factor, router)
  experts, labels = [], []
  for layer, s in zip(source.layers, stats):
    sim = grouping.router_logit_similarity(s.logits_TE)
    lab = grouping.dominant_groups(s.frequency_E, sim, layer.num_experts // factor)
    experts.append(merge.reduce_layer(layer, lab, s.frequency_E, reduce))
    labels.append(lab)
  return CompressedLayers(experts, labels, router)


def mcsmoe_layers(source: SourceRun, stats: Sequence[LayerStats], groups: int, router: str = 'map',
                  merged: Sequence[bool] | None = None) -> CompressedLayers:
  """MC-SMoE's merging: global adaptive group counts (average `groups` per merged layer), dominant-expert groups,
  aligned frequency-weighted merging (module doc). merged: which MoE layers to merge (default all)."""
  check_router(router)
  freqs = [s.frequency_E for s in stats]
  counts = grouping.global_group_counts(freqs, groups, merged)
  experts, labels = [], []
  for layer, s, k in zip(source.layers, stats, counts):
    if k == layer.num_experts:   # an unmerged layer keeps its experts
      lab = np.arange(k)
      experts.append(layer.copy())
    else:
      lab = grouping.dominant_groups(s.frequency_E, grouping.router_logit_similarity(s.logits_TE), k)
      experts.append(merge.reduce_layer(layer, lab, s.frequency_E, 'merge', align=True))
    labels.append(lab)
  return CompressedLayers(experts, labels, router)


def scratch_config(source_config: Any, factor: int) -> Any:
  """UNCURL's from-scratch baseline for pruning factor r: the source run's config (same data, schedule, seed) with
  E_l / r experts in every MoE layer, trained from random initialisation. top_k (and eval_top_k) are capped at
  E_l / r when fewer experts remain."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(source_config.to_dict())
  counts = [n // factor for n in pyramid.stored_counts(source_config)]
  moe = config.moe
  moe.num_experts = source_config.moe.num_experts // factor
  moe.experts_per_layer = pyramid.format_counts(tuple(counts)) if source_config.moe.experts_per_layer else ''
  moe.top_k = min(moe.top_k, min(counts))
  if moe.eval_top_k:
    moe.eval_top_k = min(moe.eval_top_k, min(counts))
  config.init.from_workdir = config.distill.teacher_workdir = ''
  return config


def check_router(router: str) -> None:
  if router not in merge.ROUTERS:
    raise ValueError(f'router={router!r}: use one of {merge.ROUTERS} (docs/compression.md)')
