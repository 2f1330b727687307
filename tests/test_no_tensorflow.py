"""Training without TensorFlow, tensorflow-text, tensorflow-datasets and seqio (the one-GPU image lacks them).

Each test runs a subprocess through tests/no_tensorflow.py, which hides those packages from every import: a tiny
training run on data.task='text_files' with a SentencePiece model file, the data and import path of the h100
suite, and the one-line refusal of a TFDS corpus.
"""

from __future__ import annotations

import glob
import json
import math
import os
import pathlib
import subprocess
import sys

from samoe_jax.data import text_files, vocabularies

ROOT = pathlib.Path(__file__).resolve().parents[1]
HIDER = ROOT / 'tests' / 'no_tensorflow.py'
HIDDEN = ('tensorflow', 'tensorflow_text', 'tensorflow_datasets', 'seqio')
TINY_BATCH, TINY_SEQ = 8, 32   # tests/test_h100_suite.py's TINY design


def _run(*args: str, cwd: pathlib.Path = ROOT) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, str(HIDER), *args], capture_output=True, text=True, env=env, cwd=cwd,
                        timeout=600)


def _corpus(path: pathlib.Path) -> tuple[str, str]:
  path.mkdir()
  words = 'the quick brown fox jumps over a lazy dog while seven wise owls count the silver stars'.split()
  for split, docs in (('train', 40), ('validation', 4)):
    with open(path / f'{split}.jsonl', 'w') as f:
      for i in range(docs):
        f.write(json.dumps({'text': ' '.join(words[(i * 7 + j) % len(words)] for j in range(60))}) + '\n')
  return str(path / 'train.jsonl'), str(path / 'validation.jsonl')


def test_the_hider_hides_the_packages():
  code = ('import importlib.util, sys\n'
          f'for name in {HIDDEN!r}:\n'
          '  assert importlib.util.find_spec(name) is None, name\n'
          '  try:\n'
          '    __import__(name)\n'
          '  except ModuleNotFoundError as e:\n'
          '    print(e)\n')
  result = _run('-c', code)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.splitlines() == [f"No module named '{name}'" for name in HIDDEN]


def test_text_files_training_with_a_sentencepiece_model(tmp_path):
  train, validation = _corpus(tmp_path / 'corpus')
  workdir, cache = tmp_path / 'run', tmp_path / 'cache'
  result = _run('-m', 'samoe_jax.train', f'--config={ROOT}/configs/test_tiny.py', f'--workdir={workdir}',
                '--config.data.task=text_files', f'--config.data.train_files={train}',
                f'--config.data.validation_files={validation}', f'--config.data.cache_dir={cache}',
                f'--config.data.vocabulary={vocabularies.SHIPPED_MODEL}', '--config.model.vocab_size=8192')
  assert result.returncode == 0, result.stderr[-4000:]
  final = json.loads((workdir / 'final_metrics.json').read_text())
  assert final['step'] == 4 and math.isfinite(final['eval/perplexity']) and final['eval/perplexity'] > 1
  assert (workdir / 'report.md').is_file() and (workdir / 'loss_curves.png').is_file()
  events, = glob.glob(str(workdir / 'tensorboard' / 'events.out.tfevents.*'))
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (this process has it; the run did not)
  tags = {v.tag for e in tf.compat.v1.train.summary_iterator(events) for v in e.summary.value}
  assert {'train/loss', 'eval/perplexity'} <= tags
  manifests = [json.loads(p.read_text()) for p in sorted(cache.glob('text_files_*.json'))]
  assert sorted(m['split'] for m in manifests) == ['train', 'validation'] and len(list(cache.glob('*.npy'))) == 2
  assert {m['format_version'] for m in manifests} == {text_files.FORMAT_VERSION}
  assert 'Traceback' not in result.stderr


def test_h100_suite_data_and_imports(tmp_path):
  code = f'''
import json, pathlib, sys
sys.path.insert(0, {str(ROOT / "tests")!r})
from test_h100_suite import TINY, _fake_corpus
from samoe_jax.analysis import run_report
from samoe_jax.experiments import h100, reproduce, runner
from samoe_jax.experiments import suite_report
from samoe_jax.training import loop
corpus = pathlib.Path({str(tmp_path / "corpus")!r})
_fake_corpus(corpus)
suite = h100.make_suite(TINY)
configs = [suite.config(spec, 0, str(corpus), {str(tmp_path / "cache")!r}, steps=10) for spec in suite.configs]
h100.check_corpus(configs, str(corpus))
seconds, batch = h100.time_data(configs[0])
loaded = sorted(m for m in sys.modules if m.split('.')[0] in {HIDDEN!r})
print(json.dumps({{'seconds': seconds, 'shape': list(batch['decoder_target_tokens'].shape), 'loaded': loaded}}))
'''
  result = _run('-c', code)
  assert result.returncode == 0, result.stderr[-4000:]
  out = json.loads(result.stdout.splitlines()[-1])
  assert out['loaded'] == [] and out['shape'] == [TINY_BATCH, TINY_SEQ]
  assert out['seconds']['first_s'] > 0 and out['seconds']['again_s'] > 0
  assert len(list((tmp_path / 'cache').glob('text_files_*.npy'))) == 2


def test_a_tfds_corpus_is_refused_in_one_line(tmp_path):
  workdir = tmp_path / 'run'
  result = _run('-m', 'samoe_jax.train', f'--config={ROOT}/configs/test_tiny.py', f'--workdir={workdir}',
                '--config.data.task=tfds_lm', '--config.data.tfds_name=c4/en:3.1.0',
                f'--config.data.tfds_data_dir={tmp_path}')
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      "samoe_jax.train: error: data.task='tfds_lm' (a TFDS corpus streamed through seqio) needs the Python packages "
      'tensorflow, tensorflow_datasets, seqio, which are not installed here: pip install tensorflow '
      'tensorflow-datasets seqio (versions: requirements.txt).')
  assert 'Traceback' not in result.stderr and not workdir.exists()
