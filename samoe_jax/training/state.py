"""TrainState (step, params, opt_state), its abstract shapes and its shardings.

Shardings come from the model's parameter logical axes; every optimizer-state leaf that mirrors a parameter
(Adam's mu and nu) inherits that parameter's logical axes via `optax.tree_map_params`, so pool weights keep
their 'expert' split in the optimizer state too (the t5x Adafactor pitfall). Other leaves (counts) are
replicated, as are mirrored leaves whose rank differs from their parameter's (placeholders). With the
partitioner's FSDP on (mesh.fsdp, sharding/fsdp.py) the optimizer leaves mirror the FSDP parameter specs, so
Adam's moments are sharded exactly like their parameters.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from samoe_jax.sharding.partitioner import Partitioner


@flax.struct.dataclass
class TrainState:
  """step: int32 [] (updates applied so far); params: model parameters; opt_state: optax state."""
  step: jax.Array
  params: Any
  opt_state: Any


def init_state(model: Any, optimizer: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  """A fresh state at step 0 (call under jit with the state shardings as out_shardings)."""
  params = model.init_params(rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def abstract_state(model: Any, optimizer: optax.GradientTransformation) -> TrainState:
  """TrainState of jax.ShapeDtypeStructs (no allocation)."""
  return jax.eval_shape(lambda: init_state(model, optimizer, jax.random.key(0)))


def state_logical_axes(optimizer: optax.GradientTransformation, abstract: TrainState,
                       param_axes: Any) -> TrainState:
  """TrainState of logical PartitionSpecs: params' axes, mirrored optimizer leaves inherit, the rest P()."""
  # a mirrored leaf of another rank than its parameter (the pruner's scalar placeholders,
  # training/sparse_pruning.py) is replicated
  opt_axes = optax.tree_map_params(
      optimizer, lambda leaf, axes: axes if len(leaf.shape) == len(axes) else PartitionSpec(),
      abstract.opt_state, param_axes,
      transform_non_params=lambda _: PartitionSpec(),
      is_leaf=lambda x: isinstance(x, PartitionSpec))
  return TrainState(step=PartitionSpec(), params=param_axes, opt_state=opt_axes)


def state_shardings(partitioner: Partitioner, optimizer: optax.GradientTransformation, abstract: TrainState,
                    param_axes: Any) -> TrainState:
  """TrainState of NamedShardings on the partitioner's mesh (FSDP-rewritten when partitioner.fsdp)."""
  # The mirroring of state_logical_axes works on any PartitionSpecs: here on the parameters' mesh specs.
  mesh_specs = state_logical_axes(optimizer, abstract, partitioner.param_specs(param_axes, abstract.params))
  return jax.tree.map(lambda s: NamedSharding(partitioner.mesh, s), mesh_specs,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying target shardings (the restore target for orbax, the AOT lowering input)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
