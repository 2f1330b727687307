"""A full disk (RLIMIT_FSIZE: files over 40 kB cannot be written) while a real training process saves: one line
naming the step whose save failed, no traceback, no temporary file, no training past the failed save, the
earlier checkpoints intact, and a rerun without the limit resumes and finishes.

One workdir through: 2 steps (checkpoints 1 and 2, every step saved); a synchronous save of step 3 that fails; an
asynchronous save of step 3 that fails in the background while training goes on; a rerun to the end. (The final
save failing at shutdown and a checksum file that cannot be written: tests/test_checkpoint_hashing.py.)
"""

from __future__ import annotations

import pytest

# pylint: disable=g-bad-import-order  (tests/ helpers)
from config_files import write_tiny_config
from train_process import assert_save_failed, environment, run, temporaries, train_command
from samoe_jax.checkpointing import integrity

STEPS = 6
OVERRIDES = {'train.steps': STEPS, 'train.decay_steps': STEPS, 'train.warmup_steps': 2, 'train.log_every': 1,
             'train.eval_every': 4, 'train.eval_batches': 1, 'train.checkpoint_every': 1,
             'train.keep_checkpoints': 10, 'train.async_checkpoint': True}
FULL = 40_000   # bytes: the largest file a run under this limit can write (a state file is 200-400 kB)


@pytest.fixture(scope='module')
def two_steps(tmp_path_factory):
  base = tmp_path_factory.mktemp('disk_full')
  env = environment(base / 'jax_cache')
  command = train_command(write_tiny_config(base / 'tiny.py', OVERRIDES), base / 'run')
  first = run(command + ['--config.train.steps=2'], env)
  assert first.returncode == 0, first.stderr[-3000:]
  return base / 'run', command, env


def test_failed_saves_name_their_step_and_the_rerun_finishes(two_steps):
  workdir, command, env = two_steps
  assert integrity.problems(str(workdir / 'checkpoints' / '2')) == []

  sync = run(command + ['--config.train.async_checkpoint=False'], env, file_size_limit=FULL)
  assert 'resumed from checkpoint step 2' in sync.stderr
  assert 'File too large, errno 27' in assert_save_failed(sync, workdir, 3, kept=[1, 2])
  assert f'step 4/{STEPS}' not in sync.stderr

  background = run(command, env, file_size_limit=FULL)
  assert 'resumed from checkpoint step 2' in background.stderr
  assert_save_failed(background, workdir, 3, kept=[1, 2])
  # Found at the first step boundary after it failed, at the latest before the next save starts: no later
  # checkpoint is started and no step after that.
  assert 'checkpoint of step 4 started' not in background.stderr
  assert f'step 5/{STEPS}' not in background.stderr

  done = run(command, env)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'resumed from checkpoint step 2' in done.stderr
  assert not temporaries(workdir)
  for step in range(1, STEPS + 1):
    assert integrity.problems(str(workdir / 'checkpoints' / str(step))) == [], step
