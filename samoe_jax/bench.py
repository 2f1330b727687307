"""Train-step benchmark: tokens/s, model FLOPs and their ratio to this machine's own float32 matmul rate.

  python -m samoe_jax.bench [--configs=configs/bench_dense.py,configs/bench_moe.py,configs/bench_samoe.py]
                            [--steps=10] [--repeats=3] [--json_out=bench.json] [--grad_stats]
  python -m samoe_jax.bench --preset=gpu   # bfloat16 350M-class dense / MoE-16 / SaMoE (presets.bench_gpu), MFU
  python -m samoe_jax.bench --preset=pool  # MoE on all blocks: SaMoE P = 1, 2, 4 and E = 32 vs MoE, dropless
  python -m samoe_jax.bench --preset=gpu --only=gpu:moe,gpu:samoe   # some of a preset's configs

For every config: build the real trainer pieces (mesh, partitioner, model, AdamW, sharded state, the jitted
train step with donation) and compile once; then time `steps` steps on a fixed synthetic batch, `repeats`
rounds, the configs round-robin within each round, and report each config's best round. Model FLOPs per step come from samoe_jax.accounting (top-k active experts, causal
half of attention, logits; SaMoE's per-step mixing included), never from what the implementation happens to
execute (capacity padding is overhead). The reference rate is a jitted 2048x2048 float32 `jnp.matmul`, measured
in the same process just before each timing, and reported for the round the config's figure comes from. The last line compares the
SaMoE step time with the standard MoE's (the target: within 3 %); --preset=pool prints every
SaMoE (and dropless) row's ratio to the standard MoE with as many experts, the median over the interleaved rounds. On a chip of bench_configs.PEAK_BF16_FLOPS (H100, H200, A100,
TPU v4, v5e, v5p) every row also gets its MFU: model FLOP/s over the chip's dense bfloat16 peak.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from samoe_jax import cli
from samoe_jax import accounting
from samoe_jax.bench_configs import (PRESETS, format_row, peak_flops, pool_ratios, preset_configs, samoe_vs_moe,
                                     select_configs)
from samoe_jax.config.validate import validate_config
from samoe_jax.models.model import LanguageModel
from samoe_jax.sharding.mesh import make_mesh
from samoe_jax.sharding.partitioner import Partitioner
from samoe_jax.training import optimizer as optimizer_lib
from samoe_jax.training import state as state_lib
from samoe_jax.training.grad_stats import GradStats
from samoe_jax.training.step import make_train_step

DEFAULT_CONFIGS = 'configs/bench_dense.py,configs/bench_moe.py,configs/bench_samoe.py'
MATMUL_N = 2048

_CONFIGS = flags.DEFINE_string('configs', DEFAULT_CONFIGS, 'Comma-separated config files to benchmark.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed train steps per repeat.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Rounds; each config reports its best (least disturbed).')
_JSON_OUT = flags.DEFINE_string('json_out', '', 'Also write the results as JSON to this path.')
_PRESET = flags.DEFINE_enum('preset', 'cpu', PRESETS, "'gpu': the bfloat16 350M-class dense, MoE-16 and SaMoE "
                             'models of presets.bench_gpu (one 80+ GB GPU) instead of --configs, with MFU; '
                             "'pool': MoE on all 4 blocks of the reference workload, standard MoE vs SaMoE "
                             'P = 1, 2, 4, E = 8 and 32, and the dropless dispatch (presets.bench_all_blocks).')
_ONLY = flags.DEFINE_list('only', [], 'Time only these configs of the preset, by name (e.g. gpu:moe,gpu:samoe or '
                         'all:moe:E32,all:samoe:E32:P4); the configs are compiled and kept in memory together.')
_GRAD_STATS = flags.DEFINE_bool('grad_stats', False, 'Also time every config with the gradient-flow statistics on '
                                'every step (train.grad_stats_every = 1) and print the ratio to the plain step.')


def matmul_rate(n: int = MATMUL_N, iters: int = 10, repeats: int = 3) -> float:
  """Best-of-`repeats` FLOP/s of a jitted n x n float32 matmul on the default device."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(jnp.matmul)
  f(a, b).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(iters):
      c = f(a, b)
    c.block_until_ready()
    best = min(best, (time.perf_counter() - start) / iters)
  return 2 * n ** 3 / best


def synthetic_batch(config, seed: int = 0) -> dict[str, np.ndarray]:
  """Uniform random tokens [B, L] over the model vocabulary (ids >= 1), all positions weighted."""
  rng = np.random.default_rng(seed)
  b, l = config.data.batch_size, config.data.seq_len
  tokens = rng.integers(1, config.model.vocab_size, size=(b, l + 1), dtype=np.int32)
  return {'decoder_input_tokens': tokens[:, :-1], 'decoder_target_tokens': tokens[:, 1:],
          'decoder_loss_weights': np.ones((b, l), np.float32)}


class CompiledStep:
  """The real train step of one config (mesh, partitioner, model, AdamW, sharded state), compiled once."""

  def __init__(self, config, grad_stats: bool = False):
    """grad_stats: the variant that also returns the gradient-flow statistics (training/grad_stats.py)."""
    validate_config(config)
    model = LanguageModel(config)
    self.partitioner = Partitioner(make_mesh(config.mesh))
    axes = model.param_logical_axes()
    multipliers = optimizer_lib.resolved_lr_multipliers(model.spec.mixing, config.train, model.spec.pool.size)
    optimizer, schedule = optimizer_lib.make_optimizer(config.train, model.abstract_params(), axes,
                                                       lr_multipliers=multipliers)
    abstract = state_lib.abstract_state(model, optimizer)
    shardings = state_lib.state_shardings(self.partitioner, optimizer, abstract, axes)
    step_fn = make_train_step(model, optimizer, schedule, self.partitioner, shardings,
                              grad_stats=GradStats(model) if grad_stats else None)
    with self.partitioner.activate():
      self.state = jax.jit(lambda r: state_lib.init_state(model, optimizer, r), out_shardings=shardings)(
          jax.random.key(config.train.seed))
      self.batch = self.partitioner.shard_batch(synthetic_batch(config))
      self.rng = jax.random.key(1)
      start = time.perf_counter()
      self.compiled = step_fn.lower(self.state, self.batch, self.rng).compile()
      self.compile_s = time.perf_counter() - start
    self.loss = float('nan')
    self.time(1)   # warm-up

  def time(self, steps: int) -> float:
    """Seconds per step over `steps` consecutive steps."""
    with self.partitioner.activate():
      start = time.perf_counter()
      for _ in range(steps):
        self.state, metrics = self.compiled(self.state, self.batch, self.rng)
      jax.block_until_ready(metrics)
    self.loss = float(metrics['loss'])
    return (time.perf_counter() - start) / steps


def benchmark(named_configs: Sequence[tuple[str, object]], steps: int, repeats: int, grad_stats: bool = False,
              peak: float | None = None) -> list[dict]:
  """Compiles every config, then times them round-robin (with the matmul rate in every round), so that a change
  in machine load hits all of them alike; each config reports its best round and that round's matmul rate.

  grad_stats: also time each config's step with the gradient-flow statistics (train.grad_stats_every = 1, i.e. on
  every step): in every round, `steps` pairs of one plain step and one statistics step, alternating, so that load
  changes hit both alike; the row gets the median of the paired time ratios. peak: the chip's bf16 peak FLOP/s;
  rows then get 'mfu' = achieved model FLOP/s / peak."""
  config_paths = [name for name, _ in named_configs]
  configs = [config for _, config in named_configs]
  compiled = [CompiledStep(config) for config in configs]
  with_stats = [CompiledStep(config, grad_stats=True) for config in configs] if grad_stats else []
  best = [(float('inf'), 0.0)] * len(configs)
  rounds: list[list[float]] = [[] for _ in configs]
  paired: list[list[float]] = [[] for _ in with_stats]
  for _ in range(repeats):
    for i, step in enumerate(compiled):
      rate = matmul_rate()
      step_s = step.time(steps)
      rounds[i].append(step_s)
      if step_s < best[i][0]:
        best[i] = (step_s, rate)
      for _ in range(steps if with_stats else 0):
        paired[i].append(with_stats[i].time(1) / step.time(1))
  results = []
  for i, (path, config, step, (step_s, rate)) in enumerate(zip(config_paths, configs, compiled, best)):
    flops = accounting.flops_per_step(config)['train']
    tokens = config.data.batch_size * config.data.seq_len
    row = {'config': path, 'tokens_per_step': tokens, 'tokens_per_s': tokens / step_s,
           'model_flops_per_step': flops, 'achieved_flops_per_s': flops / step_s, 'matmul_flops_per_s': rate,
           'ratio_to_matmul': flops / step_s / rate, 'compile_s': step.compile_s, 'step_s': step_s,
           'loss': step.loss, 'round_step_s': rounds[i]}
    if peak:
      row['mfu'] = flops / step_s / peak
    if with_stats:
      row.update(grad_stats_ratio=float(np.median(paired[i])), grad_stats_pairs=len(paired[i]))
    results.append(row)
    print(format_row(row), flush=True)
  return results


def main(argv: Sequence[str] | None = None) -> None:
  def run(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    print(f'devices: {jax.devices()}')
    kind = jax.devices()[0].device_kind
    peak = peak_flops(kind)
    print(f'chip: {kind}; bf16 peak ' + (f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown (no MFU)'))
    # An invalid config raises ValueError: cli.run_app prints its message, exit code 1.
    named = select_configs(preset_configs(_PRESET.value, _CONFIGS.value.split(',')), _ONLY.value)
    results = benchmark(named, _STEPS.value, _REPEATS.value, _GRAD_STATS.value, peak=peak)
    ratio = samoe_vs_moe(results)
    if ratio is not None:
      print(f'SaMoE / MoE step time: {ratio:.3f} ({(ratio - 1) * 100:+.1f} %; target within 3 %)')
    ratios = pool_ratios(results)
    for name, value in ratios.items():
      print(f'{name} / {":".join(name.split(":")[:1] + ["moe"] + name.split(":")[2:3])} step time: {value:.3f} '
            f'(median of {_REPEATS.value} interleaved rounds)')
    if _JSON_OUT.value:
      with open(_JSON_OUT.value, 'w') as f:
        json.dump({'results': results, 'samoe_over_moe_step_time': ratio, 'step_time_over_moe': ratios,
                   'device_kind': kind, 'peak_bf16_flops': peak}, f, indent=2)
  cli.run_app('samoe_jax.bench', run, list(argv) if argv is not None else sys.argv)


if __name__ == '__main__':
  main()
