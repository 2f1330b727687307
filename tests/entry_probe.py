"""Starts documented commands as `python` would and stops each right after its real flag parsing.

Used by tests/test_readme_commands.py: `python tests/entry_probe.py < jobs.json`, one JSON list of jobs
{"program": "-m MODULE" | "MODULE:FUNCTION" (a console script) | "PATH.py", "argv": [argv0, args...]}, answered with
one JSON list of results {"error": message or null, "positional": [...], "present": [flag names given]}.

Each job runs in a process forked from this one (absl's flags are global: two commands would collide). absl's
app.run / samoe_jax.cli.run_app and argparse's parse_args are replaced by: parse argv for real (so --config files
load, --config.KEY overrides apply to them, required flags are enforced, gin files and --gin.KEY bindings are
read), report, stop before the command does any work. A value in capitals (N, RUN, DIR) is the reader's own: it
is dropped where the flag is not a string, so that only its flag's name is checked.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import runpy
import select
import signal
import sys
import traceback
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repository: tests/, samoe_jax/
# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags  # noqa: E402
# Imported once, before the forks, for the entry points that import them at the top: the libraries and the
# project's model and training code (none of these defines a flag or starts a jax backend).
import flax.linen  # noqa: F401  pylint: disable=unused-import
import jax  # noqa: F401  pylint: disable=unused-import
import lm_eval.__main__  # noqa: F401  pylint: disable=unused-import
import lm_eval.api.model  # noqa: F401  pylint: disable=unused-import
import matplotlib.pyplot  # noqa: F401  pylint: disable=unused-import
from ml_collections import config_flags  # noqa: F401  pylint: disable=unused-import
import orbax.checkpoint  # noqa: F401  pylint: disable=unused-import

from samoe_jax import cli
import samoe_jax.training.config_checks  # noqa: F401  pylint: disable=unused-import
import samoe_jax.training.step  # noqa: F401  pylint: disable=unused-import

from tests.doc_commands import is_placeholder  # pylint: disable=g-bad-import-order

TIMEOUT_S = 120
STRING_FLAGS = ('string', 'multi_string', 'list', 'multi')
_parse_argparse = argparse.ArgumentParser.parse_args
PROGRAM_MODULE = ['__main__']   # where the running program's module is found (sys.modules key)


class Parsed(BaseException):
  """Raised where the command would start its work: carries the parsing result (not an Exception: no handler of
  the command catches it)."""

  def __init__(self, result: dict[str, Any]):
    super().__init__()
    self.result = result


def _dropped(arg: str, dropped: set[str]) -> bool:
  """True for `--name=VALUE` whose name is a placeholder (--config.KEY), whose VALUE is one for a flag that is not
  a string (--step=N, --config=configs/NAME.py), or that overrides a dropped flag's fields (--config.x=1)."""
  if not arg.startswith('--') or '=' not in arg:
    return False
  name, value = arg[2:].split('=', 1)
  values = flags.FLAGS
  if (is_placeholder(name) or name.split('.')[0] in dropped
      or (is_placeholder(value) and name in values and values[name].flag_type() not in STRING_FLAGS)):
    dropped.add(name)
    return True
  return False


def parse_absl(argv: list[str]) -> None:
  """absl's parse of argv (and the gin front end's, when --gin_file is given), then stop."""
  values = flags.FLAGS
  dropped: set[str] = set()
  argv = [argv[0]] + [a for a in argv[1:] if not _dropped(a, dropped)]
  try:
    rest = values(argv)
    for name in values:   # ml-collections reports a --config file that failed to load when it is first read
      if values[name].present and values[name].flag_type() == 'config object':
        values[name].value.keys()
  except flags.Error as err:
    raise Parsed({'error': str(err)}) from None
  except (SyntaxError, AttributeError, KeyError, TypeError, ValueError, OSError) as err:
    raise Parsed({'error': str(cli.flag_error(err, argv))}) from None
  if 'gin_file' in values and values['gin_file'].value:
    from samoe_jax.config import gin_config  # pylint: disable=g-import-not-at-top
    try:
      gin_config.config_from_gin(values['gin_file'].value, values['gin_bindings'].value or [])
    except Exception as err:  # pylint: disable=broad-except  (gin's own errors: any type)
      raise Parsed({'error': f'gin: {type(err).__name__}: {err}'}) from None
  present = sorted(name for name in values if values[name].present)
  raise Parsed({'error': _positional_error(rest[1:], present), 'positional': rest[1:], 'present': present})


def _positional_error(positional: list[str], present: list[str]) -> str | None:
  """Arguments that are not flags: one of the program's COMMANDS, when it has subcommands (then its
  check_command_flags, if any, judges the flags given), else none."""
  program = sys.modules.get(PROGRAM_MODULE[0])
  commands = getattr(program, 'COMMANDS', None)
  if commands is None:
    return f'unexpected arguments {positional}' if positional else None
  if len(positional) != 1 or positional[0] not in commands:
    return f'give one command of {", ".join(commands)} (got {positional})'
  try:
    getattr(program, 'check_command_flags', lambda *_: None)(positional[0], set(present))
  except ValueError as err:
    return str(err)
  return None


def _run_app(prog: str, main: Any, argv: list[str]) -> None:
  del prog, main
  parse_absl(list(argv))


def _app_run(main: Any, argv: list[str] | None = None, **kwargs: Any) -> None:
  del main, kwargs
  parse_absl(list(argv if argv is not None else sys.argv))


def _parse_args(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> argparse.Namespace:
  err = io.StringIO()
  try:
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
      namespace = _parse_argparse(self, args, namespace)
  except SystemExit:
    lines = err.getvalue().strip().splitlines()
    raise Parsed({'error': lines[-1] if lines else 'argparse exited'}) from None
  raise Parsed({'error': None, 'positional': [], 'present': []})


def start(program: str, argv: list[str]) -> dict[str, Any]:
  """Runs one program with the parsers replaced; the parsing result."""
  cli.run_app = _run_app
  app.run = _app_run
  argparse.ArgumentParser.parse_args = _parse_args
  sys.argv = list(argv)
  PROGRAM_MODULE[0] = '__main__' if program.startswith('-m ') or program.endswith('.py') else program.split(':')[0]
  try:
    if program.startswith('-m '):
      runpy.run_module(program[3:], run_name='__main__', alter_sys=True)
    elif program.endswith('.py'):
      runpy.run_path(program, run_name='__main__')
    else:
      module, function = program.split(':')
      getattr(__import__(module, fromlist=[function]), function)()
  except Parsed as parsed:
    return parsed.result
  except SystemExit as err:
    return {'error': f'exited ({err.code}) before parsing its flags'}
  except BaseException:  # pylint: disable=broad-except
    return {'error': 'crashed: ' + traceback.format_exc(limit=-3).strip().replace('\n', ' | ')}
  return {'error': 'finished without parsing flags with absl or argparse'}


def _read(fd: int, pid: int) -> dict[str, Any]:
  chunks = []
  while True:
    ready, _, _ = select.select([fd], [], [], TIMEOUT_S)
    if not ready:
      os.kill(pid, signal.SIGKILL)
      return {'error': f'still running after {TIMEOUT_S} s: did not stop at flag parsing'}
    chunk = os.read(fd, 1 << 16)
    if not chunk:
      break
    chunks.append(chunk)
  text = b''.join(chunks).decode()
  return json.loads(text) if text else {'error': 'the probe process died without an answer'}


def probe(job: dict[str, Any]) -> dict[str, Any]:
  """One job in a forked process."""
  read_fd, write_fd = os.pipe()
  pid = os.fork()
  if pid == 0:   # the child: quiet, runs the program, answers through the pipe
    os.close(read_fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    result = start(job['program'], job['argv'])
    os.write(write_fd, json.dumps(result).encode())
    os._exit(0)   # pylint: disable=protected-access
  os.close(write_fd)
  try:
    return _read(read_fd, pid)
  finally:
    os.close(read_fd)
    os.waitpid(pid, 0)


if __name__ == '__main__':
  json.dump([probe(job) for job in json.load(sys.stdin)], sys.stdout)
