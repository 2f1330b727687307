"""The logical-axis rules table: the one place logical names meet mesh axes.

Every parameter and key activation of the model carries logical axis names (see the layer modules); this table
maps them to the mesh axes ('data', 'expert', 'model'). Following t5x's MoE partitioning, the batch is sharded
over ('data', 'expert') together, so outside the MoE layers the expert axis is extra data parallelism; expert
weights are split over 'expert' and wide matrices over 'model'. A rule maps to None when the dimension is
replicated. No tensor may map two of its dimensions to the same mesh axis (`check_no_double_mapping`).
"""

from __future__ import annotations

from typing import Sequence

MESH_AXES: tuple[str, ...] = ('data', 'expert', 'model')

# (logical name, mesh axis or axes or None). Order matters only for readability: each name appears once.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ('batch', ('data', 'expert')),   # activations: batch rows
    ('group', ('data', 'expert')),   # MoE routing groups (whole sequences by default)
    ('length', None),
    ('embed', None),
    ('heads', 'model'),
    ('kv', None),
    ('mlp', 'model'),
    ('vocab', 'model'),
    ('expert', 'expert'),            # expert index of expert weights and expert-major activations
    ('expert_mlp', 'model'),         # hidden dimension of the expert FFN
    ('expert_rank', None),           # rank R of low-rank experts U V (layers/low_rank_experts.py)
    ('pool', None),                  # SaMoE pool entries: replicated, so mixing needs no communication
    ('mixing', None),                # the pool axis of a layer's mixing logits (never weight-decayed)
    ('moe_layer', None),             # per-MoE-layer mixing logits
    ('capacity', None),              # expert buffer slots
    ('router', None),                # router output columns (one per expert, small)
    ('frozen_router', None),         # a frozen router's columns (moe.router_trainable=False): never updated
)


def rules_as_dict() -> dict[str, str | tuple[str, ...] | None]:
  return dict(LOGICAL_AXIS_RULES)


def mesh_axes_of(logical_names: Sequence[str | None]) -> list[str | tuple[str, ...] | None]:
  """Maps a tuple of logical names (None = replicated) to mesh axes, raising on unknown names."""
  table = rules_as_dict()
  out = []
  for name in logical_names:
    if name is None:
      out.append(None)
      continue
    if name not in table:
      raise ValueError(f'logical axis name {name!r} has no rule; known names: {sorted(table)}')
    out.append(table[name])
  return out


def check_no_double_mapping(logical_names: Sequence[str | None]) -> None:
  """Raises ValueError if two dimensions of one tensor map onto the same mesh axis (maxtext #4179)."""
  seen: dict[str, str] = {}
  for name, axes in zip(logical_names, mesh_axes_of(logical_names)):
    if axes is None:
      continue
    for axis in (axes,) if isinstance(axes, str) else axes:
      if axis in seen:
        raise ValueError(
            f'logical axes {seen[axis]!r} and {name!r} of one tensor both map to mesh axis {axis!r} '
            f'(names: {tuple(logical_names)})')
      seen[axis] = name
