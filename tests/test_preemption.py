"""Stopping a training process: SIGTERM (a preempted VM) and a first Ctrl-C save a checkpoint at the next step
boundary and end with one line (exit codes 143 and 130); the next start resumes to the same bits as a run that was
never stopped. A second Ctrl-C stops at once, with one line and no traceback."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp

from config_files import write_tiny_config  # pylint: disable=g-bad-import-order  (tests/ helper)
from train_process import wait_for_steps  # pylint: disable=g-bad-import-order
from samoe_jax.training.metrics_writer import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = {'train.steps': 100000, 'train.decay_steps': 100000, 'train.log_every': 1, 'train.eval_every': 0,
             'train.checkpoint_every': 50000, 'model.dropout_rate': 0.1}
ENV = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))


def _start(config_file, workdir, *extra) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, '-m', 'samoe_jax.train', f'--config={config_file}', f'--workdir={workdir}',
                           *extra], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _checkpoints(workdir: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())


def _leaves(workdir: pathlib.Path, step: int) -> list[np.ndarray]:
  import jax  # pylint: disable=g-import-not-at-top
  with ocp.PyTreeCheckpointer() as checkpointer:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(
        checkpointer.restore(str(workdir / 'checkpoints' / str(step) / 'state')))]


def _one_error_line(stderr: str, prefix: str) -> None:
  errors = [line for line in stderr.splitlines() if ': error: ' in line]
  assert len(errors) == 1 and errors[0].startswith(prefix), stderr[-3000:]
  assert 'Traceback' not in stderr


def test_ctrl_c_saves_stops_with_130_and_resumes_bitwise(tmp_path):
  config_file = write_tiny_config(tmp_path / 'long.py', OVERRIDES)
  stopped_dir, reference_dir = tmp_path / 'stopped', tmp_path / 'reference'
  proc = _start(config_file, stopped_dir)
  wait_for_steps(stopped_dir, proc)
  proc.send_signal(signal.SIGINT)
  stderr = proc.communicate(timeout=120)[1]
  assert proc.returncode == 130, stderr[-3000:]
  _one_error_line(stderr, 'samoe_jax.train: error: stopped by Ctrl-C after step ')
  (stopped_at,) = _checkpoints(stopped_dir)   # only the Ctrl-C checkpoint (the periodic one is at 50000)
  assert stopped_at >= 3 and f'stopped by Ctrl-C after step {stopped_at}; checkpoint saved' in stderr

  final = stopped_at + 3   # the resumed run and a reference that was never stopped (run side by side) end here
  reference = _start(config_file, reference_dir, f'--config.train.steps={final}')
  resumed = _start(config_file, stopped_dir, f'--config.train.steps={final}')
  stderr = resumed.communicate(timeout=300)[1]
  assert resumed.returncode == 0, stderr[-3000:]
  assert f'resumed from checkpoint step {stopped_at}' in stderr
  # The changed train.steps is logged, and the previous config.json is kept, not overwritten.
  assert f'train.steps: 100000 -> {final}' in stderr
  kept = json.loads((stopped_dir / f'config_until_step_{stopped_at}.json').read_text())
  assert kept['train']['steps'] == 100000
  assert json.loads((stopped_dir / 'config.json').read_text())['train']['steps'] == final
  assert reference.wait(timeout=300) == 0, reference.stderr.read()[-3000:]
  got, want = read_metrics(str(stopped_dir), 'train'), read_metrics(str(reference_dir), 'train')
  assert [r['step'] for r in got] == [r['step'] for r in want] == list(range(1, final + 1))
  assert all(a['loss'] == b['loss'] and a['grad_norm'] == b['grad_norm'] for a, b in zip(got, want))
  for a, b in zip(_leaves(stopped_dir, final), _leaves(reference_dir, final)):
    np.testing.assert_array_equal(a, b)


def test_sigterm_saves_with_143_and_a_second_ctrl_c_stops_at_once(tmp_path):
  config_file = write_tiny_config(tmp_path / 'long.py', OVERRIDES)
  term_dir, twice_dir = tmp_path / 'term', tmp_path / 'twice'
  term, twice = _start(config_file, term_dir), _start(config_file, twice_dir)
  wait_for_steps(term_dir, term)
  term.send_signal(signal.SIGTERM)
  wait_for_steps(twice_dir, twice)
  twice.send_signal(signal.SIGINT)
  twice.send_signal(signal.SIGINT)
  stderr = term.communicate(timeout=120)[1]
  assert term.returncode == 143, stderr[-3000:]
  _one_error_line(stderr, 'samoe_jax.train: error: stopped by SIGTERM after step ')
  (stopped_at,) = _checkpoints(term_dir)
  assert stopped_at >= 3 and f'after step {stopped_at}; checkpoint saved, rerun to resume' in stderr
  stderr = twice.communicate(timeout=120)[1]
  assert twice.returncode == 130, stderr[-3000:]
  # The two signals may land in one step (stop at once) or the first may already be saving (then the second
  # ends the run at once too): either way one line, no traceback, and the workdir resumes like after a kill.
  _one_error_line(stderr, 'samoe_jax.train: error: ')
  assert 'interrupted again (Ctrl-C): stopped at once without saving' in stderr or 'stopped by Ctrl-C' in stderr
