"""Two training processes on this machine (2 CPU devices each, coordinator on localhost) equal one process with
4 devices: each process reads only its shard of the data and builds the global batch from its local rows."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from config_files import write_tiny_config  # pylint: disable=g-bad-import-order  (tests/ helper)
from samoe_jax.training import distributed
from samoe_jax.training.metrics_writer import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = {'train.steps': 4, 'train.log_every': 1, 'train.eval_every': 2, 'train.checkpoint_every': 2,
             'data.batch_size': 8}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
  return dict(os.environ, JAX_PLATFORMS='cpu',
              XLA_FLAGS=os.environ.get('XLA_FLAGS', '') + f' --xla_force_host_platform_device_count={devices}',
              PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))


def test_two_processes_train_like_one(tmp_path):
  config_file = write_tiny_config(tmp_path / 'tiny.py', OVERRIDES)
  base = [sys.executable, '-m', 'samoe_jax.train', f'--config={config_file}']
  single = subprocess.run(base + [f'--workdir={tmp_path / "single"}'], cwd=ROOT, env=_env(4), capture_output=True,
                          text=True, timeout=300, check=False)
  assert single.returncode == 0, single.stderr[-3000:]

  port = _free_port()
  workdir = tmp_path / 'multi'
  procs = [subprocess.Popen(base + [f'--workdir={workdir}', f'--coordinator_address=localhost:{port}',
                                    '--num_processes=2', f'--process_id={i}'],
                            cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  assert 'process 0 of 2, 2 local of 4 devices' in outputs[0][1]
  assert 'process 1 of 2, 2 local of 4 devices' in outputs[1][1]

  one = read_metrics(str(tmp_path / 'single'), 'train')
  two = read_metrics(str(workdir), 'train')
  assert [r['step'] for r in two] == [1, 2, 3, 4]
  for a, b in zip(one, two):
    assert b['loss'] == pytest.approx(a['loss'], rel=1e-5)
    assert b['num_tokens'] == a['num_tokens']
  eval_one, eval_two = read_metrics(str(tmp_path / 'single'), 'eval'), read_metrics(str(workdir), 'eval')
  assert eval_two[-1]['eval/loss'] == pytest.approx(eval_one[-1]['eval/loss'], rel=1e-5)
  # Only process 0 wrote the logs and the report; both took part in the checkpoints.
  assert (workdir / 'report.md').exists()
  assert len((workdir / 'metrics.jsonl').read_text().splitlines()) == len(
      (tmp_path / 'single' / 'metrics.jsonl').read_text().splitlines())
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps[-1] == 4
  assert json.loads((workdir / 'final_metrics.json').read_text())['step'] == 4


def test_explicit_process_layout_is_validated():
  with pytest.raises(ValueError, match=r"num_processes >= 2 \(got 2\) and 0 <= process_id < num_processes \(got 5\)"):
    distributed.initialize('localhost:1234', 2, 5)
  with pytest.raises(ValueError, match=r"coordinator_address \(got ''\)"):
    distributed.initialize('', 3, 0)
  assert distributed.initialize() is False   # a single-process run does nothing


def test_scheduler_hints(monkeypatch):
  for name in ('TPU_WORKER_HOSTNAMES', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    monkeypatch.delenv(name, raising=False)
  assert not distributed.detected_multi_process()
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'w-0')
  assert not distributed.detected_multi_process()       # a single-host TPU VM
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'w-0,w-1')
  assert distributed.detected_multi_process()
