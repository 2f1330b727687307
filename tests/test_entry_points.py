"""Every command in one style (samoe_jax/cli.py): its absl flags are defined when its `main` runs, not at import,
so every module of the package imports in one process; `main(argv)` runs the command through cli.run_app."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

COMMANDS = ('samoe_jax.train', 'samoe_jax.evaluate', 'samoe_jax.generate', 'samoe_jax.finetune',
            'samoe_jax.describe', 'samoe_jax.report', 'samoe_jax.bench', 'samoe_jax.mesh_plan',
            'samoe_jax.compress.__main__', 'samoe_jax.experiments.reproduce', 'samoe_jax.experiments.calibration',
            'samoe_jax.data.build_corpus', 'samoe_jax.data.train_tokenizer', 'samoe_jax.data.experiment_corpus',
            'samoe_jax.data.corpus_vocab', 'samoe_jax.data.continuation_task', 'samoe_jax.evaluation.fetch_data',
            'samoe_jax.evaluation.harness', 'samoe_jax.evaluation.lm_eval_offline',
            'samoe_jax.analysis.gradient_flow', 'samoe_jax.analysis.routing_fluctuation',
            'samoe_jax.analysis.slimmability', 'samoe_jax.analysis.speedup')

# Libraries a machine may lack (the lm_eval extra; the one-GPU image has no TensorFlow or seqio): a module whose import
# fails only for one of them is reported, not failed.
OPTIONAL = ('lm_eval', 'tensorflow', 'tensorflow_text', 'tensorflow_datasets', 'seqio')

IMPORT_ALL = '''
import importlib, json, pkgutil, sys, samoe_jax
from absl import flags
missing = {}

def optional_missing(name):
  err = sys.exc_info()[1]
  if not isinstance(err, ModuleNotFoundError) or err.name is None or err.name.split('.')[0] not in %r:
    raise err
  missing[name] = err.name

names = sorted(m.name for m in pkgutil.walk_packages(samoe_jax.__path__, 'samoe_jax.', onerror=optional_missing))
for name in names:
  try:
    importlib.import_module(name)
  except ModuleNotFoundError:
    optional_missing(name)
defined = sorted(m for m in flags.FLAGS.flags_by_module_dict() if m.startswith('samoe_jax'))
print(json.dumps({'modules': len(names), 'missing': missing, 'flags_defined_by': defined}))
''' % (OPTIONAL,)


def test_every_module_imports_in_one_process():
  """Every module of the package, imported in one process (a subprocess: the flags stay out of this one); none
  defines an absl flag at import."""
  result = subprocess.run([sys.executable, '-c', IMPORT_ALL], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stderr[-4000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['modules'] > 100 and report['flags_defined_by'] == [], report
  for name, library in report['missing'].items():   # only where the library really is absent here too
    assert importlib.util.find_spec(library.split('.')[0]) is None, (name, library)


def test_every_command_module_has_the_one_tail_and_a_main():
  """Each command ends in `if __name__ == '__main__': sys.exit(main())` (an absl command's main exits itself)."""
  for name in COMMANDS:
    path = ROOT / (name.replace('.', '/') + '.py')
    tail = path.read_text().rstrip().splitlines()[-2:]
    assert tail == ["if __name__ == '__main__':", '  sys.exit(main())'], (name, tail)


@pytest.mark.parametrize('name', COMMANDS)
def test_every_command_module_has_a_callable_main(name):
  """main(argv=None): the console script calls it bare (sys.argv); the harness passes lm-eval's own command line."""
  if name == 'samoe_jax.evaluation.harness':
    pytest.importorskip('lm_eval')
  main = importlib.import_module(name).main
  assert callable(main), name
  if name != 'samoe_jax.evaluation.harness':
    assert list(inspect.signature(main).parameters) == ['argv'], name
    assert inspect.signature(main).parameters['argv'].default is None, name
