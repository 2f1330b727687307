"""A t5x-style Partitioner: the mesh plus the logical-axis rules, and jit with explicit shardings.

Everything that turns logical names into device placement goes through here: parameter and optimizer-state
shardings (`logical_to_mesh`), the batch sharding (`data_sharding`, the batch over the mesh axes of the
logical name 'batch', i.e. ('data', 'expert')), host batches to global arrays (`shard_batch`) and jitting
(`partition`). Tracing and lowering run inside `activate()`, which sets the mesh and the rules table so that
`nn.with_logical_constraint` inside the model becomes a real sharding constraint. With `fsdp=True`
(config mesh.fsdp, sharding/fsdp.py) `param_specs` also shards the non-expert parameters over ('data', 'expert');
the rules table, and so every activation constraint, stays the same.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from samoe_jax.sharding import fsdp as fsdp_lib
from samoe_jax.sharding import rules as rules_lib

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]
PyTree = Any


def _is_spec(x: Any) -> bool:
  return isinstance(x, PartitionSpec)


class PartitionedFn:
  """A jitted function whose tracing, lowering and calls happen inside the partitioner's context."""

  def __init__(self, jitted: Callable, partitioner: 'Partitioner'):
    self._jitted = jitted
    self._partitioner = partitioner
    functools.update_wrapper(self, jitted)

  def __call__(self, *args, **kwargs):
    with self._partitioner.activate():
      return self._jitted(*args, **kwargs)

  def lower(self, *args, **kwargs) -> jax.stages.Lowered:
    """Lowers for AOT compilation: `fn.lower(*abstract_args).compile()`."""
    with self._partitioner.activate():
      return self._jitted.lower(*args, **kwargs)

  def cache_size(self) -> int:
    """How many executables jit has cached (1 once compiled, and it must stay 1)."""
    return self._jitted._cache_size()  # pylint: disable=protected-access


class Partitioner:
  """Holds the mesh and the logical-axis rules; maps logical specs to shardings and jits functions.

  fsdp: shard the non-expert parameters (and so their gradients and optimizer state) over ('data', 'expert')
  in `param_specs` (sharding/fsdp.py).
  """

  def __init__(self, mesh: jax.sharding.Mesh, rules: Rules = rules_lib.LOGICAL_AXIS_RULES, fsdp: bool = False):
    self.mesh = mesh
    self.rules = tuple(rules)
    self.fsdp = bool(fsdp)
    unknown = {a for _, axes in self.rules for a in ((axes,) if isinstance(axes, str) else axes or ())
               if a not in mesh.axis_names}
    if unknown:
      raise ValueError(f'logical-axis rules use mesh axes {sorted(unknown)} that mesh {mesh.axis_names} lacks')

  @contextlib.contextmanager
  def activate(self) -> Iterator[None]:
    """Sets the mesh and the rules table, so nn.with_logical_constraint works inside jit."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  # ------------------------------------------------------------------------------------------- shardings
  def logical_to_mesh_spec(self, spec_tree: PyTree) -> PyTree:
    """Tree of logical PartitionSpecs -> tree of mesh-axis PartitionSpecs (same structure)."""
    return jax.tree.map(lambda s: nn.logical_to_mesh_axes(tuple(s), self.rules), spec_tree, is_leaf=_is_spec)

  def logical_to_mesh(self, spec_tree: PyTree) -> PyTree:
    """Tree of logical PartitionSpecs -> tree of NamedShardings on this mesh."""
    return jax.tree.map(lambda s: NamedSharding(self.mesh, s), self.logical_to_mesh_spec(spec_tree),
                        is_leaf=_is_spec)

  def param_specs(self, logical_axes: PyTree, abstract_params: PyTree) -> PyTree:
    """Mesh PartitionSpecs of the parameters: the rules table's, rewritten by FSDP when `fsdp` is on."""
    specs = self.logical_to_mesh_spec(logical_axes)
    return fsdp_lib.fsdp_specs(specs, abstract_params, self.mesh.shape) if self.fsdp else specs

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  def data_sharding(self) -> NamedSharding:
    """Batch rows over the mesh axes of logical 'batch' (('data', 'expert')), other dimensions replicated."""
    return NamedSharding(self.mesh, PartitionSpec(self._batch_axes()))

  @property
  def num_data_shards(self) -> int:
    """How many ways the batch is split: the product of the mesh axes the batch is sharded over."""
    axes = self._batch_axes()
    axes = (axes,) if isinstance(axes, str) else axes or ()
    return int(np.prod([self.mesh.shape[a] for a in axes]))

  def _batch_axes(self) -> str | tuple[str, ...] | None:
    table = dict(self.rules)
    if 'batch' not in table:
      raise ValueError("the logical-axis rules have no rule for 'batch'")
    return table['batch']

  def shard_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows of the global batch (dict of [B_local, ...] numpy) -> global jax.Arrays [B, ...]."""
    sharding = self.data_sharding()
    out = {}
    for key, local in batch.items():
      local = np.asarray(local)
      global_shape = (local.shape[0] * jax.process_count(),) + local.shape[1:]
      out[key] = jax.make_array_from_process_local_data(sharding, local, global_shape)
    return out

  def batch_spec(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.ShapeDtypeStruct]:
    """Abstract global batch (with the data sharding) matching `shard_batch(batch)`, for AOT lowering."""
    sharding = self.data_sharding()
    return {k: jax.ShapeDtypeStruct((v.shape[0] * jax.process_count(),) + v.shape[1:], v.dtype,
                                    sharding=sharding) for k, v in batch.items()}

  # ------------------------------------------------------------------------------------------------- jit
  def partition(self, fn: Callable, in_shardings: Any, out_shardings: Any,
                donate_argnums: int | Sequence[int] = ()) -> PartitionedFn:
    """jax.jit(fn) with explicit in/out shardings and donation, traced inside `activate()`."""
    jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=donate_argnums)
    return PartitionedFn(jitted, self)

  def describe_rules(self) -> str:
    """The rules table, one 'logical -> mesh axes' line each, for the startup log."""
    width = max(len(name) for name, _ in self.rules)
    return '\n'.join(f'  {name:<{width}} -> {axes}' for name, axes in self.rules)
