"""The training loop: train(config, workdir) -> final metrics.

Order of work: validate the config; refuse an incompatible checkpoint in the workdir before writing anything;
write config.json and param_summary.json; build the mesh, partitioner, optimizer and state shardings; restore
the latest checkpoint (state + data iterator position) or initialise; AOT-compile the train and eval steps
once; then a thin Python loop. Step s+1 is dispatched before step s's metrics are fetched, and metrics reach
the host only at log steps (one device_get per log interval). Validation runs every train.eval_every steps and
at the end; configured zero/few-shot tasks (config.eval) every eval.every steps and at the end; checkpoints every
train.checkpoint_every steps, at the end, and on SIGTERM (preemption).
"""

from __future__ import annotations

import dataclasses
import json
import os
import textwrap
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from samoe_jax import cli
from samoe_jax.checkpointing import resume_config
from samoe_jax.checkpointing.store import Checkpointer, run_meta
from samoe_jax.config import aliases
from samoe_jax.config.checks import Problems
from samoe_jax.config.layer_plan import moe_layer_indices
from samoe_jax.config.mesh_checks import check_mesh_fit
from samoe_jax.data import pipeline
from samoe_jax.evaluation import task_finetune
from samoe_jax.evaluation.validation import validation_metrics, make_eval_step
from samoe_jax.models import accounting
from samoe_jax.models.model import LanguageModel
from samoe_jax.sharding.mesh import describe_mesh, make_mesh
from samoe_jax.sharding.partitioner import Partitioner
from samoe_jax.training import distill, init_from
from samoe_jax.training import grad_stats as grad_stats_lib
from samoe_jax.training import state as state_lib
from samoe_jax.training.preflight import check_before_writing
from samoe_jax.training.metrics_writer import MetricsWriter, read_metrics, to_json_value
from samoe_jax.training.optimizer import make_optimizer, resolved_lr_multipliers
from samoe_jax.training import sparse_pruning, workdir_lock
from samoe_jax.training.stop_conditions import FINITE_KEYS, StopSignal, check_finite, compile_finite_check
from samoe_jax.training.step import make_train_step
from samoe_jax.training.step_options import StepOptions
from samoe_jax.training.task_eval import PeriodicTaskEval

BATCH_DTYPES = {'decoder_input_tokens': np.int32, 'decoder_target_tokens': np.int32,
                'decoder_loss_weights': np.float32}


@dataclasses.dataclass
class Run:
  """Everything built once per train() call."""
  config: ml_collections.ConfigDict
  workdir: str
  model: LanguageModel
  partitioner: Partitioner
  optimizer: optax.GradientTransformation
  schedule: Any
  abstract: state_lib.TrainState         # ShapeDtypeStructs carrying the target shardings
  shardings: state_lib.TrainState
  checkpointer: Checkpointer
  meta: dict[str, Any]

  @property
  def primary(self) -> bool:
    return jax.process_index() == 0


def check_mesh_fits(config: ml_collections.ConfigDict, partitioner: Partitioner, has_moe: bool) -> None:
  """The mesh rules of the config pass (config/mesh_checks.py) again with the resolved mesh (a -1 axis filled),
  and the batch's split over the processes; one ValueError naming every problem."""
  problems = Problems()
  check_mesh_fit(config, dict(partitioner.mesh.shape), has_moe, None, problems)
  if config.data.batch_size % jax.process_count():
    problems.add('data.batch_size', config.data.batch_size, f'must be divisible by the {jax.process_count()} '
                 'processes')
  problems.raise_if_any('the config does not fit the mesh ' + ' '.join(f'{a}={n}' for a, n in
                                                                       partitioner.mesh.shape.items()))


def build_run(config: ml_collections.ConfigDict, workdir: str) -> Run:
  """Model, mesh, partitioner, optimizer, state shardings and checkpointer; refuses incompatible checkpoints.

  The mesh checks run before the checkpoint directory is created; the newest intact checkpoint (damaged newer
  ones are moved aside, checkpointing/integrity.py) is compared with this config before anything else is
  written."""
  model = LanguageModel(config)
  abstract_params = model.abstract_params()
  meta = run_meta(config, abstract_params)
  mesh = make_mesh(config.mesh)
  partitioner = Partitioner(mesh, fsdp=config.mesh.get('fsdp', False))   # FSDP: sharding/fsdp.py
  check_mesh_fits(config, partitioner, has_moe=bool(moe_layer_indices(config.model)))
  os.makedirs(workdir, exist_ok=True)
  checkpointer = Checkpointer(workdir, config.train)
  latest = checkpointer.verified_latest()
  if latest is not None:
    checkpointer.check_compatible(latest, meta, resume_config.config_changes(workdir, config))
  logging.info('mesh: %s%s', describe_mesh(mesh), ', FSDP over data x expert' if partitioner.fsdp else '')
  logging.debug('logical axis rules:\n%s', partitioner.describe_rules())   # --verbosity=1 shows them
  param_axes = model.param_logical_axes()
  multipliers = resolved_lr_multipliers(model.spec.mixing, config.train, model.spec.pool.size)   # SaMoE's logits
  optimizer, schedule = make_optimizer(config.train, abstract_params, param_axes, lr_multipliers=multipliers)
  optimizer = sparse_pruning.with_pruning(optimizer, config)   # low_rank_sparse.sparsity > 0 (MC-SMoE / LoSparse)
  abstract = state_lib.abstract_state(model, optimizer)
  shardings = state_lib.state_shardings(partitioner, optimizer, abstract, param_axes)
  return Run(config, workdir, model, partitioner, optimizer, schedule, state_lib.with_shardings(abstract, shardings),
             shardings, checkpointer, meta)


RUN_FILES = ('metrics.jsonl', 'config.json', 'param_summary.json', 'final_metrics.json', 'report.md',
             'loss_curves.png', 'mixing_weights.png', 'mixing_trajectories.png', 'tensorboard')


def archive_stale_run_files(run: Run) -> str | None:
  """Moves the files of an earlier run that never saved a checkpoint into WORKDIR/stale_<time>/.

  A fresh start would otherwise append to (metrics.jsonl) or overwrite (config.json, report) that run's files;
  nothing is ever deleted. Returns the archive directory, or None when there was nothing to move.
  """
  if not run.primary or run.checkpointer.latest_step() is not None:
    return None
  present = [name for name in RUN_FILES if os.path.exists(os.path.join(run.workdir, name))]
  if not present:
    return None
  archive = os.path.join(run.workdir, time.strftime('stale_%Y%m%d_%H%M%S'))
  os.makedirs(archive, exist_ok=False)
  for name in present:
    os.rename(os.path.join(run.workdir, name), os.path.join(archive, name))
  logging.warning('workdir %s held files of a run without a checkpoint (%s): moved them to %s', run.workdir,
                  ', '.join(present), archive)
  return archive


def keep_changed_config(run: Run, start_step: int) -> str | None:
  """A resume whose config differs from config.json (train.steps raised, a new learning rate) logs the changes and
  keeps the old file as config_until_step_<S>.json; returns its path, or None when nothing changed."""
  changes = resume_config.config_changes(run.workdir, run.config) if start_step else []
  if not run.primary or not changes:
    return None
  kept = os.path.join(run.workdir, f'config_until_step_{start_step}.json')
  suffix = 0
  while os.path.exists(kept):
    suffix += 1
    kept = os.path.join(run.workdir, f'config_until_step_{start_step}_{suffix}.json')
  os.rename(os.path.join(run.workdir, 'config.json'), kept)
  logging.warning('resuming from step %d with a changed config (the previous one is kept as %s):\n  %s',
                  start_step, os.path.basename(kept), '\n  '.join(changes))
  return kept


def write_run_files(run: Run) -> dict[str, int]:
  """Writes config.json and param_summary.json into the workdir; returns the parameter summary."""
  summary = {k: int(v) for k, v in run.model.param_summary().items()}
  if run.primary:
    with open(os.path.join(run.workdir, 'config.json'), 'w') as f:
      f.write(run.config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
    with open(os.path.join(run.workdir, 'param_summary.json'), 'w') as f:
      json.dump(summary, f, indent=2)
  for number, line in enumerate(textwrap.wrap(', '.join(f'{k}={v:,}' for k, v in summary.items()), 96)):
    logging.info('%s %s', 'parameters:' if number == 0 else '           ', line)
  return summary


def initial_state(run: Run) -> tuple[state_lib.TrainState, dict[str, Any] | None, int]:
  """(state, data iterator state or None, start step): the latest checkpoint, else a fresh initialisation."""
  restored = run.checkpointer.restore_intact(run.abstract, run.meta)   # verified, finite; damaged ones set aside
  if restored is not None:
    state, data_state, step = restored
    logging.info('resumed from checkpoint step %d in %s', step, run.checkpointer.directory)
    return state, data_state, step
  init = jax.jit(lambda rng: state_lib.init_state(run.model, run.optimizer, rng), out_shardings=run.shardings)
  with run.partitioner.activate():
    state = init(jax.random.key(run.meta['seed']))
  if init_from.enabled(run.config):   # config.init: a fresh run only (training/init_from.py)
    params = init_from.initial_params(run.config, run.model, run.partitioner, state.params, run.shardings.params)
    state = state.replace(params=params)
    logging.info('initialised parameters from %s (init.mode=%s)', run.config.init.from_workdir, run.config.init.mode)
  return state, None, 0


def abstract_batch(run: Run) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch the steps are compiled for: [data.batch_size, data.seq_len] per feature."""
  d = run.config.data
  local = {k: np.zeros((d.batch_size // jax.process_count(), d.seq_len), v) for k, v in BATCH_DTYPES.items()}
  return run.partitioner.batch_spec(local)


class TrainStep:
  """The compiled train step(s), called as train_fn(state, batch, rng, step): the plain step, or at the steps of
  train.grad_stats_every the variant that also returns the gradient-flow statistics (training/grad_stats.py).
  A teacher's params (knowledge distillation) are passed here, as the steps' non-donated last argument."""

  def __init__(self, plain: Any, with_stats: Any | None, every: int, teacher_params: Any | None = None,
               state_finite: Any | None = None):
    self.plain, self.with_stats, self.every = plain, with_stats, every
    self.state_finite = state_finite   # compiled state -> bool (checked before each checkpoint)
    self.extra = () if teacher_params is None else (teacher_params,)

  def __call__(self, state: state_lib.TrainState, batch: dict[str, jax.Array], rng: jax.Array,
               step: int) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
    fn = self.with_stats if grad_stats_lib.is_stats_step(step, self.every) else self.plain
    return fn(state, batch, rng, *self.extra)


def compile_steps(run: Run, with_train: bool = True,
                  teacher: distill.Teacher | None = None) -> tuple[TrainStep | None, Any, float]:
  """AOT-compiled (train step or None, eval step) and the compile time in seconds (logged with memory use).

  With train.grad_stats_every > 0 the train step is compiled twice, with and without the gradient statistics, so
  the steps without them cost exactly what they cost with the statistics off. teacher: knowledge distillation
  (training/distill.py)."""
  start = time.time()
  batch = abstract_batch(run)
  train_compiled = None
  if with_train:
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=run.partitioner.replicated())
    every = int(run.config.train.grad_stats_every)   # checked by validate_config
    teacher_args = () if teacher is None else (teacher.params,)
    kd = {} if teacher is None else {'teacher': teacher.model, 'distill': teacher.spec}
    options = StepOptions(run.model, run.optimizer, run.schedule, run.config.train.microbatches, **kd)
    compiled = []
    for stats in [None] + ([grad_stats_lib.GradStats(run.model)] if every else []):
      train_fn = make_train_step(dataclasses.replace(options, grad_stats=stats), run.partitioner, run.shardings)
      compiled.append(train_fn.lower(run.abstract, batch, rng, *teacher_args).compile())
    train_compiled = TrainStep(compiled[0], compiled[-1] if every else None, every,
                               teacher.params if teacher is not None else None, compile_finite_check(run.abstract))
  eval_fn = make_eval_step(run.model, run.partitioner, run.shardings.params)
  eval_compiled = eval_fn.lower(run.abstract.params, batch).compile()
  seconds = time.time() - start
  logging.info('compiled %s in %.1fs', 'train and eval steps' if with_train else 'the eval step', seconds)
  memory = train_compiled.plain.memory_analysis() if with_train else None
  if memory is not None:
    logging.info('train step memory: arguments %.1f MiB, outputs %.1f MiB, temporaries %.1f MiB',
                 memory.argument_size_in_bytes / 2**20, memory.output_size_in_bytes / 2**20,
                 memory.temp_size_in_bytes / 2**20)
  return train_compiled, eval_compiled, seconds


def shard_host_batch(run: Run, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Checks a host batch against the compiled shapes, then places it with the data sharding."""
  d = run.config.data
  expected = (d.batch_size // jax.process_count(), d.seq_len)
  for key in BATCH_DTYPES:
    if key not in batch or tuple(np.shape(batch[key])) != expected:
      shape = None if key not in batch else tuple(np.shape(batch[key]))
      raise ValueError(f'data batch feature {key!r} has shape {shape}, but the steps were compiled for '
                       f'{expected} (data.batch_size / processes, data.seq_len)')
  return run.partitioner.shard_batch({k: np.asarray(batch[k], BATCH_DTYPES[k]) for k in BATCH_DTYPES})


def average_interval(host: list[dict[str, Any]]) -> dict[str, Any]:
  """Mean over the interval's steps of every metric (elementwise for arrays); learning_rate of the last step."""
  out = {k: np.mean(np.stack([np.asarray(m[k], np.float64) for m in host]), axis=0) for k in host[0]}
  out['learning_rate'] = np.asarray(host[-1]['learning_rate'])
  return out


class MetricsBuffer:
  """Device metrics of the steps since the last log, fetched in one device_get one step after the log step."""

  def __init__(self, run: Run, writer: MetricsWriter, start_step: int):
    self.run, self.writer = run, writer
    self.pending: list[tuple[int, dict[str, jax.Array]]] = []
    self.ready: list[tuple[int, dict[str, jax.Array]]] = []
    self.grad_pending: list[tuple[int, dict[str, jax.Array]]] = []   # gradient statistics (one record per step)
    self.grad_ready: list[tuple[int, dict[str, jax.Array]]] = []
    self.clock, self.clock_step = time.time(), start_step
    self.step_flops = accounting.flops_per_step(run.config)['train']
    self.last: dict[str, Any] = {}

  def add(self, step: int, metrics: dict[str, jax.Array], log_now: bool) -> None:
    metrics, grad = grad_stats_lib.split_grad_metrics(metrics)
    self.pending.append((step, metrics))
    if grad:
      self.grad_pending.append((step, grad))
    if log_now:
      self.ready, self.pending = self.ready + self.pending, []
      self.grad_ready, self.grad_pending = self.grad_ready + self.grad_pending, []

  def pause(self, seconds: float) -> None:
    """Excludes time spent outside training steps (eval, checkpoints) from throughput."""
    self.clock += seconds

  def _check(self, steps: list[int], host: list[dict[str, Any]]) -> None:
    check_finite(steps, host, self.run.checkpointer.latest_step(), self.run.checkpointer.directory,
                 self.run.config.train)

  def check_finite(self) -> None:
    """Fetches the loss and gradient norm of every unlogged step (a sync; used before checkpoints)."""
    items = self.ready + self.pending
    self._check([s for s, _ in items], jax.device_get([{k: m[k] for k in FINITE_KEYS if k in m} for _, m in items]))

  def flush(self) -> None:
    """Writes the ready interval (blocks until its last step has finished)."""
    if not self.ready:
      return
    steps = [s for s, _ in self.ready]
    host = jax.device_get([m for _, m in self.ready])
    self.ready = []
    self._check(steps, host)
    now = time.time()
    seconds = max(now - self.clock, 1e-9)
    num_steps = steps[-1] - self.clock_step
    metrics = average_interval(host)
    metrics['perf/tokens_per_sec'] = sum(float(h['num_tokens']) for h in host) / seconds
    metrics['perf/steps_per_sec'] = num_steps / seconds
    metrics['perf/tflops_per_sec_per_device'] = self.step_flops * num_steps / seconds / 1e12 / jax.device_count()
    self.clock, self.clock_step = now, steps[-1]
    eta = (self.writer.total_steps - steps[-1]) * seconds / max(num_steps, 1)
    self.writer.write_train(steps[-1], metrics, eta_s=eta)
    self.last = dict(metrics, step=steps[-1])
    for step, grad in jax.device_get(self.grad_ready):
      self.writer.write_grad_stats(step, grad)
    self.grad_ready = []


def save_checkpoint(run: Run, step: int, state: state_lib.TrainState, data_iter: Any, buffer: MetricsBuffer,
                    state_finite: Any) -> None:
  """Checks every unlogged loss and gradient norm, and the state itself, are finite; then starts an (async) save
  of state + iterator position. state_finite: the compiled check (TrainStep.state_finite). The logged steps' records
  are written first, so a kill right after the save leaves no checkpointed step without its metrics line."""
  buffer.check_finite()
  buffer.flush()   # no extra wait: check_finite has already fetched these steps
  if not bool(state_finite(state)):   # the losses and gradient norms were finite: an update itself overflowed
    raise FloatingPointError(
        f'the train state after step {step} holds NaN or Inf values although every loss and gradient norm was '
        f'finite; it was not saved (the last checkpoint, step {run.checkpointer.latest_step()} in '
        f'{run.checkpointer.directory}, is kept). Lower train.learning_rate (now {run.config.train.learning_rate}).')
  start = time.time()
  if run.checkpointer.save(step, state, data_iter.get_state(), run.meta):
    logging.info('checkpoint of step %d started (%.2fs blocking)', step, time.time() - start)
  buffer.pause(time.time() - start)


def run_loop(run: Run, state: state_lib.TrainState, data_iter: Any, start_step: int, train_fn: Any,
             eval_fn: Any, eval_batches: list, writer: MetricsWriter,
             task_eval: PeriodicTaskEval | None = None) -> tuple[state_lib.TrainState, dict, dict]:
  """Steps start_step+1 .. train.steps with logging, validation and checkpoints; returns (state, last train
  metrics, last eval metrics)."""
  t = run.config.train
  # Made under jit, not device_put: a replicated array spans other processes' devices in multi-process runs.
  seed = int(run.meta['seed'])
  rng = jax.jit(lambda: jax.random.key(seed), out_shardings=run.partitioner.replicated())()
  buffer = MetricsBuffer(run, writer, start_step)
  last_eval: dict[str, float] = {}
  with StopSignal() as stop:
    for step in range(start_step + 1, t.steps + 1):
      batch = shard_host_batch(run, next(data_iter))
      state, metrics = train_fn(state, batch, rng, step)
      run.checkpointer.poll(step)      # a failed asynchronous save stops the run here (CheckpointSaveError)
      buffer.flush()                   # the previous log step's metrics, now that this step is queued
      buffer.add(step, metrics, log_now=step % t.log_every == 0 or step == t.steps)
      if (t.eval_every and step % t.eval_every == 0 and eval_batches) or step == t.steps:
        buffer.flush()
        start = time.time()
        if eval_batches:
          last_eval = validation_metrics(eval_fn, state.params, eval_batches)
          writer.write_eval(step, last_eval)
        buffer.pause(time.time() - start)
      if task_eval is not None and task_eval.due(step, t.steps):
        buffer.flush()
        start = time.time()
        task_eval(step, state.params, writer)
        buffer.pause(time.time() - start)
      if (t.checkpoint_every and step % t.checkpoint_every == 0) or step == t.steps or stop.requested:
        save_checkpoint(run, step, state, data_iter, buffer, train_fn.state_finite)
      if stop.requested:
        buffer.flush()
        run.checkpointer.wait()
        what, code = stop.requested
        raise cli.Stopped(f'stopped by {what} after step {step}; checkpoint saved, rerun to resume', code)
    buffer.flush()
  return state, buffer.last, last_eval


def final_metrics(run: Run, state: state_lib.TrainState, last_train: dict, last_eval: dict,
                  start_step: int, compile_s: float, train_s: float) -> dict[str, Any]:
  """The returned (and final_metrics.json) summary: last logged train metrics, last validation, timings."""
  out: dict[str, Any] = {'step': max(start_step, int(run.config.train.steps)), 'resumed_from_step': start_step,
                         'compile_seconds': compile_s, 'train_seconds': train_s}
  out.update({f'train/{k}': v for k, v in last_train.items() if k != 'step' and np.ndim(v) == 0})
  out.update(last_eval)
  mixing_fn = getattr(run.model, 'mixing_weights', None)
  mixing = mixing_fn(state.params) if mixing_fn else last_train.get('pool/mixing_weights')
  if mixing is not None:
    out['pool/mixing_weights'] = np.asarray(mixing)
  out = {k: to_json_value(v) if isinstance(v, (np.ndarray, np.generic, jax.Array)) else v for k, v in out.items()}
  if run.primary:
    with open(os.path.join(run.workdir, 'final_metrics.json'), 'w') as f:
      json.dump(out, f, indent=2)
  return out


def make_data(run: Run, data_state: dict[str, Any] | None) -> tuple[Any, list[dict[str, jax.Array]]]:
  """(training iterator at the restored position, validation batches placed on the mesh)."""
  d, shard = run.config.data, {'shard_index': jax.process_index(), 'num_shards': jax.process_count()}
  data_iter = pipeline.make_train_iterator(d, **shard, examples=task_finetune.train_rows(d))
  if data_state is not None:
    data_iter.set_state(data_state)
  num = run.config.train.eval_batches
  host = pipeline.make_eval_batches(d, num, **shard, examples=task_finetune.eval_rows(d)) if num else []
  eval_batches = [shard_host_batch(run, b) for b in host]
  return data_iter, eval_batches


def finished_run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
  """final_metrics.json of a run that already reached train.steps (left exactly as it is), else None."""
  path = os.path.join(workdir, 'final_metrics.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    final = json.load(f)
  if int(final.get('step', -1)) < int(config.train.steps):
    return None
  steps = Checkpointer.steps_on_disk(workdir)
  return final if steps and max(steps) >= int(config.train.steps) else None


def lock_workdir(workdir: str) -> workdir_lock.WorkdirLock | None:
  """Process 0 takes the workdir's lock (training/workdir_lock.py); every process of the job learns the outcome,
  so a refused job stops on all hosts. Raises WorkdirLockedError naming the owner."""
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = workdir_lock.acquire(workdir)
    except workdir_lock.WorkdirLockedError as err:
      error = err
  if jax.process_count() > 1:
    taken = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not taken and error is None:
      error = workdir_lock.WorkdirLockedError(f'--workdir={workdir} is in use by another job (process 0 could '
                                              'not take its lock; its log names the owner)')
  if error is not None:
    raise error
  return lock


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) in `workdir`; returns final metrics incl. 'eval/loss' and 'eval/perplexity'.

  A run that already finished (final_metrics.json and a checkpoint at >= train.steps) is left exactly as it is
  and its final metrics are returned with 'already_finished': True; raise train.steps to continue it. The workdir
  is locked for the call: a second job on it is refused, naming this one."""
  config = aliases.resolve(config)         # config.json is written with the moe subsections (config/aliases.py)
  check_before_writing(config, workdir)   # every check that needs no devices: nothing is written before
  lock = lock_workdir(workdir)
  try:
    return _train_locked(config, workdir)
  finally:
    if lock is not None:
      lock.release()


def _train_locked(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  run = build_run(config, workdir)        # mesh checks, then the newest intact checkpoint checked compatible
  done = finished_run(config, workdir)
  if done is not None:
    run.checkpointer.close()
    logging.info('%s already finished at step %s (final_metrics.json): nothing to do; raise train.steps to train '
                 'on', workdir, done.get('step'))
    return dict(done, already_finished=True)
  state, data_state, start_step = initial_state(run)
  data_iter, eval_batches = make_data(run, data_state)   # a changed corpus is refused here, before any write
  archive_stale_run_files(run)
  keep_changed_config(run, start_step)
  write_run_files(run)
  to_train = start_step < config.train.steps
  teacher = distill.load_teacher(config, run.partitioner) if to_train else None
  train_fn, eval_fn, compile_s = compile_steps(run, with_train=to_train, teacher=teacher)
  writer = MetricsWriter(workdir, config.train.steps)
  writer.write_text('config', '```\n' + config.to_json_best_effort(indent=2) + '\n```')
  start = time.time()
  last_train, last_eval = {}, {}
  try:
    if to_train:
      task_eval = PeriodicTaskEval(config, workdir, run.model, run.partitioner)
      state, last_train, last_eval = run_loop(run, state, data_iter, start_step, train_fn, eval_fn, eval_batches,
                                              writer, task_eval)
    else:   # stopped after the last checkpoint, before final_metrics.json: finish the run's bookkeeping only
      logging.info('the checkpoint is at step %d >= train.steps=%d: evaluating only', start_step, config.train.steps)
      logged = read_metrics(workdir, 'train')
      last_train = {k: v for k, v in logged[-1].items() if k not in ('kind', 'time')} if logged else {}
      evals = [r for r in read_metrics(workdir, 'eval') if r.get('step') == start_step]
      if evals:     # the final validation was written already: not appended twice
        last_eval = {k: v for k, v in evals[-1].items() if k.startswith('eval/')}
      elif eval_batches:
        last_eval = validation_metrics(eval_fn, state.params, eval_batches)
        writer.write_eval(start_step, last_eval)
  finally:
    try:
      data_iter.close()
      writer.close()
    finally:   # always: a pending save is waited for, hashed, or reported (naming its step) even on a full disk
      run.checkpointer.close()
  return final_metrics(run, state, last_train, last_eval, start_step, compile_s, time.time() - start)
