"""The budgeted one-GPU suite (issue 25, part 4): one process, one GPU, one command, under 8 minutes of device time.

  python -m samoe_jax.experiments.reproduce --suite=h100 --out=DIR --budget_s=420 --corpus_dir=CORPUS

Five configs of one shape (6 blocks, d_model 256, 4 heads of 64, FFN 1024, SentencePiece 4k, seq 256 x 128 =
32768 tokens per step, bfloat16, model.attention='auto': cuDNN flash attention on an NVIDIA GPU, dropout 0):
the dense model of the MoE's shape, a wider dense model (d_model 384), the standard top-1 MoE with E = 16 experts
on every block, and SaMoE P = 1 and P = 2 with learned mixing (pool.target_reach = suites.MIXING_REACH).
Routing groups of suites.GROUP_SIZE tokens (uniform routing drops < 1 %), 2 cheap validations of 64k tokens, no
gradient-flow statistics (their step would be a second compile per config), one seed.

The steps are not fixed: the suite measures, then plans, then trains, all in this process.
  1. data: the corpus files are checked (ValueError naming how to build them) and its train / validation rows
     tokenized once into DIR/cache (data.cache_dir; the first use's cost is measured and counted);
  2. timing pass: every config's real trainer steps (training/loop.py build_run + compile_steps: the same train
     and eval steps the training compiles) are compiled and `timed_steps` train steps and one validation timed on
     the first training batch, under the suite's persistent compilation cache (runner.compilation_cache);
  3. plan: `plan_steps` gives every config the same number of steps such that the time already spent, a compile
     per config (its train step's schedule depends on the steps, so it compiles again), the steps, the
     validations, a per-run overhead and the report fit in budget_s x (1 - margin); DIR/plan.json;
  4. the ordinary suite (reproduce.run_suite: runs/, report/), then plan.json gets the measured wall time.
A rerun of the same command with DIR/plan.json present keeps its steps (finished runs are skipped, others resume).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from samoe_jax.config.defaults import get_base_config
from samoe_jax.data import pipeline
from samoe_jax.evaluation import validation
from samoe_jax.experiments import runner
from samoe_jax.experiments import suites
from samoe_jax.experiments.suites import ConfigSpec, Suite
from samoe_jax.models import accounting
from samoe_jax.training import loop, state as state_lib
from samoe_jax.training.config_checks import validate_config

NAME = 'h100'
BUDGET_S = 420.0          # seconds for the whole suite: timing pass, training, validation, report
MARGIN = 0.15             # share of the budget kept free for what the plan cannot measure
MIN_STEPS = 100           # fewer steps than this say nothing: the plan refuses instead
STEP_MULTIPLE = 10        # planned steps are a multiple of this (and of EVALS)
EVALS = 2                 # validations per run (halfway and at the end)
TIMED_STEPS = 10          # train steps timed per config in the timing pass (after one warm-up step)
RUN_OVERHEAD_S = 8.0      # per run, not measured: state init, 2 checkpoints, the run's report.md and PNGs
REPORT_S = 30.0           # the suite report (tables, speedup fit, figures), not measured
PLAN = 'plan.json'
# FLOP rate of the token estimate in the docs (an estimate, never a measurement): H100 bf16 at 30 % MFU of ~660.
ESTIMATE_FLOPS = 200e12 * 0.3
BUILD_HINT = ('build it on a CPU machine with network: python -m samoe_jax.data.experiment_corpus --out=DIR, '
              'then python -m samoe_jax.data.corpus_vocab --corpus=DIR (sp1k/sp2k), and carry DIR along')


@dataclasses.dataclass(frozen=True)
class Design:
  """The suite's shape: num_layers blocks of width d_model (heads of head_dim, FFN 4 d_model), a wider dense
  model of width `wide`, E = experts top-1 on every block, seq_len x batch tokens per step, validations of about
  eval_tokens tokens; extra: more dotted keys on the base config (tests: byte vocabulary, small groups)."""
  d_model: int = 256
  wide: int = 384
  num_layers: int = 6
  head_dim: int = 64
  experts: int = 16
  seq_len: int = 256
  batch: int = 128
  lr: float = 2e-3
  eval_tokens: int = 65536
  extra: tuple[tuple[str, Any], ...] = ()


DESIGN = Design()


def make_base(design: Design):
  """The base config builder (corpus_dir, cache_dir) -> ConfigDict: the dense shape of `design`, bfloat16,
  model.attention='auto' (cuDNN flash attention on an NVIDIA GPU), SentencePiece 4k, groups of GROUP_SIZE."""
  def base(corpus_dir: str, cache_dir: str) -> ml_collections.ConfigDict:
    c = get_base_config()
    d = design.d_model
    c.model.vocab_size, c.model.d_model, c.model.num_layers = 4096, d, design.num_layers
    c.model.num_heads, c.model.d_ff, c.model.max_len = d // design.head_dim, 4 * d, design.seq_len
    c.model.dtype, c.model.attention = 'bfloat16', 'auto'
    c.moe.num_experts = design.experts
    c.pool.size, c.pool.mixing = design.num_layers, 'fixed'
    suites._corpus_data(c, corpus_dir, cache_dir)   # pylint: disable=protected-access
    c.data.seq_len, c.data.batch_size = design.seq_len, design.batch
    c.moe.group_size = suites.GROUP_SIZE
    c.train.learning_rate = design.lr
    c.train.eval_batches = max(1, design.eval_tokens // (design.seq_len * design.batch))
    suites._common(c)   # pylint: disable=protected-access  (layer_plan 'all', dropout 0, top-1)
    c.update_from_flattened_dict(dict(design.extra))
    return c
  return base


def _no_grad_stats(spec: ConfigSpec) -> ConfigSpec:
  return dataclasses.replace(spec, overrides={**spec.overrides, 'train.grad_stats_every': 0})


def specs(design: Design) -> tuple[ConfigSpec, ...]:
  """dense (the MoE's shape), dense_dWIDE, moe_eE (role 'moe'), samoe_p1 and samoe_p2 (learned mixing)."""
  d, layers, e, hd = design.d_model, design.num_layers, design.experts, design.head_dim
  samoe = [s for s in suites.sharing_configs(layers, e, 4 * d, (1, 2)) if s.role == 'samoe']
  out = [suites.dense(d, d // hd, name='dense'), suites.dense(design.wide, design.wide // hd),
         suites.standard_moe(e, layers, role='moe'), *samoe]
  return tuple(_no_grad_stats(s) for s in out)


def make_suite(design: Design = DESIGN) -> Suite:
  """The h100 Suite of `design` (one seed; `steps` is a placeholder: the plan sets them)."""
  return Suite(NAME, f'The budgeted one-GPU comparison: {design.num_layers} blocks, bfloat16, dense d_model '
               f'{design.d_model} / {design.wide}, MoE E={design.experts} top-1 and SaMoE P=1/2 (learned mixing), '
               f'{design.seq_len} x {design.batch} tokens per step, equal steps planned from a timing pass.',
               make_base(design), specs(design), seeds=1, steps=1000, evals=EVALS, grad_stats=1, needs_corpus=True,
               budget='--budget_s (420 s) on one H100, steps planned from a timing pass (not yet measured)')


H100 = make_suite()


# ---------------------------------------------------------------------------------------------- the plan
def plan_steps(step_seconds: Mapping[str, float], compile_seconds: Mapping[str, float],
               eval_seconds: Mapping[str, float], budget_s: float, *, evals: int = EVALS, spent_s: float = 0.0,
               per_run_s: float = 0.0, final_s: float = 0.0, margin: float = MARGIN, min_steps: int = MIN_STEPS,
               multiple: int = STEP_MULTIPLE, max_steps: int | None = None) -> int:
  """The one step count S for every config such that

    spent_s + final_s + sum_c (compile_c + per_run_s + evals * eval_c + S * step_c) <= budget_s * (1 - margin),

  S the largest multiple of `multiple` (and at most max_steps). step_seconds / compile_seconds / eval_seconds:
  per config, seconds per train step, per compile of its steps, per validation. Raises ValueError naming budget_s
  and the seconds min_steps would need when S < min_steps."""
  if set(step_seconds) != set(compile_seconds) or set(step_seconds) != set(eval_seconds) or not step_seconds:
    raise ValueError(f'plan_steps: step, compile and eval seconds must name the same configs: '
                     f'{sorted(step_seconds)}, {sorted(compile_seconds)}, {sorted(eval_seconds)}')
  if not 0 <= margin < 1 or multiple < 1 or min_steps < 1 or any(v <= 0 for v in step_seconds.values()):
    raise ValueError(f'plan_steps: margin={margin} must be in [0, 1), multiple={multiple} and min_steps='
                     f'{min_steps} >= 1, every step time > 0')
  fixed = spent_s + final_s + sum(compile_seconds[c] + per_run_s + evals * eval_seconds[c] for c in step_seconds)
  per_step = sum(step_seconds.values())
  usable = budget_s * (1 - margin)
  steps = math.floor(max(usable - fixed, 0.0) / per_step / multiple) * multiple
  if max_steps is not None:
    steps = min(steps, max_steps // multiple * multiple)
  if steps < min_steps:
    needed = (fixed + min_steps * per_step) / (1 - margin)
    raise ValueError(f'budget_s={budget_s:g} is too small: {min_steps} steps of each of the {len(step_seconds)} '
                     f'configs need about {math.ceil(needed)} s ({fixed:.0f} s fixed: time spent, compiles, '
                     f'validations, overheads, report; {per_step:.4f} s per step of all configs together; '
                     f'margin {margin:.0%}); raise --budget_s to at least {math.ceil(needed)}')
  return steps


# ----------------------------------------------------------------------------------------- measurements
def required_files(config: ml_collections.ConfigDict) -> list[str]:
  """The corpus files a config reads: the train and validation files and a SentencePiece model path."""
  d = config.data
  files = [d.train_files, d.validation_files]
  if str(d.vocabulary).endswith('.model'):
    files.append(d.vocabulary)
  return [f for f in files if f]


def check_corpus(configs: Sequence[ml_collections.ConfigDict], corpus_dir: str) -> None:
  """ValueError naming every missing corpus file (manifest.json too: without it run_suite would build the corpus,
  which needs the network) and how to build the corpus on a CPU machine."""
  wanted = {os.path.join(os.path.abspath(corpus_dir), 'manifest.json')} | {f for c in configs for f in required_files(c)}
  missing = sorted(f for f in wanted if not os.path.isfile(f))
  if missing:
    raise ValueError(f'--corpus_dir={corpus_dir!r} lacks {", ".join(missing)}: {BUILD_HINT}')


def time_data(config: ml_collections.ConfigDict) -> tuple[dict[str, float], dict[str, Any]]:
  """(seconds to make the training iterator's first batch and the validation batches: the first time, which
  tokenizes into data.cache_dir unless it holds the rows already, and again, what each run pays; that batch)."""
  out = {}
  for key in ('first_s', 'again_s'):
    start = time.perf_counter()
    it = pipeline.make_train_iterator(config.data)
    batch = next(it)
    pipeline.make_eval_batches(config.data, config.train.eval_batches)
    it.close()
    out[key] = time.perf_counter() - start
  return out, batch


def time_config(config: ml_collections.ConfigDict, workdir: str, host_batch: dict[str, Any],
                timed_steps: int = TIMED_STEPS) -> dict[str, float]:
  """The trainer's own steps of `config` (loop.build_run in a scratch `workdir`, loop.compile_steps), timed on
  `host_batch` (a training batch, used again for every step): compile_s (train and eval steps), step_s (mean of `timed_steps` steps after a warm-up step),
  eval_s (one validation of train.eval_batches batches, after a warm-up)."""
  import jax  # pylint: disable=g-import-not-at-top
  run = loop.build_run(config, workdir)
  try:
    train_fn, eval_fn, compile_s = loop.compile_steps(run)
    init = jax.jit(lambda rng: state_lib.init_state(run.model, run.optimizer, rng), out_shardings=run.shardings)
    with run.partitioner.activate():
      state = init(jax.random.key(0))
      batch = loop.shard_host_batch(run, host_batch)
      rng = jax.random.key(1)
      state, metrics = train_fn(state, batch, rng, 1)   # warm-up (step 1: never a statistics step here)
      jax.block_until_ready(metrics)
      start = time.perf_counter()
      for step in range(2, timed_steps + 2):
        state, metrics = train_fn(state, batch, rng, step)
      jax.block_until_ready(metrics)
      step_s = (time.perf_counter() - start) / timed_steps
      validation.validation_metrics(eval_fn, state.params, [batch])   # warm-up
      start = time.perf_counter()
      validation.validation_metrics(eval_fn, state.params, [batch] * int(config.train.eval_batches))
      eval_s = time.perf_counter() - start
  finally:
    run.checkpointer.close()
  return {'compile_s': compile_s, 'step_s': step_s, 'eval_s': eval_s, 'loss': float(metrics['loss'])}


def estimate(config: ml_collections.ConfigDict, steps: int, flops_per_s: float = ESTIMATE_FLOPS) -> dict[str, float]:
  """Tokens and model FLOPs of a run of `steps` steps, and its seconds at `flops_per_s` (an estimate)."""
  flops = accounting.flops_per_step(config)['train']
  tokens = config.data.batch_size * config.data.seq_len
  return {'tokens_per_step': tokens, 'train_flops_per_step': flops, 'flops_per_token': flops / tokens,
          'tokens': tokens * steps, 'train_flops': flops * steps, 'estimated_seconds': flops * steps / flops_per_s}


# ------------------------------------------------------------------------------------------------ the run
def run(out_dir: str, corpus_dir: str, budget_s: float = BUDGET_S, *, design: Design = DESIGN,
        margin: float = MARGIN, timed_steps: int = TIMED_STEPS, min_steps: int = MIN_STEPS,
        max_steps: int | None = None, command: str = '', run_suite: Callable[..., str]
        ) -> dict[str, Any]:
  """Timing pass, plan (OUT/plan.json), training and the suite report, in this process; returns the plan.
  design: the suite's shape (tests: a tiny model); max_steps: a cap on the planned steps; run_suite:
  samoe_jax.experiments.reproduce.run_suite (passed in: reproduce imports this module)."""
  import jax  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  out, corpus = os.path.abspath(out_dir), os.path.abspath(corpus_dir)
  if budget_s <= 0:
    raise ValueError(f'--budget_s={budget_s:g}: must be > 0')
  suite = H100 if design == DESIGN else make_suite(design)
  configs = {s.name: suite.config(s, 0, corpus, os.path.join(out, 'cache')) for s in suite.configs}
  for config in configs.values():
    validate_config(config)
  check_corpus(list(configs.values()), corpus_dir)
  os.makedirs(out, exist_ok=True)
  plan_path = os.path.join(out, PLAN)
  plan = _read_plan(plan_path, budget_s, list(configs))
  if plan is None:
    plan = {'suite': NAME, 'budget_s': budget_s, 'margin': margin, 'device_kind': jax.devices()[0].device_kind,
            'devices': len(jax.devices()), 'configs': list(configs), 'design': dataclasses.asdict(design)}
    plan['data'], batch = time_data(next(iter(configs.values())))
    _check_spent(t0, budget_s, margin, 'the data')
    plan['timing'] = {}
    with runner.compilation_cache(os.path.join(out, 'jax_cache')):
      for name, c in configs.items():
        plan['timing'][name] = time_config(c, os.path.join(out, 'timing', name), batch, timed_steps)
        _check_spent(t0, budget_s, margin, f'timing {name}')
    plan['timing_pass_s'] = time.time() - t0
    timing = plan['timing']
    plan['per_run_s'] = plan['data']['again_s'] + RUN_OVERHEAD_S
    plan['report_s'] = REPORT_S
    plan['steps'] = plan_steps({n: t['step_s'] for n, t in timing.items()},
                               {n: t['compile_s'] for n, t in timing.items()},
                               {n: t['eval_s'] for n, t in timing.items()}, budget_s, evals=EVALS,
                               spent_s=plan['timing_pass_s'], per_run_s=plan['per_run_s'], final_s=REPORT_S,
                               margin=margin, min_steps=min_steps, max_steps=max_steps)
    steps = plan['steps']
    plan['planned_s'] = plan['timing_pass_s'] + REPORT_S + sum(
        t['compile_s'] + plan['per_run_s'] + EVALS * t['eval_s'] + steps * t['step_s'] for t in timing.values())
    plan['per_config'] = {n: {**estimate(c, steps), 'measured_train_s': steps * timing[n]['step_s']}
                          for n, c in configs.items()}
    _write_json(plan_path, plan)
  steps = plan['steps']
  start = time.time()
  report = run_suite(suite, out, steps=steps, corpus_dir=corpus,
                      command=command or f'samoe_jax.experiments.reproduce --suite={NAME} --out={out_dir} '
                      f'--budget_s={budget_s:g} --corpus_dir={corpus_dir}')
  plan.setdefault('sessions', []).append({'train_and_report_s': time.time() - start,
                                          'suite_s': time.time() - t0, 'report': report})
  _write_json(plan_path, plan)
  return plan


def _check_spent(t0: float, budget_s: float, margin: float, what: str) -> None:
  """ValueError as soon as the time spent (up to and including `what`) exceeds the usable budget."""
  spent = time.time() - t0
  if spent > budget_s * (1 - margin):
    raise ValueError(f'budget_s={budget_s:g} is too small: {spent:.0f} s were spent by {what} alone, more than the '
                     f'{budget_s * (1 - margin):.0f} s the margin of {margin:.0%} leaves; raise --budget_s')


def _read_plan(path: str, budget_s: float, names: list[str]) -> dict[str, Any] | None:
  """An earlier plan of this DIR with the same budget and configs (a rerun keeps its steps), else None."""
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    plan = json.load(f)
  if plan.get('budget_s') != budget_s or plan.get('configs') != names or 'steps' not in plan:
    raise ValueError(f'{path} holds a plan for --budget_s={plan.get("budget_s")} and configs {plan.get("configs")}'
                     f': use another --out (or remove it to plan again)')
  return plan


def _write_json(path: str, value: dict[str, Any]) -> None:
  with open(path + '.tmp', 'w') as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)
