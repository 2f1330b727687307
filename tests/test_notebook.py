"""The Colab quick-start notebook runs top to bottom on CPU (nbclient, a real kernel) with a reduced step count."""

from __future__ import annotations

import json
import os

import nbclient
import nbformat
import pytest

from launch.colab import make_notebook

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 30


def test_notebook_file_matches_its_generator():
  on_disk = nbformat.read(make_notebook.NOTEBOOK, as_version=4)
  built = make_notebook.build()
  assert [(c.cell_type, c.source) for c in on_disk.cells] == [(c.cell_type, c.source) for c in built.cells], (
      'launch/colab/samoe_quickstart.ipynb is stale: run python launch/colab/make_notebook.py')
  assert all(not c.get('outputs') for c in on_disk.cells if c.cell_type == 'code'), 'commit the notebook unexecuted'


@pytest.fixture(scope='module')
def executed(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('colab') / 'run'
  env = {'SAMOE_NOTEBOOK_STEPS': str(STEPS), 'SAMOE_NOTEBOOK_TASK': 'shakespeare_tiny',
         'SAMOE_NOTEBOOK_WORKDIR': str(workdir), 'JAX_PLATFORMS': 'cpu'}
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)   # the kernel process inherits the environment
  try:
    nb = nbformat.read(make_notebook.NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': REPO}}).execute()
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  return nb, workdir


def _text(cell) -> str:
  return ''.join(o.get('text', '') for o in cell.get('outputs', []) if o.get('output_type') == 'stream')


def test_notebook_reports_devices_and_trains(executed):
  nb, workdir = executed
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert 'backend: cpu' in _text(code[1]) and 'cpu:0' in _text(code[1])
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f if line.strip()]
  train = [r for r in records if r.get('kind', 'train') == 'train']
  assert train[-1]['step'] == STEPS
  assert train[-1]['cross_entropy'] < train[0]['cross_entropy'] - 0.5   # starts near ln(8192) = 9.0
  assert f'after step {STEPS}' in _text(code[4])
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', str(STEPS)))


def test_notebook_plots_loss_and_mixing_weights(executed):
  nb, _ = executed
  code = [c for c in nb.cells if c.cell_type == 'code']
  loss_cell, mixing_cell = code[5], code[6]
  for cell in (loss_cell, mixing_cell):
    assert any('image/png' in o.get('data', {}) for o in cell.outputs), cell.source[:60]
  printed = _text(mixing_cell).split('\n', 1)[1]
  rows = [[float(v) for v in line.strip(' []').split()] for line in printed.strip().splitlines()]
  assert len(rows) == 2 and all(len(r) == 2 for r in rows)          # 2 MoE layers x pool of 2
  assert all(abs(sum(r) - 1.0) < 1e-3 for r in rows)
