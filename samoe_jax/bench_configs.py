"""The benchmark's configurations and its figures' bookkeeping (python -m samoe_jax.bench): presets, chip peaks,
MFU, the result rows. Flag-free, so that tests and other tools can import it beside other absl programs."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from samoe_jax.config import config_file
from samoe_jax.config.presets import GPU_BENCH_KINDS, POOL_SWEEP, bench_all_blocks, bench_gpu

# cpu: --configs (the reference workload); gpu: presets.bench_gpu dense / moe / samoe; pool: MoE on all 4 blocks
# of the reference workload, standard MoE vs SaMoE P = 1, 2, 4, E = 8 and 32, and the dropless dispatch
PRESETS = ('cpu', 'gpu', 'pool')
# Dense bfloat16 peak FLOP/s per chip (vendor datasheets, without sparsity), matched against device_kind.
PEAK_BF16_FLOPS = (('H200', 989e12), ('H100', 989e12), ('A100', 312e12), ('TPU v5 lite', 197e12),
                   ('TPU v5e', 197e12), ('TPU v5p', 459e12), ('TPU v5', 459e12), ('TPU v4', 275e12))


def peak_flops(device_kind: str) -> float | None:
  """The chip's dense bfloat16 peak FLOP/s from PEAK_BF16_FLOPS (first name contained in device_kind), or None."""
  for name, peak in PEAK_BF16_FLOPS:
    if name.lower() in device_kind.lower():
      return peak
  return None


def preset_configs(preset: str, config_paths: Sequence[str]) -> list[tuple[str, object]]:
  """(name, ConfigDict) pairs: the --configs files ('cpu') or the GPU models ('gpu')."""
  if preset == 'gpu':
    return [(f'gpu:{kind}', bench_gpu(kind)) for kind in GPU_BENCH_KINDS]
  if preset == 'pool':
    return [(pool_sweep_name(*row), bench_all_blocks(*row)) for row in POOL_SWEEP]
  if preset != 'cpu':
    raise ValueError(f'--preset={preset!r} is not one of {PRESETS}')
  return [(path, config_file.load_spec(path)) for path in config_paths]   # a bad file: one ConfigFileError


def select_configs(named: list[tuple[str, object]], only: Sequence[str]) -> list[tuple[str, object]]:
  """The (name, config) pairs whose names are in `only` (bench --only), in the preset's order; all when empty.
  An unknown name is refused with the names there are."""
  if not only:
    return named
  names = [name for name, _ in named]
  unknown = [name for name in only if name not in names]
  if unknown:
    raise ValueError(f'--only={",".join(only)}: no config named {", ".join(unknown)} in this preset; it has '
                     f'{", ".join(names)}')
  return [(name, config) for name, config in named if name in only]


def pool_sweep_name(kind: str, experts: int, dispatch: str, pool_size: int) -> str:
  """'all:moe:E8', 'all:samoe:E8:P2', 'all:moe:E8:ragged', ...: a --preset=pool row's config name."""
  name = f'all:{kind}:E{experts}' + (f':P{pool_size}' if kind == 'samoe' else '')
  return name + (f':{dispatch}' if dispatch != 'gather' else '')


def pool_ratios(results: list[dict]) -> dict[str, float]:
  """Every --preset=pool SaMoE and dropless row's step time over the gather-dispatch standard MoE's with the same
  number of experts ('all:moe:E8' for 'all:samoe:E8:P2'): the median of the per-round ratios when the rows have
  them ('round_step_s', the same rounds), else the ratio of the best rounds."""
  by_name = {r['config']: r for r in results}
  out = {}
  for row in results:
    parts = row['config'].split(':')
    base = by_name.get(':'.join(parts[:1] + ['moe'] + parts[2:3]))
    if parts[0] != 'all' or base is None or base is row:
      continue
    if row.get('round_step_s') and base.get('round_step_s'):
      out[row['config']] = float(np.median(np.asarray(row['round_step_s']) / np.asarray(base['round_step_s'])))
    else:
      out[row['config']] = row['step_s'] / base['step_s']
  return out


def samoe_vs_moe(results: list[dict]) -> float | None:
  """SaMoE step time / standard MoE step time, when both bench configs were run."""
  by_name = {r['config'].rsplit('/', 1)[-1]: r for r in results}
  for samoe, moe in (('bench_samoe.py', 'bench_moe.py'), ('gpu:samoe', 'gpu:moe')):
    if samoe in by_name and moe in by_name:
      return by_name[samoe]['step_s'] / by_name[moe]['step_s']
  return None
