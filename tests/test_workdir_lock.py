"""One job per workdir (training/workdir_lock.py): a second job is refused naming the owner; a dead job's lock is
taken over with a warning. The lock's rules in-process, then real trainer processes started together, mid-run and
after a SIGKILL."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from config_files import write_tiny_config  # pylint: disable=g-bad-import-order  (tests/ helper)
from train_process import wait_for_steps  # pylint: disable=g-bad-import-order
from samoe_jax.training import workdir_lock
from samoe_jax.training.metrics_writer import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))


def _write_record(workdir: pathlib.Path, **record) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  now = time.time()
  full = {'host': socket.gethostname(), 'pid': os.getpid(), 'job_start': now, 'heartbeat': now,
          'command': 'python -m samoe_jax.train --workdir=x', **record}
  (workdir / workdir_lock.LOCK_FILE).write_text(json.dumps(full))


def _dead_pid() -> int:
  proc = subprocess.Popen(['true'])
  proc.wait()
  return proc.pid


def test_a_held_lock_refuses_a_second_taker_naming_the_owner_and_release_frees_it(tmp_path):
  lock = workdir_lock.acquire(str(tmp_path / 'run'), command='first job')
  record = json.loads((tmp_path / 'run' / workdir_lock.LOCK_FILE).read_text())
  assert record['pid'] == os.getpid() and record['host'] == socket.gethostname() and record['command'] == 'first job'
  with pytest.raises(workdir_lock.WorkdirLockedError,
                     match=rf'--workdir=.*run is in use by another job: pid {os.getpid()} on host '
                           rf'{socket.gethostname()}, started .* UTC, heartbeat \d+ s ago \(first job\)'):
    workdir_lock.acquire(str(tmp_path / 'run'))
  lock.release()
  assert not (tmp_path / 'run' / workdir_lock.LOCK_FILE).exists()
  workdir_lock.acquire(str(tmp_path / 'run')).release()


def test_stale_locks_are_taken_over_with_a_warning_and_live_ones_refused(tmp_path, caplog):
  caplog.set_level(logging.WARNING)
  # Same host, the owner's pid no longer runs (a SIGKILLed trainer).
  _write_record(tmp_path / 'dead', pid=_dead_pid())
  workdir_lock.acquire(str(tmp_path / 'dead')).release()
  assert any('taking over the lock' in r.getMessage() and 'no longer runs on this host' in r.getMessage()
             for r in caplog.records)
  # Another host (a shared filesystem where flock is not shared): a fresh heartbeat owns it, an old one is gone.
  _write_record(tmp_path / 'other', host='tpu-vm-7', pid=1234)
  with pytest.raises(workdir_lock.WorkdirLockedError, match='pid 1234 on host tpu-vm-7'):
    workdir_lock.acquire(str(tmp_path / 'other'))
  _write_record(tmp_path / 'old', host='tpu-vm-7', pid=1234, heartbeat=time.time() - 2 * workdir_lock.STALE_AFTER_S)
  caplog.clear()
  workdir_lock.acquire(str(tmp_path / 'old')).release()
  assert any('heartbeat is' in r.getMessage() and 's old' in r.getMessage() for r in caplog.records)
  # Same host, a live process that is not holding the flock (a filesystem without flock): trusted, refused.
  sleeper = subprocess.Popen(['sleep', '60'])
  try:
    _write_record(tmp_path / 'live', pid=sleeper.pid,
                  process_start=workdir_lock._process_start(sleeper.pid))   # pylint: disable=protected-access
    with pytest.raises(workdir_lock.WorkdirLockedError, match=f'pid {sleeper.pid}'):
      workdir_lock.acquire(str(tmp_path / 'live'))
    # ... but a record whose pid was reused by another process (start time differs) is stale.
    _write_record(tmp_path / 'reused', pid=sleeper.pid, process_start='1')
    workdir_lock.acquire(str(tmp_path / 'reused')).release()
  finally:
    sleeper.kill()
    sleeper.wait()


def _train(config_file, workdir, *extra) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, '-m', 'samoe_jax.train', f'--config={config_file}',
                           f'--workdir={workdir}', *extra], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


def test_two_trainers_on_one_workdir_one_refused_and_a_killed_owner_is_taken_over(tmp_path):
  config_file = write_tiny_config(tmp_path / 'long.py', {
      'train.steps': 100000, 'train.decay_steps': 100000, 'train.log_every': 1, 'train.eval_every': 0,
      'train.checkpoint_every': 10})
  workdir = tmp_path / 'run'
  first, second = _train(config_file, workdir), _train(config_file, workdir)   # started together
  deadline = time.time() + 240
  while first.poll() is None and second.poll() is None and time.time() < deadline:
    time.sleep(0.1)
  loser, owner = (first, second) if first.poll() is not None else (second, first)
  stderr = loser.communicate(timeout=60)[1]
  assert loser.returncode == 1, stderr[-3000:]
  assert stderr.strip().splitlines()[-1].startswith('samoe_jax.train: error: --workdir=')
  assert f'is in use by another job: pid {owner.pid} on host {socket.gethostname()}' in stderr
  assert 'Traceback' not in stderr
  try:
    # One started mid-run is refused the same way, and writes nothing.
    wait_for_steps(workdir, owner, 12)
    late = _train(config_file, workdir)
    stderr = late.communicate(timeout=240)[1]
    assert late.returncode == 1 and f'pid {owner.pid}' in stderr, stderr[-3000:]
    assert not list(workdir.glob('stale_*')) and not (workdir / 'checkpoints_damaged').exists()
  finally:
    owner.send_signal(signal.SIGKILL)   # leaves its lock file behind
    owner.wait(timeout=60)
  assert json.loads((workdir / workdir_lock.LOCK_FILE).read_text())['pid'] == owner.pid
  saved = max(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  rerun = subprocess.run([sys.executable, '-m', 'samoe_jax.train', f'--config={config_file}', f'--workdir={workdir}',
                          f'--config.train.steps={saved + 2}'], cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=300, check=False)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert 'taking over the lock' in rerun.stderr and f'process {owner.pid} no longer runs' in rerun.stderr
  assert f'resumed from checkpoint step {saved}' in rerun.stderr
  assert not (workdir / workdir_lock.LOCK_FILE).exists()
  steps = [r['step'] for r in read_metrics(str(workdir), 'train')]
  # Each step once (the killed owner's records past its checkpoint are superseded by the rerun's, read_metrics).
  assert steps == sorted(set(steps)) and set(range(1, saved + 3)) <= set(steps)
