"""The benchmark's configurations and its figures' bookkeeping (python -m samoe_jax.bench): presets, chip peaks,
MFU, the result rows. Flag-free, so that tests and other tools can import it beside other absl programs."""

from __future__ import annotations

from typing import Sequence

from ml_collections import config_flags

from samoe_jax.config.presets import GPU_BENCH_KINDS, bench_gpu

PRESETS = ('cpu', 'gpu')   # cpu: --configs (the reference workload); gpu: presets.bench_gpu dense / moe / samoe
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
  if preset != 'cpu':
    raise ValueError(f'--preset={preset!r} is not one of {PRESETS}')
  parser = config_flags.config_flags._ConfigFileParser(name='config')  # pylint: disable=protected-access
  return [(path, parser.parse(path)) for path in config_paths]


def format_row(row: dict) -> str:
  return (f"{row['config']:<28} step {row['step_s'] * 1e3:7.1f} ms  {row['tokens_per_s']:9.0f} tok/s  "
          f"model {row['model_flops_per_step'] / 1e9:6.1f} GFLOP/step  "
          f"{row['achieved_flops_per_s'] / 1e9:6.1f} GFLOP/s  matmul {row['matmul_flops_per_s'] / 1e9:6.1f} "
          f"GFLOP/s  ratio {row['ratio_to_matmul']:.2f}  (compile {row['compile_s']:.1f} s)"
          + (f"  MFU {row['mfu'] * 100:.1f} %" if 'mfu' in row else '')
          + (f"  grad stats every step: {row['grad_stats_ratio']:.3f}x the step (median of "
             f"{row['grad_stats_pairs']} paired steps)" if 'grad_stats_ratio' in row
             else ''))


def samoe_vs_moe(results: list[dict]) -> float | None:
  """SaMoE step time / standard MoE step time, when both bench configs were run."""
  by_name = {r['config'].rsplit('/', 1)[-1]: r for r in results}
  for samoe, moe in (('bench_samoe.py', 'bench_moe.py'), ('gpu:samoe', 'gpu:moe')):
    if samoe in by_name and moe in by_name:
      return by_name[samoe]['step_s'] / by_name[moe]['step_s']
  return None
