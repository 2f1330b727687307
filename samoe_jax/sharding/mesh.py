"""The device mesh over ('data', 'expert', 'model').

`config.mesh` gives one size per axis; a size of -1 takes the devices left over by the others (at most one -1,
as in MaxText's `ici_*_parallelism`). The product of the sizes must equal the device count. Axes are `Auto`
(GSPMD): shardings come from the logical-axis rules and `with_sharding_constraint`, not from array types.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils

from samoe_jax.sharding.rules import MESH_AXES


def resolve_mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Mesh sizes in MESH_AXES order with the one -1 filled in; raises ValueError naming the bad sizes.

  Args:
    sizes: {'data': int, 'expert': int, 'model': int}; each >= 1 or -1 (fill).
    num_devices: the number of devices the mesh must cover.
  """
  missing = [a for a in MESH_AXES if a not in sizes]
  if missing:
    raise ValueError(f'mesh config lacks axes {missing}; it needs one size per axis of {MESH_AXES}')
  shape = {a: int(sizes[a]) for a in MESH_AXES}
  described = ', '.join(f'{a}={s}' for a, s in shape.items())
  bad = [a for a, s in shape.items() if s == 0 or s < -1]
  if bad:
    raise ValueError(f'mesh sizes must be >= 1 or -1 (fill); got {described} (bad: {bad})')
  fill = [a for a, s in shape.items() if s == -1]
  if len(fill) > 1:
    raise ValueError(f'at most one mesh axis may be -1 (fill); got {described}')
  fixed = math.prod(s for s in shape.values() if s != -1)
  if fill:
    if num_devices % fixed:
      raise ValueError(f'mesh sizes {described}: the fixed axes (product {fixed}) do not divide the '
                       f'{num_devices} available devices, so {fill[0]}=-1 cannot be filled')
    shape[fill[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ValueError(f'mesh sizes {described} multiply to {fixed}, but there are {num_devices} devices; '
                     f'make the product {num_devices} or set one axis to -1')
  return tuple(shape[a] for a in MESH_AXES)


def _device_grid(shape: tuple[int, ...], devices: Sequence[Any]) -> np.ndarray:
  """Devices arranged as `shape`, topology-aware on TPU (mesh_utils), plain reshape where that is unsupported."""
  try:
    return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  except (ValueError, NotImplementedError, AssertionError, AttributeError):
    # Device kinds mesh_utils has no topology for (e.g. fake devices in tests): order as given.
    return np.asarray(devices, dtype=object).reshape(shape)


def make_mesh(mesh_cfg: Mapping[str, int], devices: Sequence[Any] | None = None) -> jax.sharding.Mesh:
  """A Mesh over MESH_AXES = ('data', 'expert', 'model') covering `devices` (default: all jax.devices()).

  Args:
    mesh_cfg: config.mesh (ConfigDict or mapping) with sizes for 'data', 'expert', 'model'; -1 fills.
    devices: the devices to use, in order; all of them must be covered.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(dict(mesh_cfg.items()), len(devices))
  grid = _device_grid(shape, devices)
  return jax.sharding.Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def describe_mesh(mesh: jax.sharding.Mesh) -> str:
  """'data=1 expert=1 model=1 (1 cpu devices)' for logs."""
  sizes = ' '.join(f'{a}={n}' for a, n in mesh.shape.items())
  return f'{sizes} ({mesh.devices.size} {mesh.devices.flat[0].platform} devices)'
