"""A training process killed at any moment, or whose checkpoint save fails, resumes to the same bits.

One uninterrupted command-line run is the reference. Then: SIGKILL during a step, SIGKILL right after an
asynchronous save started, and a save that fails because the file-size limit (RLIMIT_FSIZE, what a full disk
looks like to the writer) is hit; each is rerun to the end and must reproduce the reference's parameters,
optimizer state and training metrics exactly.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np
import orbax.checkpoint as ocp
import pytest

from config_files import write_tiny_config  # pylint: disable=g-bad-import-order  (tests/ helpers)
from train_process import environment, kill_when, run as run_command, train_command
from samoe_jax.checkpointing import integrity
from samoe_jax.training.metrics_writer import read_metrics

STEPS = 8
OVERRIDES = {'train.steps': STEPS, 'train.decay_steps': STEPS, 'train.warmup_steps': 2, 'train.log_every': 1,
             'train.eval_every': 4, 'train.eval_batches': 1, 'train.checkpoint_every': 2,
             'train.keep_checkpoints': 4, 'train.async_checkpoint': True, 'model.dropout_rate': 0.1}
ENV = environment()
METRICS = ('loss', 'cross_entropy', 'aux_loss', 'grad_norm', 'learning_rate')


def _state(workdir: pathlib.Path, step: int) -> dict:
  with ocp.PyTreeCheckpointer() as checkpointer:
    return checkpointer.restore(str(workdir / 'checkpoints' / str(step) / 'state'))


def _assert_same_run(run: pathlib.Path, reference: pathlib.Path) -> None:
  got, want = read_metrics(str(run), 'train'), read_metrics(str(reference), 'train')
  assert [r['step'] for r in got] == [r['step'] for r in want] == list(range(1, STEPS + 1))
  for a, b in zip(got, want):
    for key in METRICS:
      assert a[key] == b[key], f'{key} at step {a["step"]}: {a[key]} != {b[key]}'
  leaves_got = _flat(_state(run, STEPS))
  leaves_want = _flat(_state(reference, STEPS))
  assert leaves_got.keys() == leaves_want.keys()
  for path, value in leaves_want.items():
    np.testing.assert_array_equal(leaves_got[path], value, err_msg=path)


def _flat(tree, prefix=''):
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flat(value, f'{prefix}/{key}'))
    return out
  if isinstance(tree, (list, tuple)):
    out = {}
    for i, value in enumerate(tree):
      out.update(_flat(value, f'{prefix}[{i}]'))
    return out
  return {prefix: np.asarray(tree)}


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """The uninterrupted run; it also fills a compilation cache that the later processes load from."""
  base = tmp_path_factory.mktemp('kill')
  config_file = write_tiny_config(base / 'tiny.py', OVERRIDES)
  workdir = base / 'reference'
  ENV.update(environment(base / 'jax_cache'))
  done = run_command(train_command(config_file, workdir), ENV)
  assert done.returncode == 0, done.stderr[-3000:]
  return config_file, workdir


def test_killed_and_failed_runs_resume_bitwise(reference, tmp_path):
  """One workdir through: 2 steps; a rerun whose checkpoint save fails (files over 40 kB cannot be written, as on
  a full disk); SIGKILL during a step; SIGKILL right after an asynchronous save started; a rerun to the end.
  The tiny steps outrun the asynchronous saves, so which checkpoint each stage resumes from is read, not fixed."""
  config_file, reference_dir = reference
  workdir = tmp_path / 'run'
  command = train_command(config_file, workdir)
  first = run_command(command + ['--config.train.steps=2'], ENV)
  assert first.returncode == 0, first.stderr[-3000:]
  failed = run_command(command, ENV, file_size_limit=40_000)
  assert failed.returncode == 1, failed.stderr[-3000:]
  assert 'Traceback' not in failed.stderr, failed.stderr[-5000:]
  resumed = re.search(r'resumed from checkpoint step (\d+)', failed.stderr)
  start = int(resumed.group(1)) if resumed else 0
  intact = list(range(2, start + 1, 2))
  assert f'saving the checkpoint of step {start + 2} in {workdir / "checkpoints"} failed' in failed.stderr
  assert 'free on that disk' in failed.stderr
  assert f'Intact earlier checkpoints: steps {intact or "none"}' in failed.stderr
  assert len(failed.stderr.splitlines()) < 100
  for step in intact:
    assert integrity.problems(str(workdir / 'checkpoints' / str(step))) == []
  assert not integrity.leftover_temporaries(str(workdir / 'checkpoints'))   # the failed save's folder, removed

  kill_when(command, ENV, f'step 3/{STEPS}')                 # during a step
  kill_when(command, ENV, 'checkpoint of step ')              # right after an asynchronous save started
  done = run_command(command, ENV)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'resumed from checkpoint step' in done.stderr
  assert not integrity.leftover_temporaries(str(workdir / 'checkpoints'))
  _assert_same_run(workdir, reference_dir)
