"""Training the runs of a suite, one after the other in this process, each an ordinary workdir OUT/runs/NAME_seedS.

A run whose workdir holds final_metrics.json at train.steps and a checkpoint of that step is skipped; any other run
trains, resuming from its own latest checkpoint when it has one (the trainer's exact resume), so an interrupted
suite is continued by running the same command again. Progress: which run, its estimated time and the suite's,
from the measured rate of the runs already finished (model FLOPs per second), then the trainer's own step lines.
Every finished run is appended to OUT/suite_log.jsonl (run, seconds, when), which the report's wall time sums.
Compiled steps are cached on disk (OUT/jax_cache): the seeds of a config compile once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Any, Iterator, Sequence

import jax
import ml_collections
from absl import logging

from samoe_jax.analysis import provenance, run_report
from samoe_jax.experiments.suites import ConfigSpec, Suite, run_name
from samoe_jax.models import accounting
from samoe_jax.training import loop
from samoe_jax.training.metrics_writer import format_duration

LOG = 'suite_log.jsonl'


@dataclasses.dataclass(frozen=True)
class Run:
  """One (config, seed) of a suite: its spec, seed, workdir and full config."""
  spec: ConfigSpec
  seed: int
  workdir: str
  config: ml_collections.ConfigDict

  @property
  def name(self) -> str:
    return os.path.basename(self.workdir)

  def train_flops(self) -> float:
    """Model FLOPs of the whole run (samoe_jax.models.accounting)."""
    return accounting.flops_per_step(self.config)['train'] * self.config.train.steps


def plan(suite: Suite, out_dir: str, corpus_dir: str = '', seeds: int | None = None, steps: int | None = None,
         only: Sequence[str] = ()) -> list[Run]:
  """Every run of `suite` (the configs in `only` when given), seed-major so that each config gets a first seed
  early (and a time estimate for its other seeds)."""
  specs = [suite.spec(name) for name in only] if only else list(suite.configs)
  cache_dir = os.path.join(out_dir, 'cache') if suite.needs_corpus else ''
  runs = []
  for seed in range(seeds or suite.seeds):
    for spec in specs:
      workdir = os.path.join(out_dir, 'runs', run_name(spec, seed))
      runs.append(Run(spec, seed, workdir, suite.config(spec, seed, corpus_dir, cache_dir, steps)))
  return runs


def is_finished(run: Run) -> bool:
  """final_metrics.json at train.steps and a checkpoint of that step in the workdir."""
  path = os.path.join(run.workdir, 'final_metrics.json')
  if not os.path.isfile(path):
    return False
  with open(path) as f:
    final = json.load(f)
  steps = run.config.train.steps
  return final.get('step') == steps and os.path.isdir(os.path.join(run.workdir, 'checkpoints', str(steps)))


def read_log(out_dir: str) -> list[dict[str, Any]]:
  """The suite log's records (one per finished training session of a run), in order."""
  path = os.path.join(out_dir, LOG)
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _append_log(out_dir: str, record: dict[str, Any]) -> None:
  with open(os.path.join(out_dir, LOG), 'a') as f:
    f.write(json.dumps(record, sort_keys=True) + '\n')


class Estimator:
  """Seconds a run will take: another seed of the same config if one finished, else its model FLOPs at the
  FLOP rate of the finished runs; None before any run finished."""

  def __init__(self, log: list[dict[str, Any]]):
    self.by_config: dict[str, float] = {}
    self.flops = self.seconds = 0.0
    for record in log:
      self.add(record)

  def add(self, record: dict[str, Any]) -> None:
    if record.get('status') != 'finished' or not record.get('complete'):
      return
    self.by_config.setdefault(record['config'], record['seconds'])
    self.flops += record['train_flops']
    self.seconds += record['seconds']

  def seconds_for(self, run: Run) -> float | None:
    if run.spec.name in self.by_config:
      return self.by_config[run.spec.name]
    if self.seconds <= 0:
      return None
    return run.train_flops() / (self.flops / self.seconds)


def _eta(seconds: float | None) -> str:
  return 'unknown until a run has finished' if seconds is None else format_duration(seconds)


def train_runs(runs: Sequence[Run], out_dir: str) -> list[Run]:
  """Trains every unfinished run (resuming interrupted ones); returns the runs trained now."""
  os.makedirs(out_dir, exist_ok=True)
  estimator = Estimator(read_log(out_dir))
  todo = [r for r in runs if not is_finished(r)]
  logging.info('suite: %d runs, %d finished, %d to train', len(runs), len(runs) - len(todo), len(todo))
  trained = []
  with compilation_cache(os.path.join(out_dir, 'jax_cache')):
    for i, run in enumerate(todo):
      _train_one(run, i, todo, out_dir, estimator)
      trained.append(run)
  return trained


def _train_one(run: Run, i: int, todo: Sequence[Run], out_dir: str, estimator: Estimator) -> None:
  """Trains run i of `todo` (resuming its checkpoint), writes its report and logs it."""
  estimates = [estimator.seconds_for(r) for r in todo[i:]]
  suite_eta = None if any(e is None for e in estimates) else sum(estimates)
  logging.info('suite: run %d/%d %s (%s, seed %d): estimated %s; suite ETA %s', i + 1, len(todo), run.name,
               run.spec.label, run.seed, _eta(estimates[0]), _eta(suite_eta))
  start = time.time()
  resumed = os.path.isdir(os.path.join(run.workdir, 'checkpoints'))
  final = loop.train(run.config, run.workdir)
  run_report.write_report(run.workdir)
  seconds = time.time() - start
  record = {'run': run.name, 'config': run.spec.name, 'seed': run.seed, 'status': 'finished',
            'complete': not resumed, 'seconds': seconds, 'train_flops': run.train_flops(),
            'finished_at': time.strftime('%Y-%m-%dT%H:%M:%S'), 'eval/perplexity': final.get('eval/perplexity'),
            'commit': provenance.commit()}
  _append_log(out_dir, record)
  estimator.add(record)
  logging.info('suite: %s done in %s (validation perplexity %.2f)', run.name, format_duration(seconds),
               final.get('eval/perplexity', float('nan')))


@contextlib.contextmanager
def compilation_cache(path: str) -> Iterator[None]:
  """jax's persistent compilation cache in `path` while the suite trains (runs that differ only in their seed
  compile once); the previous settings are restored afterwards."""
  from jax._src import compilation_cache as cache_lib  # pylint: disable=g-import-not-at-top
  options = {'jax_compilation_cache_dir': path, 'jax_persistent_cache_min_compile_time_secs': 0.5}
  saved = {k: getattr(jax.config, k) for k in options}
  for key, value in options.items():
    jax.config.update(key, value)
  cache_lib.reset_cache()
  try:
    yield
  finally:
    for key, value in saved.items():
      jax.config.update(key, value)
    cache_lib.reset_cache()


def suite_wall_seconds(out_dir: str) -> float:
  """Training wall time of the suite: the sum over the log's sessions."""
  return sum(r.get('seconds', 0.0) for r in read_log(out_dir))
