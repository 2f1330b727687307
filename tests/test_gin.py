"""The gin front end (samoe_jax/config/gin_config.py): same ConfigDict as --config, clear errors, CLI runs."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from samoe_jax.config import gin_config
from samoe_jax.config.presets import tiny
from samoe_jax.training.config_checks import validate_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
GIN_DIR = ROOT / 'configs' / 'gin'


def test_gin_file_gives_the_python_config_with_its_overrides():
  config = gin_config.config_from_gin([str(GIN_DIR / 'tiny_samoe.gin')])
  expected = tiny('samoe')
  expected.train.steps = 2000
  assert config.to_dict() == expected.to_dict()


def test_bindings_override_keys_and_macros():
  config = gin_config.config_from_gin([str(GIN_DIR / 'tiny_samoe.gin')],
                                      ['POOL_SIZE = 4', 'samoe.train.learning_rate = 1', "samoe.model.layer_plan = 'DMDM'"])
  assert config.pool.size == 4
  assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
  assert config.model.layer_plan == 'DMDM'
  assert 'samoe.pool.size = 4' in gin_config.operative_config()


def test_unknown_key_names_the_key_and_the_allowed_ones():
  with pytest.raises(ValueError, match=r'samoe\.pool\.sise.*pool has \[.*size'):
    gin_config.config_from_gin([str(GIN_DIR / 'tiny_samoe.gin')], ['samoe.pool.sise = 4'])


def test_missing_files_and_base_config_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match='--gin_file=.*nope.gin.*does not exist'):
    gin_config.config_from_gin([str(tmp_path / 'nope.gin')])
  path = tmp_path / 'no_base.gin'
  path.write_text('samoe.train.steps = 3\n')
  with pytest.raises(ValueError, match='config_file'):
    gin_config.config_from_gin([str(path)])
  path.write_text("samoe.experiment.config_file = 'missing.py'\n")
  with pytest.raises(ValueError, match="config_file='missing.py' does not exist"):
    gin_config.config_from_gin([str(path)])


@pytest.mark.parametrize('path', sorted(GIN_DIR.glob('*.gin')), ids=lambda p: p.name)
def test_every_shipped_gin_file_parses_and_validates(path):
  bindings = ["TFDS_DATA_DIR = '/data/tfds'"] if 'gpt3' in path.name else []
  validate_config(gin_config.config_from_gin([str(path)], bindings))


def test_rewrite_gin_args():
  argv = ['prog', '--gin.samoe.train.steps=5', '--gin_file=a.gin', '--workdir=x']
  assert gin_config.rewrite_gin_args(argv) == ['prog', '--gin_bindings=samoe.train.steps = 5', '--gin_file=a.gin',
                                                '--workdir=x']


def _train(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'samoe_jax.train', *args], capture_output=True, text=True, env=env,
                        cwd=ROOT, timeout=600)


def test_cli_trains_from_a_gin_file(tmp_path):
  gin_file = tmp_path / 'run.gin'
  gin_file.write_text(f"samoe.experiment.config_file = {str(ROOT / 'configs' / 'test_tiny.py')!r}\n"
                      'samoe.train.steps = 10\nsamoe.train.warmup_steps = 2\n')
  workdir = tmp_path / 'run'
  result = _train(f'--gin_file={gin_file}', '--gin.samoe.train.eval_every=5', f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-3000:]
  config = json.loads((workdir / 'config.json').read_text())
  assert config['train']['steps'] == 10 and config['train']['eval_every'] == 5 and config['model']['d_model'] == 32
  operative = (workdir / 'config.gin').read_text()
  assert 'samoe.train.eval_every = 5' in operative and 'samoe.train.steps = 10' in operative


def test_cli_refuses_config_and_gin_together(tmp_path):
  result = _train(f'--config={ROOT / "configs" / "test_tiny.py"}', f'--gin_file={GIN_DIR / "tiny_samoe.gin"}',
                  f'--workdir={tmp_path / "run"}')
  assert result.returncode == 1
  assert 'either --config=FILE or --gin_file=FILE' in result.stderr and 'Traceback' not in result.stderr
  assert not (tmp_path / 'run').exists()
