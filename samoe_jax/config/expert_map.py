"""Router outputs mapped onto fewer stored experts (`moe.expert_map`): how merged and pruned MoE layers keep their
router (MC-SMoE, Li et al. 2024; UNCURL, Sarkar et al. 2024; docs/compression.md). Pure Python, no JAX.

`moe.expert_map` holds one map per MoE layer, separated by ';'; a map is a comma list with one stored-expert index
per router output: '0,0,1,2;0,1,1,1' gives MoE layer 0 a router of 4 logits whose first two route to stored
expert 0, and MoE layer 1 a router of 4 logits of which the last three route to its stored expert 1. A layer
routes (top-k, capacity, gates) over its router's logits exactly as before, and a token sent to router output e
is computed by stored expert map[e]: the experts of a group share one set of weights. '' (default) = identity
everywhere. Each map must use every stored expert 0 .. E'_l - 1, where E'_l is the layer's expert count
(moe.experts_per_layer, or moe.num_experts).
"""

from __future__ import annotations

from typing import Any

KEY = 'moe.expert_map'


def parse_expert_map(text: Any, stored: tuple[int, ...], top_k: int) -> tuple[tuple[int, ...], ...]:
  """Every MoE layer's map (router output -> stored expert), () when `text` is ''. stored: each MoE layer's
  stored expert count. Raises ValueError naming moe.expert_map, the bad entry and what is allowed."""
  if not isinstance(text, str):
    raise ValueError(f"{KEY}={text!r}: must be a string such as '0,0,1,2;0,1,1,1' ('' = no map)")
  if not text.strip():
    return ()
  parts = text.split(';')
  if len(parts) != len(stored):
    raise ValueError(f'{KEY}={text!r} gives {len(parts)} map(s) but the model has {len(stored)} MoE layer(s): give '
                     "one map per MoE layer, separated by ';'")
  maps = []
  for layer, (part, count) in enumerate(zip(parts, stored)):
    entries = [p.strip() for p in part.split(',')]
    if not all(p.isdigit() for p in entries):
      raise ValueError(f'{KEY}={text!r}: map {layer} ({part!r}) must be a comma list of stored-expert indices '
                       f'0 .. {count - 1}')
    mapping = tuple(int(p) for p in entries)
    if len(mapping) < top_k:
      raise ValueError(f'{KEY}={text!r}: map {layer} has {len(mapping)} router output(s), fewer than '
                       f'moe.top_k={top_k}')
    if set(mapping) != set(range(count)):
      raise ValueError(f'{KEY}={text!r}: map {layer} must use each of the layer\'s {count} stored experts '
                       f'0 .. {count - 1} (moe.experts_per_layer / moe.num_experts), got {sorted(set(mapping))}')
    maps.append(mapping)
  return tuple(maps)


def router_widths(maps: tuple[tuple[int, ...], ...], stored: tuple[int, ...]) -> tuple[int, ...]:
  """Each MoE layer's number of router outputs: its map's length, or its stored expert count without a map."""
  return tuple(len(m) for m in maps) if maps else tuple(stored)


def format_expert_map(maps: list[list[int]] | tuple[tuple[int, ...], ...]) -> str:
  """The moe.expert_map string of per-layer maps (inverse of parse_expert_map)."""
  return ';'.join(','.join(str(int(i)) for i in m) for m in maps)
