"""Timing the real train step (python -m samoe_jax.bench; experiments/calibration.py --bench): every config's
mesh, partitioner, model, AdamW, sharded state and jitted train step with donation, compiled once, then timed on a
fixed synthetic batch, round-robin against this machine's own float32 matmul rate (the method: samoe_jax/bench.py).
"""

from __future__ import annotations

import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from samoe_jax.models import accounting
from samoe_jax.models.model import LanguageModel
from samoe_jax.sharding.mesh import make_mesh
from samoe_jax.sharding.partitioner import Partitioner
from samoe_jax.training import optimizer as optimizer_lib
from samoe_jax.training import state as state_lib
from samoe_jax.training.config_checks import validate_config
from samoe_jax.training.grad_stats import GradStats
from samoe_jax.training.step import make_train_step
from samoe_jax.training.step_options import StepOptions

MATMUL_N = 2048


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
    options = StepOptions(model, optimizer, schedule, grad_stats=GradStats(model) if grad_stats else None)
    step_fn = make_train_step(options, self.partitioner, shardings)
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


def format_row(row: dict) -> str:
  return (f"{row['config']:<28} step {row['step_s'] * 1e3:7.1f} ms  {row['tokens_per_s']:9.0f} tok/s  "
          f"model {row['model_flops_per_step'] / 1e9:6.1f} GFLOP/step  "
          f"{row['achieved_flops_per_s'] / 1e9:6.1f} GFLOP/s  matmul {row['matmul_flops_per_s'] / 1e9:6.1f} "
          f"GFLOP/s  ratio {row['ratio_to_matmul']:.2f}  (compile {row['compile_s']:.1f} s)"
          + (f"  MFU {row['mfu'] * 100:.1f} %" if 'mfu' in row else '')
          + (f"  grad stats every step: {row['grad_stats_ratio']:.3f}x the step (median of "
             f"{row['grad_stats_pairs']} paired steps)" if 'grad_stats_ratio' in row
             else ''))
