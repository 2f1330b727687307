"""Preemption: SIGTERM during training saves a checkpoint and exits cleanly; the next start resumes from it."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

from config_files import write_tiny_config  # pylint: disable=g-bad-import-order  (tests/ helper)
from samoe_jax.training.metrics_writer import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = {'train.steps': 100000, 'train.decay_steps': 100000, 'train.log_every': 1, 'train.eval_every': 0,
             'train.checkpoint_every': 50000}


def _command(config_file, workdir, *extra):
  return [sys.executable, '-m', 'samoe_jax.train', f'--config={config_file}', f'--workdir={workdir}', *extra]


def test_sigterm_saves_a_checkpoint_exits_and_the_next_start_resumes(tmp_path):
  config_file = write_tiny_config(tmp_path / 'long.py', OVERRIDES)
  workdir = tmp_path / 'run'
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  proc = subprocess.Popen(_command(config_file, workdir), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:   # wait until it is training (a few logged steps)
    if (workdir / 'metrics.jsonl').exists() and len(read_metrics(str(workdir), 'train')) >= 3:
      break
    time.sleep(0.5)
  assert proc.poll() is None, proc.stderr.read()[-3000:]
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode != 0 and 'Traceback' not in stderr
  assert 'stopped by SIGTERM after step' in stderr
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert len(steps) == 1 and steps[0] >= 3   # only the preemption checkpoint (the periodic one is at 50000)
  stopped_at = steps[0]

  done = subprocess.run(_command(config_file, workdir, f'--config.train.steps={stopped_at + 2}',
                                 '--config.train.decay_steps=100000'),
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f'resumed from checkpoint step {stopped_at}' in done.stderr
  records = read_metrics(str(workdir), 'train')
  assert records[-1]['step'] == stopped_at + 2
