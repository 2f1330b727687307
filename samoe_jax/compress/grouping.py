"""Which experts to merge: router-logit similarity, dominant experts and per-layer group counts.

MC-SMoE (Li et al., ICLR 2024, official code `group_experts_into_clusters_by_routing_guided_globally`):
  similarity   S_ij = (cos(H[:, i], H[:, j]) + 1) / 2 over the router logits H [T, E] of the collected tokens.
  groups       the K most used experts are the dominant ("core") experts, one per group; every other expert, in
               descending usage, joins the core it is most similar to.
  group counts (global, adaptive) a budget of avg_groups x (merged layers) groups is spread over the layers: each
               layer's most used expert counts as frequency 1 (every layer keeps one group), all layers'
               frequencies are ranked together, and a layer gets as many groups as it has experts in the top
               `budget` of that ranking. Layers not merged keep all their experts.
UNCURL (Sarkar et al. 2024) reduces every layer to E / r groups; here with the same dominant-expert grouping
(docs/compression.md says what is inference).
"""

from __future__ import annotations

import numpy as np


def router_logit_similarity(logits_TE: np.ndarray) -> np.ndarray:
  """S [E, E] = (cos(H[:, i], H[:, j]) + 1) / 2 of the router-logit columns; 1 on the diagonal."""
  h = np.asarray(logits_TE, np.float64)
  norms = np.linalg.norm(h, axis=0)
  cos = (h.T @ h) / np.maximum(np.outer(norms, norms), 1e-12)
  sim = (np.clip(cos, -1.0, 1.0) + 1.0) / 2.0
  np.fill_diagonal(sim, 1.0)
  return sim


def usage_order(freq_E: np.ndarray) -> np.ndarray:
  """Expert indices by descending usage; ties by ascending index (a stable, reproducible order)."""
  freq_E = np.asarray(freq_E, np.float64)
  return np.lexsort((np.arange(len(freq_E)), -freq_E))


def dominant_groups(freq_E: np.ndarray, sim_EE: np.ndarray, num_groups: int) -> np.ndarray:
  """labels [E] in 0 .. num_groups - 1: group g's core is the g-th dominant expert in ascending expert index;
  every other expert joins its most similar core (ties: the more used core)."""
  e = len(freq_E)
  if not 1 <= num_groups <= e:
    raise ValueError(f'num_groups={num_groups} must be in [1, E={e}]')
  order = usage_order(freq_E)
  cores = np.sort(order[:num_groups])
  labels = np.full(e, -1, np.int64)
  labels[cores] = np.arange(num_groups)
  rank = {int(c): r for r, c in enumerate(order)}
  for expert in order[num_groups:]:
    best = max(range(num_groups), key=lambda g: (sim_EE[expert, cores[g]], -rank[int(cores[g])]))
    labels[expert] = best
  return labels


def core_experts(labels_E: np.ndarray, freq_E: np.ndarray) -> np.ndarray:
  """The most used expert of each group (ties: lowest index): [num_groups]."""
  out = []
  for g in range(int(labels_E.max()) + 1):
    members = np.flatnonzero(labels_E == g)
    out.append(members[usage_order(freq_E[members])[0]])
  return np.asarray(out, np.int64)


def global_group_counts(freqs: list[np.ndarray], avg_groups: int, merged: list[bool] | None = None) -> list[int]:
  """Each layer's group count under MC-SMoE's global budget (module doc); unmerged layers keep E_l."""
  merged = [True] * len(freqs) if merged is None else list(merged)
  if len(merged) != len(freqs):
    raise ValueError(f'merged has {len(merged)} entries for {len(freqs)} layers')
  smallest = min((len(f) for f, m in zip(freqs, merged) if m), default=0)
  if merged and any(merged) and not 1 <= avg_groups <= smallest:
    raise ValueError(f'groups={avg_groups} must be in [1, {smallest}] (the fewest experts of a merged layer)')
  budget = avg_groups * sum(merged)
  entries = []   # (frequency, layer, expert)
  for layer, (freq, m) in enumerate(zip(freqs, merged)):
    if not m:
      continue
    adjusted = np.asarray(freq, np.float64).copy()
    adjusted[usage_order(adjusted)[0]] = 2.0   # above every real frequency (<= 1): each layer keeps one group
    entries += [(-adjusted[e], layer, e) for e in range(len(adjusted))]
  entries.sort()
  counts = [0 if m else len(f) for f, m in zip(freqs, merged)]
  for _, layer, _ in entries[:budget]:
    counts[layer] += 1
  return counts
