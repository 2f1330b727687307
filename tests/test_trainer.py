"""End-to-end trainer tests on the tiny config: exact resume, one compilation, run files, refusals, report.

One module-scoped fixture trains three times on 'shakespeare_tiny' (byte vocabulary): an uninterrupted 6-step
run, and a 3-step run that a second train() call on the same workdir resumes to step 6.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import logging
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from config_files import write_tiny_config  # pylint: disable=g-bad-import-order  (tests/ helper)
from samoe_jax.analysis import run_report
from samoe_jax.models.model import LanguageModel
from samoe_jax.checkpointing import resume_config
from samoe_jax.training import loop
from samoe_jax.checkpointing.store import IncompatibleCheckpointError
from samoe_jax.training.metrics_writer import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 6
# On top of configs/test_tiny.py. Dropout is on so that resuming must reproduce the dropout keys too.
OVERRIDES = {
    'model.dropout_rate': 0.1, 'train.steps': STEPS, 'train.decay_steps': STEPS, 'train.warmup_steps': 2,
    'train.log_every': 1, 'train.eval_every': 3, 'train.eval_batches': 2, 'train.checkpoint_every': 2,
    'train.keep_checkpoints': 2, 'train.async_checkpoint': True,
}


def tiny_config(**overrides):
  """configs/test_tiny.py with OVERRIDES and `overrides` (dotted keys), as write_tiny_config builds it."""
  spec = importlib.util.spec_from_file_location('configs_test_tiny', ROOT / 'configs' / 'test_tiny.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.update_from_flattened_dict({**OVERRIDES, **overrides})
  return config


class _Records(logging.Handler):
  """Keeps every log message (absl progress lines and jax compile logs) in order."""

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.messages: list[str] = []

  def emit(self, record: logging.LogRecord) -> None:
    self.messages.append(record.getMessage())


@pytest.fixture(scope='module')
def runs(tmp_path_factory, compilation_cache):  # pylint: disable=redefined-outer-name,unused-argument
  base = tmp_path_factory.mktemp('trainer')
  full, part = str(base / 'full'), str(base / 'part')
  records = _Records()
  root = logging.getLogger()
  old_level = root.level
  root.addHandler(records)
  root.setLevel(logging.INFO)
  jax.config.update('jax_log_compiles', True)
  try:
    full_result = loop.train(tiny_config(), full)
  finally:
    jax.config.update('jax_log_compiles', False)
    root.removeHandler(records)
    root.setLevel(old_level)
  first_result = loop.train(tiny_config(**{'train.steps': 3}), part)
  resumed_result = loop.train(tiny_config(), part)
  return {'full': full, 'part': part, 'full_result': full_result, 'first_result': first_result,
          'resumed_result': resumed_result, 'messages': records.messages}


def test_resumed_run_matches_uninterrupted_run(runs):
  assert runs['first_result']['resumed_from_step'] == 0
  assert runs['resumed_result']['resumed_from_step'] == 3
  full, part = read_metrics(runs['full'], 'train'), read_metrics(runs['part'], 'train')
  assert [r['step'] for r in full] == [r['step'] for r in part] == list(range(1, STEPS + 1))
  for a, b in zip(full, part):
    for key in ('loss', 'cross_entropy', 'aux_loss', 'grad_norm', 'learning_rate', 'moe/layer1/expert_load'):
      np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=0, err_msg=f'{key} at step {a["step"]}')
  full_eval, part_eval = read_metrics(runs['full'], 'eval'), read_metrics(runs['part'], 'eval')
  assert full_eval[-1]['step'] == part_eval[-1]['step'] == STEPS
  np.testing.assert_allclose(part_eval[-1]['eval/loss'], full_eval[-1]['eval/loss'], rtol=1e-6)


def test_steps_compile_once_and_never_again(runs):
  messages = runs['messages']
  compiles = [i for i, m in enumerate(messages) if m.startswith('Compiling ')]
  assert sum('jit(train_step)' in messages[i] for i in compiles) == 1
  assert sum('jit(eval_step)' in messages[i] for i in compiles) == 1
  first_step = next(i for i, m in enumerate(messages) if m.startswith(f'step 1/{STEPS}'))
  last_eval = max(i for i, m in enumerate(messages) if m.startswith(f'eval at step {STEPS}'))
  during = [messages[i] for i in compiles if first_step < i < last_eval]
  assert not during, f'compilations while training: {during}'


def test_run_files_metrics_and_tensorboard(runs):
  workdir = runs['full']
  config = tiny_config()
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  assert saved['model']['d_model'] == config.model.d_model and saved['train']['steps'] == STEPS
  with open(os.path.join(workdir, 'param_summary.json')) as f:
    assert json.load(f) == LanguageModel(config).param_summary()
  train = read_metrics(workdir, 'train')
  for key in ('loss', 'cross_entropy', 'aux_loss', 'accuracy', 'learning_rate', 'grad_norm',
              'perf/tokens_per_sec', 'moe/layer1/dropped_fraction', 'moe/layer1/router_entropy'):
    assert all(math.isfinite(r[key]) for r in train), key
  assert np.shape(train[-1]['moe/layer1/expert_load']) == (config.moe.num_experts,)
  assert np.shape(train[-1]['pool/mixing_weights']) == (1, config.pool.size)
  evals = read_metrics(workdir, 'eval')
  assert [r['step'] for r in evals] == [3, 6]
  for r in evals:
    np.testing.assert_allclose(r['eval/perplexity'], math.exp(r['eval/cross_entropy']), rtol=1e-6)
  events = glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*'))
  assert len(events) == 1
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (already imported by the data pipeline)
  tags = {v.tag for e in tf.compat.v1.train.summary_iterator(events[0]) for v in e.summary.value}
  assert {'train/loss', 'train/cross_entropy', 'train/learning_rate', 'eval/perplexity', 'moe/layer1/expert_load/3',
          'pool/mixing_weights/0/1'} <= tags
  assert not {'loss', 'cross_entropy', 'learning_rate'} & tags   # train scalars only under train/ there
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit()) == [4, 6]


def test_final_metrics(runs):
  result = runs['full_result']
  assert result['step'] == STEPS
  assert result['eval/loss'] > 0
  np.testing.assert_allclose(result['eval/perplexity'], math.exp(result['eval/cross_entropy']), rtol=1e-6)
  with open(os.path.join(runs['full'], 'final_metrics.json')) as f:
    assert json.load(f)['eval/perplexity'] == pytest.approx(result['eval/perplexity'])


@pytest.mark.parametrize('overrides, message', [
    ({'model.d_model': 64}, r"(?s)Config keys that differ \(config.json in the workdir -> this command\):\n  "
                            r"model.d_model: 32 -> 64\n.*parameter \['block_0'\]\['attention'\]\['out_bias'\]: "
                            r"checkpoint \[\[32\], 'float32'\], config \[\[64\], 'float32'\]"),
    ({'train.seed': 7, 'train.learning_rate': 0.5},
     r'(?s)differ.*:\n  train.seed: 0 -> 7\n  train.learning_rate: .* -> 0.5\n.*train.seed: checkpoint 0, config 7'),
])
def test_incompatible_checkpoint_is_refused_untouched(runs, overrides, message):
  """The refusal names the config keys that differ (shape- and order-relevant first), then the checkpoint's
  differences, and nothing in the workdir is written, moved or touched (only the transient lock file came and
  went, which changes the directory's own mtime)."""
  workdir = runs['full']
  def files():
    return {p: os.path.getmtime(p) for p in glob.glob(os.path.join(workdir, '**'), recursive=True)
            if os.path.normpath(p) != os.path.normpath(workdir)}
  before = files()
  with pytest.raises(IncompatibleCheckpointError, match=message):
    loop.train(tiny_config(**overrides), workdir)
  assert files() == before


def test_non_finite_loss_or_gradient_norm_names_the_step_checkpoint_and_hint():
  nan, inf = float('nan'), float('inf')
  ok = {'loss': 1.0, 'grad_norm': 0.5}
  with pytest.raises(FloatingPointError, match=r'training diverged at step 12: the loss is nan \(grad_norm 0.5\); '
                     r'the run stopped \(the last finite checkpoint, step 10 in /w/checkpoints, is kept'):
    loop.check_finite([11, 12, 13], [ok, {'loss': nan, 'grad_norm': 0.5}, {'loss': inf, 'grad_norm': 1.0}], 10,
                      '/w/checkpoints')
  # The loss still finite (5.6e18) but the gradient norm NaN: a diverging step that must not be saved.
  with pytest.raises(FloatingPointError, match=r'at step 2: the gradient norm is nan \(loss 5.6e\+18\); the run '
                     r'stopped \(no checkpoint had been saved yet\). Lower train.learning_rate \(now 100000.0\), '
                     r'raise train.warmup_steps \(now 2\) or lower train.grad_clip \(now 1.0; 0 = off\)'):
    loop.check_finite([1, 2], [ok, {'loss': 5.6e18, 'grad_norm': nan}], None,
                      train_cfg=tiny_config(**{'train.learning_rate': 1e5}).train)
  loop.check_finite([1, 2], [ok, {'loss': 0.25, 'grad_norm': 3.0}], None)


def test_report_figures(runs, tmp_path):
  path = run_report.write_report(runs['full'])
  text = pathlib.Path(path).read_text()
  assert 'final validation perplexity' in text and '| total |' in text and '(mixing_weights.png)' in text
  for name in ('loss_curves.png', 'mixing_weights.png'):
    with open(os.path.join(runs['full'], name), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  expert_level = np.random.default_rng(0).dirichlet(np.ones(3), size=(2, 4))   # [L_moe, E, P]
  run_report.plot_mixing_weights(expert_level, ['block 1', 'block 3'], str(tmp_path / 'expert.png'))
  assert (tmp_path / 'expert.png').stat().st_size > 0


def _tree_state(workdir: str) -> dict[str, tuple[float, bytes]]:
  """Every file and folder under workdir with its mtime and bytes; the workdir's own mtime is left out (the
  transient lock file, training/workdir_lock.py, is created and removed in it)."""
  return {p: (os.path.getmtime(p), pathlib.Path(p).read_bytes() if os.path.isfile(p) else b'')
          for p in glob.glob(os.path.join(workdir, '**'), recursive=True)
          if os.path.normpath(p) != os.path.normpath(workdir)}


def test_command_line_rerun_of_a_finished_run_changes_nothing(runs, tmp_path):
  """`python -m samoe_jax.train` on a finished workdir leaves every file as it was; unknown keys fail cleanly."""
  config_file = write_tiny_config(tmp_path / 'tiny.py', OVERRIDES)
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''), JAX_PLATFORMS='cpu')
  run_report.write_report(runs['full'])
  before = _tree_state(runs['full'])
  cmd = [sys.executable, '-m', 'samoe_jax.train', f'--config={config_file}', f'--workdir={runs["full"]}']
  done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'already finished at step 6' in done.stderr
  assert _tree_state(runs['full']) == before
  bad = subprocess.run(cmd + ['--config.train.no_such_ky=1'], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120, check=False)
  assert bad.returncode == 1 and 'Traceback' not in bad.stderr, bad.stderr[-2000:]
  assert "config.train.no_such_ky: the config has no key 'no_such_ky'" in bad.stderr
  new_workdir = tmp_path / 'never_created'
  invalid = subprocess.run(
      [sys.executable, '-m', 'samoe_jax.train', f'--config={config_file}', f'--workdir={new_workdir}',
       '--config.moe.top_k=9', '--config.pool.size=0', '--config.train.learning_rate=nan'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
  assert invalid.returncode == 1 and 'Traceback' not in invalid.stderr
  assert 'moe.top_k=9' in invalid.stderr and 'pool.size=0' in invalid.stderr
  assert 'train.learning_rate=nan: must be a finite number' in invalid.stderr
  assert not new_workdir.exists()


def test_run_stopped_after_its_last_checkpoint_finishes_its_bookkeeping_once(runs, tmp_path):
  """Killed after the final checkpoint but before final_metrics.json: the rerun writes it (train/* keys from
  metrics.jsonl) without appending a second final validation record."""
  workdir = tmp_path / 'copy'
  shutil.copytree(runs['full'], workdir)
  final = json.loads((workdir / 'final_metrics.json').read_text())
  (workdir / 'final_metrics.json').unlink()
  evals_before = len([l for l in (workdir / 'metrics.jsonl').read_text().splitlines() if '"kind": "eval"' in l])
  result = loop.train(tiny_config(), str(workdir))
  assert result['resumed_from_step'] == STEPS
  for key in ('train/loss', 'train/grad_norm', 'eval/loss', 'eval/perplexity'):
    assert result[key] == final[key], key
  evals_after = len([l for l in (workdir / 'metrics.jsonl').read_text().splitlines() if '"kind": "eval"' in l])
  assert evals_after == evals_before
  assert json.loads((workdir / 'final_metrics.json').read_text())['train/loss'] == final['train/loss']


def test_files_of_a_run_without_checkpoint_are_archived_not_overwritten(runs, tmp_path):  # pylint: disable=unused-argument
  workdir = tmp_path / 'crashed_before_first_checkpoint'
  workdir.mkdir()
  (workdir / 'metrics.jsonl').write_text('{"kind": "train", "step": 1, "loss": 123.0}\n')
  (workdir / 'config.json').write_text('{"old": true}\n')
  loop.train(tiny_config(**{'train.steps': 2}), str(workdir))
  archives = sorted(workdir.glob('stale_*'))
  assert len(archives) == 1
  assert (archives[0] / 'metrics.jsonl').read_text() == '{"kind": "train", "step": 1, "loss": 123.0}\n'
  assert (archives[0] / 'config.json').read_text() == '{"old": true}\n'
  assert '123.0' not in (workdir / 'metrics.jsonl').read_text()
  assert json.loads((workdir / 'config.json').read_text())['train']['steps'] == 2


def test_a_diverging_run_stops_and_never_saves_a_non_finite_checkpoint(tmp_path):
  """At learning rate 1e5 the step-2 loss is still finite but its gradient norm is NaN: the run stops there,
  names the last checkpoint (step 1) and keeps only finite checkpoints; a checkpoint is due every step."""
  workdir = str(tmp_path / 'diverge')
  config = tiny_config(**{'train.learning_rate': 1e5, 'train.warmup_steps': 1, 'train.checkpoint_every': 1,
                          'train.log_every': 3, 'model.dropout_rate': 0.0})
  with pytest.raises(FloatingPointError, match=rf'training diverged at step (\d): the gradient norm is nan .*the '
                     rf'last finite checkpoint, step \d in {re.escape(workdir)}/checkpoints, is kept'):
    loop.train(config, workdir)
  steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())
  assert steps == [1]
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.PyTreeCheckpointer() as checkpointer:
    state = checkpointer.restore(os.path.join(workdir, 'checkpoints', '1', 'state'))
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(state)
             if np.issubdtype(np.asarray(x).dtype, np.inexact))


def test_config_differences_name_shape_and_order_keys_first():
  saved = resume_config.as_saved(tiny_config())
  changed = resume_config.as_saved(tiny_config(**{'train.learning_rate': 0.5, 'model.d_model': 64,
                                                  'data.shuffle_seed': 3}))
  lines = resume_config.differences(saved, changed)
  assert [line.split(':')[0] for line in lines] == ['data.shuffle_seed', 'model.d_model', 'train.learning_rate']
  assert lines[1] == 'model.d_model: 32 -> 64'
  assert resume_config.differences(saved, saved) == []
  assert resume_config.differences({'a.b': 1}, {'a.c': 2}) == ['a.b: 1 -> (absent)', 'a.c: (absent) -> 2']
