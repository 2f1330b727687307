"""Checksums follow each save of a real training process closely, and the saves that fail late (the final one,
found at shutdown; a checksum file that cannot be written) end with one line naming their step.

One workdir through, asynchronous saves every step:
1. SIGKILL as soon as the log shows that the save of step 5 started: every earlier checkpoint already has
   checksums that verify (the hashing runs in the background as each save commits; the next save waits for it),
   so at most the newest checkpoint lacks them.
2. A rerun to one step past the newest checksummed checkpoint R, on a full disk (RLIMIT_FSIZE): the final save
   fails in the background and is found when the checkpointer closes.
3. A rerun whose checksum files cannot be written (their sync fails with ENOSPC): the save of step R+1 commits,
   its checksums fail, the run stops naming step R+1 and leaves no samoe_checksums.json.tmp.
4. A rerun without faults: checkpoint R+1 has no checksums, so it is set aside (never trusted silently) and the
   run resumes from R, which verifies, and finishes.
"""

from __future__ import annotations

import glob
import os

# pylint: disable=g-bad-import-order  (tests/ helpers)
from config_files import write_tiny_config
from train_process import (assert_save_failed, checksummed_steps, environment, kill_when, run, temporaries,
                           train_command)
from samoe_jax.checkpointing import integrity

STEPS = 8
OVERRIDES = {'train.steps': STEPS, 'train.decay_steps': STEPS, 'train.warmup_steps': 2, 'train.log_every': 1,
             'train.eval_every': 4, 'train.eval_batches': 1, 'train.checkpoint_every': 1,
             'train.keep_checkpoints': 10, 'train.async_checkpoint': True}


def test_checksums_follow_each_save_and_late_failures_name_their_step(tmp_path):
  env = environment(tmp_path / 'jax_cache')
  workdir = tmp_path / 'run'
  config_file = write_tiny_config(tmp_path / 'tiny.py', OVERRIDES)
  command = train_command(config_file, workdir)

  kill_when(command, env, 'checkpoint of step 5 started')
  on_disk = sorted(int(n) for n in os.listdir(workdir / 'checkpoints') if n.isdigit())
  assert [s for s in on_disk if s < 5] == [1, 2, 3, 4]
  for step in (1, 2, 3, 4):
    assert integrity.problems(str(workdir / 'checkpoints' / str(step))) == [], step
  assert set(on_disk) - set(checksummed_steps(workdir)) <= {max(on_disk)}

  hashed = checksummed_steps(workdir)
  newest = hashed[-1]
  at_close = run(command + [f'--config.train.steps={newest + 1}'], env, file_size_limit=40_000)
  assert f'resumed from checkpoint step {newest}' in at_close.stderr
  assert_save_failed(at_close, workdir, newest + 1, kept=hashed)

  no_checksums = run(train_command(config_file, workdir, checksums_disk_full=True), env)
  assert 'while writing its checksums (No space left on device, errno 28' in assert_save_failed(
      no_checksums, workdir, newest + 1, kept=hashed)
  assert not integrity.has_checksums(str(workdir / 'checkpoints' / str(newest + 1)))

  done = run(command, env)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f'checkpoint step {newest + 1} in {workdir / "checkpoints"} has no checksums' in done.stderr
  assert f'resumed from checkpoint step {newest} ' in done.stderr
  moved = glob.glob(str(workdir / integrity.DAMAGED_DIR / f'{newest + 1}_*'))
  assert len(moved) == 1 and 'no samoe_checksums.json' in open(os.path.join(moved[0], 'reason.txt')).read()
  assert not temporaries(workdir)
  assert checksummed_steps(workdir) == list(range(1, STEPS + 1))
  for step in range(1, STEPS + 1):
    assert integrity.problems(str(workdir / 'checkpoints' / str(step))) == [], step
