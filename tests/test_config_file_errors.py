"""A --config file that fails, Ctrl-C and SIGTERM outside the training loop: one line on stderr, a fixed exit code.

In-process: samoe_jax/config/config_file.py's messages and samoe_jax/cli.py's signal handling. Command line (one
process each, stopped during flag parsing, so each takes about a second): config files that raise in get_config(),
have a NameError or a module-level ImportError, or return an int, None or a dict, for train, evaluate and
routing_fluctuation (and an int for describe; the gin front end's base config file in-process); SIGINT and
SIGTERM sent to `python -m samoe_jax.train` during start-up.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import ml_collections
import pytest

from config_files import write_tiny_config  # pylint: disable=g-bad-import-order  (tests/ helper)
from samoe_jax import cli
from samoe_jax.config import config_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
ENV.pop('SAMOE_TRACEBACK', None)

# name: (file text, the line the message names, the message after 'line N: ')
BAD_FILES = {
    'raises': ('import ml_collections\n\ndef get_config():\n  raise RuntimeError("no such sweep")\n', 4,
               'RuntimeError: no such sweep'),
    'name_error': ('def get_config():\n  c = 1\n  return undefined_name\n', 3,
                   "NameError: name 'undefined_name' is not defined"),
    'import_error': ('import ml_collections\nimport no_such_module_xyz\n\ndef get_config():\n  return None\n', 2,
                     "ModuleNotFoundError: No module named 'no_such_module_xyz'"),
    'returns_int': ('\ndef get_config():\n  return 3\n', 2,
                    'get_config() returned int 3, not an ml_collections ConfigDict'),
    'returns_none': ('def get_config():\n  pass\n', 1,
                     'get_config() returned None (a missing return statement?), not an ml_collections ConfigDict'),
    'returns_dict': ('def get_config():\n  return {"model": {"d_model": 8}}\n', 1,
                     "get_config() returned dict {'model': {'d_model': 8}}, not an ml_collections ConfigDict"),
}


def _write(tmp_path: pathlib.Path, name: str) -> pathlib.Path:
  path = tmp_path / f'{name}.py'
  path.write_text(BAD_FILES[name][0])
  return path


def _expected(path: pathlib.Path, name: str) -> str:
  _, line, what = BAD_FILES[name]
  return f'config file {path} line {line}: {what}'


@pytest.mark.parametrize('name', sorted(BAD_FILES))
def test_a_failing_config_file_is_one_message(tmp_path, name):
  path = _write(tmp_path, name)
  with pytest.raises(config_file.ConfigFileError) as err:
    config_file.load(str(path))
  assert str(err.value) == _expected(path, name)
  assert '\n' not in str(err.value)
  if not name.startswith('returns_'):
    assert err.value.__cause__ is not None   # the original exception, for SAMOE_TRACEBACK=1


def test_other_config_file_failures(tmp_path):
  inner = tmp_path / 'inner.py'
  inner.write_text('def get_config():\n  raise KeyError("model")\n')
  outer = tmp_path / 'outer.py'
  outer.write_text(f'import importlib.util\n\ndef get_config():\n  spec = importlib.util.spec_from_file_location('
                   f'"inner", {str(inner)!r})\n  module = importlib.util.module_from_spec(spec)\n'
                   '  spec.loader.exec_module(module)\n  return module.get_config()\n')
  with pytest.raises(config_file.ConfigFileError, match=re.escape(
      f"config file {outer} line 7: KeyError: 'model' (in {inner} line 2)")):
    config_file.load(str(outer))
  (tmp_path / 'none.py').write_text('x = 1\n')
  with pytest.raises(config_file.ConfigFileError, match=r'none.py has no get_config\(\) function$'):
    config_file.load(str(tmp_path / 'none.py'))
  with pytest.raises(config_file.ConfigFileError, match=r'missing.py could not be loaded: \[Errno 2\] No such file'):
    config_file.load(str(tmp_path / 'missing.py'))
  (tmp_path / 'syntax.py').write_text('def get_config(:\n')
  with pytest.raises(config_file.ConfigFileError, match=r'syntax.py has a syntax error at line 1'):
    config_file.load(str(tmp_path / 'syntax.py'))
  (tmp_path / 'ok.py').write_text('import ml_collections\ndef get_config(arg="a"):\n'
                                  '  return ml_collections.ConfigDict({"arg": arg})\n')
  config = config_file.load_spec(f'{tmp_path / "ok.py"}:b')
  assert config.arg == 'b' and config.is_locked
  assert isinstance(config, ml_collections.ConfigDict)


def test_interrupts_and_stops_are_one_line_and_their_exit_code(capsys, monkeypatch):
  monkeypatch.delenv('SAMOE_TRACEBACK', raising=False)
  sigint = signal.getsignal(signal.SIGINT)
  try:
    with pytest.raises(SystemExit) as exit_info:
      with cli.user_errors('prog'):
        raise KeyboardInterrupt
    assert exit_info.value.code == cli.INTERRUPT_EXIT_CODE == 130
    assert capsys.readouterr().err == 'prog: error: interrupted (Ctrl-C)\n'
    with pytest.raises(SystemExit) as exit_info:
      with cli.user_errors('prog'):
        assert cli.prog_name() == 'prog'
        raise cli.Stopped('stopped by SIGTERM after step 3; checkpoint saved, rerun to resume', cli.TERM_EXIT_CODE)
    assert exit_info.value.code == cli.TERM_EXIT_CODE == 143
    assert capsys.readouterr().err == ('prog: error: stopped by SIGTERM after step 3; checkpoint saved, rerun to '
                                       'resume\n')
  finally:
    signal.signal(signal.SIGINT, sigint)
  assert cli.prog_name() == 'samoe_jax'
  stopped = cli.Stopped('message', 130)   # outside user_errors: a plain SystemExit with the code
  assert isinstance(stopped, SystemExit) and stopped.code == 130 and str(stopped) == 'message'


def test_sigterm_raises_terminated_until_the_handler_is_restored():
  assert threading.current_thread() is threading.main_thread()   # pytest (and its xdist workers) run tests there
  runner_handler = signal.signal(signal.SIGTERM, signal.SIG_DFL)   # as in a freshly started tool
  try:
    with pytest.raises(cli.Terminated) as err:
      with cli.terminate_raises():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)   # the handler runs at once and raises
    assert err.value.code == 143 and str(err.value) == 'terminated (SIGTERM)'
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
  finally:
    signal.signal(signal.SIGTERM, runner_handler)


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, env=env or ENV, capture_output=True, text=True,
                        timeout=120, check=False)


def _assert_one_line(done: subprocess.CompletedProcess, line: str, code: int = 1) -> None:
  assert done.returncode == code, done.stderr[-3000:]
  assert done.stderr == line + '\n', done.stderr[-3000:]


# Every bad file for train, evaluate and routing_fluctuation (each parses its flags in under a second); describe
# imports jax at the top (seconds): the int that used to fail inside validate.py with a TypeError.
CASES = ([('samoe_jax.train', name) for name in sorted(BAD_FILES)]
         + [('samoe_jax.evaluate', name) for name in sorted(BAD_FILES)]
         + [('samoe_jax.analysis.routing_fluctuation', name) for name in sorted(BAD_FILES)]
         + [('samoe_jax.describe', 'returns_int')])


@pytest.mark.parametrize('module, name', CASES)
def test_command_lines_with_a_failing_config_file(tmp_path, module, name):
  path = _write(tmp_path, name)
  extra = [] if module == 'samoe_jax.describe' else [f'--workdir={tmp_path / "run"}']
  done = _run(module, f'--config={path}', *extra)
  _assert_one_line(done, f'{module}: error: {_expected(path, name)}')
  assert not (tmp_path / 'run').exists()


def test_gin_base_config_file(tmp_path):
  from samoe_jax.config import gin_config  # pylint: disable=g-import-not-at-top
  path = _write(tmp_path, 'name_error')
  gin = tmp_path / 'run.gin'
  gin.write_text(f"samoe.experiment.config_file = '{path}'\n")
  with pytest.raises(config_file.ConfigFileError) as err:
    gin_config.config_from_gin([str(gin)], [])
  assert str(err.value) == _expected(path, 'name_error')


def test_traceback_on_request(tmp_path):
  path = _write(tmp_path, 'name_error')
  done = _run('samoe_jax.train', f'--config={path}', f'--workdir={tmp_path / "run"}',
              env=dict(ENV, SAMOE_TRACEBACK='1'))
  assert done.returncode == 1
  assert 'Traceback' in done.stderr and f'File "{path}", line 3, in get_config' in done.stderr
  assert done.stderr.rstrip().endswith(_expected(path, 'name_error'))


def test_flag_errors_are_one_line(tmp_path):
  done = _run('samoe_jax.analysis.routing_fluctuation', f'--config={tmp_path / "x.py"}')
  _assert_one_line(done, f'samoe_jax.analysis.routing_fluctuation: error: config file {tmp_path / "x.py"} could not '
                   f"be loaded: [Errno 2] No such file or directory: '{tmp_path / 'x.py'}'")
  done = _run('samoe_jax.analysis.routing_fluctuation', '--steps=all')
  _assert_one_line(done, 'samoe_jax.analysis.routing_fluctuation: error: --workdir is required (--helpshort lists '
                   'the flags)')
  done = _run('samoe_jax.analysis.routing_fluctuation', '--workdir=x', 'extra')
  _assert_one_line(done, "samoe_jax.analysis.routing_fluctuation: error: unexpected arguments: ['extra'] "
                   '(--helpshort lists the flags)')


def _signal_during_startup(tmp_path: pathlib.Path, signum: int) -> tuple[subprocess.Popen, list[str]]:
  """Starts a tiny training run and sends `signum` once it logs its mesh (the model's initialisation compiles
  next); returns the finished process and its stderr lines."""
  config = write_tiny_config(tmp_path / 'tiny.py', {'train.steps': 4})
  proc = subprocess.Popen([sys.executable, '-m', 'samoe_jax.train', f'--config={config}',
                           f'--workdir={tmp_path / "run"}'], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # even under `nohup &`
  lines = []
  for line in proc.stderr:
    lines.append(line)
    if 'mesh:' in line:
      proc.send_signal(signum)
  proc.wait(timeout=120)
  assert any('mesh:' in line for line in lines), ''.join(lines)[-3000:]
  return proc, lines


@pytest.mark.parametrize('signum, code, message', [
    (signal.SIGINT, 130, 'samoe_jax.train: error: interrupted (Ctrl-C)\n'),
    (signal.SIGTERM, 143, 'samoe_jax.train: error: terminated (SIGTERM)\n')])
def test_a_signal_during_startup_is_one_line_and_its_exit_code(tmp_path, signum, code, message):
  proc, lines = _signal_during_startup(tmp_path, signum)
  text = ''.join(lines)
  assert proc.returncode == code, text[-3000:]
  assert 'Traceback' not in text and lines[-1] == message, text[-3000:]
  assert [line for line in lines if ': error:' in line] == [message]
