"""FSDP (ZeRO-3-style) sharding of the non-expert training state (`mesh.fsdp=True`).

The rules table (sharding/rules.py) replicates every non-expert parameter over the data-parallel devices
('data' x 'expert'), and with it its gradient and both Adam moments. With FSDP, `fsdp_spec` rewrites the *mesh*
PartitionSpec of each such parameter: its largest dimension that the rules leave unsharded and whose size the
product of the FSDP axes divides gets FSDP_AXES = ('data', 'expert'), the same axes the batch is split over
(ties: the first such dimension); when no unsharded dimension divides, the largest dimension already split over
'model' whose shards still divide is split further (a dense FFN bias [d_ff]: ('model', 'data', 'expert')). The optimizer state mirrors the rewritten specs (training/state.py) and the
train step keeps the gradients on them, so XLA all-gathers each weight where a layer uses it (forward and
backward) and reduce-scatters its gradient instead of all-reducing it.

Only parameter and optimizer-state shardings change. The rules table, and with it every activation constraint
(`nn.with_logical_constraint` inside the model: 'embed' of activations stays replicated), is untouched.
Left as they are:
  * expert weights (any spec that already uses the 'expert' mesh axis): they keep their expert sharding and
    are never gathered;
  * leaves of which no unsharded dimension is divisible by the FSDP product (e.g. SaMoE's [moe_layers, P]
    mixing logits, scalars): replicated, as without FSDP.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
from jax.sharding import PartitionSpec

FSDP_AXES: tuple[str, ...] = ('data', 'expert')
PyTree = Any


def _as_tuple(entry: str | tuple[str, ...] | None) -> tuple[str, ...]:
  return (entry,) if isinstance(entry, str) else tuple(entry or ())


def _used_axes(spec: PartitionSpec) -> set[str]:
  return {axis for entry in spec for axis in _as_tuple(entry)}


def fsdp_spec(spec: PartitionSpec, shape: Sequence[int], axis_sizes: Mapping[str, int]) -> PartitionSpec:
  """The FSDP version of one parameter's mesh PartitionSpec (module docstring); unchanged when not sharded.

  Args:
    spec: the parameter's mesh-axis PartitionSpec from the rules table (entries may be fewer than dims).
    shape: the parameter's shape.
    axis_sizes: mesh axis name -> size (mesh.shape, or planned sizes in mesh_plan).
  """
  used = _used_axes(spec)
  if 'expert' in used:   # an expert weight: keeps its expert sharding
    return spec
  axes = tuple(a for a in FSDP_AXES if a not in used)
  ways = math.prod(axis_sizes[a] for a in axes)
  if not axes or ways <= 1:
    return spec
  entries = [_as_tuple(e) for e in spec] + [()] * (len(shape) - len(spec))
  free = [i for i, (entry, size) in enumerate(zip(entries, shape)) if not entry and size % ways == 0]
  # No unsharded dimension divides: a dimension already split (over 'model') whose shards still divide.
  split = [i for i, (entry, size) in enumerate(zip(entries, shape))
           if entry and size % (ways * math.prod(axis_sizes[a] for a in entry)) == 0]
  if not free and not split:
    return spec
  dim = max(free or split, key=lambda i: (shape[i], -i))   # the largest; the first among equals
  entries[dim] = entries[dim] + axes
  return PartitionSpec(*(None if not e else e[0] if len(e) == 1 else e for e in entries))


def fsdp_specs(specs: PyTree, shapes: PyTree, axis_sizes: Mapping[str, int]) -> PyTree:
  """`fsdp_spec` over a tree of mesh PartitionSpecs and the matching tree of arrays / ShapeDtypeStructs."""
  return jax.tree.map(lambda s, a: fsdp_spec(s, a.shape, axis_sizes), specs, shapes,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def sharded_fraction(spec: PartitionSpec, axis_sizes: Mapping[str, int]) -> float:
  """1 / (the number of shards of a leaf with this mesh spec): the fraction of its bytes one device holds."""
  return 1.0 / math.prod(axis_sizes[a] for a in _used_axes(spec))
