"""Train-step benchmark: tokens/s, model FLOPs and their ratio to this machine's own float32 matmul rate.

  python -m samoe_jax.bench [--configs=configs/bench_dense.py,configs/bench_moe.py,configs/bench_samoe.py]
                            [--steps=10] [--repeats=3] [--json_out=bench.json] [--grad_stats]
  python -m samoe_jax.bench --preset=gpu   # bfloat16 350M-class dense / MoE-16 / SaMoE (presets.bench_gpu), MFU
  python -m samoe_jax.bench --preset=pool  # MoE on all blocks: SaMoE P = 1, 2, 4 and E = 32 vs MoE, dropless
  python -m samoe_jax.bench --preset=gpu --only=gpu:moe,gpu:samoe   # some of a preset's configs

For every config (samoe_jax/training/throughput_bench.py): build the real trainer pieces (mesh, partitioner,
model, AdamW, sharded state, the jitted train step with donation) and compile once; then time `steps` steps on a
fixed synthetic batch, `repeats` rounds, the configs round-robin within each round, and report each config's best
round. Model FLOPs per step come from samoe_jax.models.accounting (top-k active experts, causal half of attention,
logits; SaMoE's per-step mixing included), never from what the implementation happens to execute (capacity padding
is overhead). The reference rate is a jitted 2048x2048 float32 `jnp.matmul`, measured in the same process just
before each timing, and reported for the round the config's figure comes from. The last line compares the SaMoE
step time with the standard MoE's (the target: within 3 %); --preset=pool prints every SaMoE (and dropless) row's
ratio to the standard MoE with as many experts, the median over the interleaved rounds. On a chip of
bench_configs.PEAK_BF16_FLOPS (H100, H200, A100, TPU v4, v5e, v5p) every row also gets its MFU: model FLOP/s over
the chip's dense bfloat16 peak.
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

import jax
from absl import app, flags

from samoe_jax import cli
from samoe_jax.bench_configs import PRESETS, peak_flops, pool_ratios, preset_configs, samoe_vs_moe, select_configs
from samoe_jax.training.throughput_bench import benchmark

PROG = 'samoe_jax.bench'
DEFAULT_CONFIGS = 'configs/bench_dense.py,configs/bench_moe.py,configs/bench_samoe.py'


def define_flags() -> None:
  """The command's flags (defined by main, so that importing this module defines none)."""
  flags.DEFINE_string('configs', DEFAULT_CONFIGS, 'Comma-separated config files to benchmark.')
  flags.DEFINE_integer('steps', 10, 'Timed train steps per repeat.')
  flags.DEFINE_integer('repeats', 5, 'Rounds; each config reports its best (least disturbed).')
  flags.DEFINE_string('json_out', '', 'Also write the results as JSON to this path.')
  flags.DEFINE_enum('preset', 'cpu', PRESETS, "'gpu': the bfloat16 350M-class dense, MoE-16 and SaMoE "
                    'models of presets.bench_gpu (one 80+ GB GPU) instead of --configs, with MFU; '
                    "'pool': MoE on all 4 blocks of the reference workload, standard MoE vs SaMoE "
                    'P = 1, 2, 4, E = 8 and 32, and the dropless dispatch (presets.bench_all_blocks).')
  flags.DEFINE_list('only', [], 'Time only these configs of the preset, by name (e.g. gpu:moe,gpu:samoe or '
                    'all:moe:E32,all:samoe:E32:P4); the configs are compiled and kept in memory together.')
  flags.DEFINE_bool('grad_stats', False, 'Also time every config with the gradient-flow statistics on '
                    'every step (train.grad_stats_every = 1) and print the ratio to the plain step.')


def _run(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  print(f'devices: {jax.devices()}')
  kind = jax.devices()[0].device_kind
  peak = peak_flops(kind)
  print(f'chip: {kind}; bf16 peak ' + (f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown (no MFU)'))
  # An invalid config raises ValueError: cli.run_app prints its message, exit code 1.
  named = select_configs(preset_configs(f.preset, f.configs.split(',')), f.only)
  results = benchmark(named, f.steps, f.repeats, f.grad_stats, peak=peak)
  ratio = samoe_vs_moe(results)
  if ratio is not None:
    print(f'SaMoE / MoE step time: {ratio:.3f} ({(ratio - 1) * 100:+.1f} %; target within 3 %)')
  ratios = pool_ratios(results)
  for name, value in ratios.items():
    print(f'{name} / {":".join(name.split(":")[:1] + ["moe"] + name.split(":")[2:3])} step time: {value:.3f} '
          f'(median of {f.repeats} interleaved rounds)')
  if f.json_out:
    with open(f.json_out, 'w') as out:
      json.dump({'results': results, 'samoe_over_moe_step_time': ratio, 'step_time_over_moe': ratios,
                 'device_kind': kind, 'peak_bf16_flops': peak}, out, indent=2)


def main(argv: Sequence[str] | None = None) -> None:
  """The command (python -m, a console script): defines its flags here, not at import (every command module
  imports in one process), and runs through cli.run_app."""
  define_flags()
  cli.run_app(PROG, _run, sys.argv if argv is None else list(argv))


if __name__ == '__main__':
  sys.exit(main())
