"""Pyramid-MoE (docs/methods/pr_moe.md, DeepSpeed-MoE, Rajbhandari et al. 2022): per-MoE-layer expert counts and the
expert groups they form. Pure Python, no JAX: the model, validate_config, accounting and describe share it.

`moe.experts_per_layer` is a comma list with one expert count per MoE layer (after model.layer_plan), with the
shorthand 'NxM' for M layers of N experts: '32x10,64x2' = ten MoE layers of 32 experts, then two of 64. ''
(default) = moe.num_experts in every MoE layer.

MoE layers with the same expert count form a group with its own expert pool (stacked [P_g, E_g, ...]) and, with
learned mixing, its own mixing logits. Groups are ordered by their first MoE layer; the first group's parameters
keep the standard names ('expert_pool', 'mixing_logits'), so a model with one group has exactly the parameter
tree of a model without experts_per_layer. Further groups are siblings named by their expert count
('expert_pool_e64', 'mixing_logits_e64').

Pool size per group: with one group P = pool.size, as without pyramid. With several groups P_g =
min(pool.size, n_g), n_g the group's number of MoE layers (a group cannot use more fixed entries than it has
layers), and pool.assignment maps the group's layers (in order) onto its P_g entries. So fixed mixing with
pool.size = the number of MoE layers is the standard (pyramid) MoE: every layer owns its experts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from samoe_jax.config.layer_plan import moe_layer_indices, pool_assignment

FIRST_GROUP_POOL = 'expert_pool'
FIRST_GROUP_MIXING = 'mixing_logits'


@dataclasses.dataclass(frozen=True)
class ExpertGroup:
  """MoE layers sharing one expert count: their positions in MoE-layer order, E, the group's pool size P and each
  layer's pool entry within the group (fixed mixing) or the entry a one-hot init favours (learned)."""
  index: int                      # 0 for the group of the first MoE layer
  num_experts: int
  layers: tuple[int, ...]         # MoE-layer positions (0 .. L_moe - 1), ascending
  pool_size: int
  entries: tuple[int, ...]        # per layer of the group

  @property
  def suffix(self) -> str:
    """'' for the first group (the standard names), else '_e<E>'."""
    return '' if self.index == 0 else f'_e{self.num_experts}'

  @property
  def pool_name(self) -> str:
    return FIRST_GROUP_POOL + self.suffix

  @property
  def mixing_name(self) -> str:
    return FIRST_GROUP_MIXING + self.suffix


def parse_experts_per_layer(text: Any, num_moe: int, default: int, top_k: int = 1) -> tuple[int, ...]:
  """Expert count of every MoE layer. Raises ValueError naming moe.experts_per_layer, the bad value and the
  allowed form (comma list of counts or NxM runs; as many layers as MoE layers; each count >= top_k)."""
  key = 'moe.experts_per_layer'
  if not isinstance(text, str):
    raise ValueError(f"{key}={text!r}: must be a string such as '32x10,64x2' ('' = moe.num_experts everywhere)")
  if not text.strip():
    return (default,) * num_moe
  counts: list[int] = []
  for part in text.split(','):
    part = part.strip()
    count, _, repeat = part.partition('x')
    if not (count.isdigit() and (not _ or repeat.isdigit())):
      raise ValueError(f"{key}={text!r}: entry {part!r} is not a count N or a run NxM (M layers of N experts); "
                       "use e.g. '32x10,64x2' or '8,8,16'")
    n, m = int(count), int(repeat) if _ else 1
    if n < 1 or m < 1:
      raise ValueError(f'{key}={text!r}: entry {part!r} needs a count >= 1 and a repeat >= 1')
    counts += [n] * m
  if len(counts) != num_moe:
    raise ValueError(f'{key}={text!r} gives {len(counts)} MoE layer(s) but model.layer_plan has {num_moe}: give '
                     f'exactly one expert count per MoE layer ({num_moe} in all)')
  small = sorted({n for n in counts if n < top_k})
  if small:
    raise ValueError(f'{key}={text!r}: expert count(s) {small} < moe.top_k={top_k}; every MoE layer needs at '
                     'least top_k experts')
  return tuple(counts)


def expert_groups(counts: tuple[int, ...], pool_size: int, assignment: str) -> list[ExpertGroup]:
  """The groups of MoE layers with equal expert counts, ordered by first layer (see the module docstring)."""
  order: list[int] = []
  for n in counts:
    if n not in order:
      order.append(n)
  groups = []
  for g, n in enumerate(order):
    layers = tuple(i for i, c in enumerate(counts) if c == n)
    p = pool_size if len(order) == 1 else min(pool_size, len(layers))
    groups.append(ExpertGroup(g, n, layers, p, tuple(pool_assignment(len(layers), p, assignment))))
  return groups


def min_experts(moe: Any) -> int:
  """The fewest experts a MoE layer may store: top_k, or 1 when moe.expert_map sends several router outputs to
  one stored expert (config/expert_map.py)."""
  return 1 if getattr(moe, 'expert_map', '') else moe.top_k


def stored_counts(config: Any) -> tuple[int, ...]:
  """Every MoE layer's stored expert count (moe.experts_per_layer, read with .get so older configs load)."""
  num_moe = len(moe_layer_indices(config.model))
  return parse_experts_per_layer(config.moe.experts_per_layer, num_moe, config.moe.num_experts,
                                 min_experts(config.moe))


def groups_of_config(config: Any) -> list[ExpertGroup]:
  """expert_groups of a ConfigDict (moe.experts_per_layer read with .get, so older configs load)."""
  num_moe = len(moe_layer_indices(config.model))
  counts = stored_counts(config)
  return expert_groups(counts, config.pool.size, config.pool.assignment) if num_moe else []


def layer_entries(groups: list[ExpertGroup], num_moe: int) -> tuple[int, ...]:
  """Each MoE layer's pool entry within its group, in MoE-layer order."""
  entries = [0] * num_moe
  for group in groups:
    for layer, entry in zip(group.layers, group.entries):
      entries[layer] = entry
  return tuple(entries)


def format_counts(counts: tuple[int, ...]) -> str:
  """(32,)*10 + (64,)*2 -> '32x10,64x2' (runs of equal counts)."""
  runs: list[list[int]] = []
  for n in counts:
    if runs and runs[-1][0] == n:
      runs[-1][1] += 1
    else:
      runs.append([n, 1])
  return ','.join(f'{n}x{m}' if m > 1 else str(n) for n, m in runs)


def set_pr_moe(c: Any, experts_per_layer: str, residual: str = 'learned_softmax', top_k: int = 1) -> None:
  """Turns a standard-MoE config (fixed mixing, one pool entry per MoE layer) into PR-MoE: the pyramid schedule,
  Residual-MoE layers and top-1 routing; moe.num_experts becomes the first MoE layer's count (so top_k and
  mesh.expert checks read a count the model really has)."""
  num_moe = len(moe_layer_indices(c.model))
  counts = parse_experts_per_layer(experts_per_layer, num_moe, c.moe.num_experts, top_k)
  c.moe.experts_per_layer, c.moe.residual, c.moe.top_k = experts_per_layer, residual, top_k
  c.moe.num_experts = counts[0]
  c.pool.size, c.pool.mixing, c.pool.assignment = num_moe, 'fixed', 'modulo'
