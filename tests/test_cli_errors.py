"""Bad input at the entry points: one message, exit code 1, no traceback, and nothing written into a new workdir.

In-process: samoe_jax/cli.py's mapping and the trainer's preflight checks. Command line: one process per entry
point for the failures that happen while absl parses flags (a --config file with a syntax error, a mistyped key).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from samoe_jax import cli
from samoe_jax.training import loop, preflight
from test_trainer import tiny_config  # pylint: disable=g-bad-import-order  (tests/ helper)

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))


def test_expected_errors_become_one_message_and_exit_code_1(capsys, monkeypatch):
  monkeypatch.delenv('SAMOE_TRACEBACK', raising=False)
  for err in (ValueError('data.batch_size=3: must be divisible by 2'), FileNotFoundError(2, 'No such file', '/x/y'),
              FloatingPointError('loss is nan at step 3')):
    with pytest.raises(SystemExit) as exit_info:
      with cli.user_errors('prog'):
        raise err
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == f'prog: error: {cli.error_message(err)}\n'
  assert cli.error_message(FileNotFoundError(2, 'No such file', '/x/y')) == 'No such file: /x/y'
  with pytest.raises(KeyError):     # a bug keeps its traceback
    with cli.user_errors('prog'):
      raise KeyError('bug')
  monkeypatch.setenv('SAMOE_TRACEBACK', '1')
  with pytest.raises(ValueError):
    with cli.user_errors('prog'):
      raise ValueError('kept for debugging')


def test_flag_errors_name_the_file_or_the_key():
  syntax = SyntaxError('invalid syntax', ('/c/bad.py', 3, 5, 'def f(:'))
  assert str(cli.flag_error(syntax, [])) == 'config file /c/bad.py has a syntax error at line 3: invalid syntax'
  typo = AttributeError('\'num_expert\'\nDid you mean "num_experts" instead of "num_expert"?')
  message = str(cli.flag_error(typo, ['prog', '--config.moe.num_expert=8']))
  assert message.startswith("config.moe.num_expert: the config has no key 'num_expert'; did you mean 'num_experts'?")
  missing = OSError('Configuration is not available because of an earlier failure to load: Failed loading config '
                    "file config_config\n  Attempted [Relative path]:\n    /c/none.py\n      [Errno 2] No such file "
                    "or directory: '/c/none.py'")
  assert str(cli.flag_error(missing, [])) == ("config file /c/none.py could not be loaded: [Errno 2] No such file or "
                                              "directory: '/c/none.py'")


@pytest.mark.parametrize('overrides, message', [
    ({'train.learning_rate': float('nan')}, r'train.learning_rate=nan: must be a finite number'),
    ({'moe.capacity_factor': float('inf')}, r'moe.capacity_factor=inf: must be a finite number'),
    ({'data.vocabulary': 'JUNK_MODEL'}, r"data.vocabulary='.*junk.model' is not a SentencePiece model"),
    ({'data.task': 'tfds_lm', 'data.tfds_name': 'c4:3.0.1', 'data.tfds_data_dir': '/nonexistent/tfds'},
     r"data.tfds_data_dir='/nonexistent/tfds' does not exist"),
    ({'init.from_workdir': '/nonexistent/run'}, r"init.from_workdir='/nonexistent/run': .*config.json does not exist"),
])
def test_bad_config_is_refused_before_the_workdir_exists(tmp_path, overrides, message):
  if overrides.get('data.vocabulary') == 'JUNK_MODEL':
    (tmp_path / 'junk.model').write_bytes(b'not a sentencepiece model\n' * 10)
    overrides = {'data.vocabulary': str(tmp_path / 'junk.model')}
  workdir = tmp_path / 'new_run'
  with pytest.raises((ValueError, OSError), match=message):
    loop.train(tiny_config(**overrides), str(workdir))
  assert not workdir.exists()


def test_workdir_that_is_a_file_or_under_a_file(tmp_path):
  a_file = tmp_path / 'a_file'
  a_file.write_text('x')
  with pytest.raises(ValueError, match=r"--workdir='.*a_file' is a file, not a directory"):
    preflight.check_workdir(str(a_file))
  with pytest.raises(ValueError, match=r"cannot be created: .*a_file is a file"):
    preflight.check_workdir(str(a_file / 'run'))
  preflight.check_workdir(str(tmp_path / 'new' / 'run'))
  assert not (tmp_path / 'new').exists()


@pytest.mark.parametrize('argv, message', [
    (['samoe_jax.describe', '--config=BAD'], 'samoe_jax.describe: error: config file {bad} has a syntax error at line 1'),
    (['samoe_jax.mesh_plan', '--config=configs/tiny_samoe.py', '--config.moe.num_expert=4'],
     "samoe_jax.mesh_plan: error: config.moe.num_expert: the config has no key 'num_expert'; did you mean "
     "'num_experts'?"),
    (['samoe_jax.report', '--workdir=NOWHERE'], "samoe_jax.report: error: --workdir='{nowhere}' holds no metrics.jsonl"),
])
def test_command_lines_fail_with_one_message(tmp_path, argv, message):
  bad = tmp_path / 'bad.py'
  bad.write_text('def get_config(:\n')
  nowhere = tmp_path / 'nowhere'
  argv = [a.replace('BAD', str(bad)).replace('NOWHERE', str(nowhere)) for a in argv]
  done = subprocess.run([sys.executable, '-m', *argv], cwd=ROOT, env=ENV, capture_output=True, text=True,
                        timeout=120, check=False)
  assert done.returncode == 1
  assert 'Traceback' not in done.stderr, done.stderr[-3000:]
  assert message.format(bad=bad, nowhere=nowhere) in done.stderr
