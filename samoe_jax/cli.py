"""One way for every entry point to end on bad input or a signal: one line on stderr, a fixed exit code.

The project's own checks raise ValueError (a bad value: the message names the key, the value and what is allowed),
OSError (a path the user gave: missing, not a directory, not writable, disk full) or FloatingPointError (a loss
that turned NaN/Inf). `user_errors(prog)` turns exactly these into `prog: error: <message>` and exit code 1; any
other exception is a bug and keeps its traceback. It also ends Ctrl-C (KeyboardInterrupt) with
`prog: error: interrupted (Ctrl-C)` and exit code 130, and a `Stopped(message, code)` (a SystemExit) with
`prog: error: <message>` and its code. SAMOE_TRACEBACK=1 keeps the traceback of the expected errors (and prints
where Ctrl-C or a Stopped hit before its line; for debugging the project itself).

`run_app(prog, main, argv)` is absl's app.run(main, argv) with all of that, and:
* a --config file is loaded by samoe_jax/config/config_file.py: a file that is missing, has a syntax error, raises
  anything while it is imported or in get_config(), or whose get_config() returns no ConfigDict is one
  ConfigFileError naming the file, the line in it and the exception; a mistyped --config.KEY override, an
  unknown or missing flag and app.UsageError are one line too; an override of an old flat moe key
  (--config.moe.graph_lambda=0.5) sets its subsection's field (config/aliases.py);
* SIGTERM raises Terminated (exit code 143, `prog: error: terminated (SIGTERM)`) wherever the program is, until
  something else (the training loop) installs its own handler; the previous handler is back when run_app returns;
* the console is set up (samoe_jax/console.py: absl's short prefixes, library chatter such as jax's TPU probe off)
  once the flags are parsed.

The training loop stops on a signal at a step boundary and ends with `raise cli.Stopped(message, code)`, code
INTERRUPT_EXIT_CODE (Ctrl-C) or TERM_EXIT_CODE (SIGTERM); prog_name() is the running tool's name for a line it
writes itself.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import sys
import threading
import traceback
from typing import Any, Callable, Iterator

from samoe_jax import console
from samoe_jax.config import aliases, config_file
from samoe_jax.config.config_file import ConfigFileError, one_line

EXPECTED_ERRORS = (ValueError, OSError, FloatingPointError)
INTERRUPT_EXIT_CODE = 128 + signal.SIGINT   # 130: Ctrl-C
TERM_EXIT_CODE = 128 + signal.SIGTERM       # 143: SIGTERM (a preempted VM, a scheduler's stop)
_PROGS: list[str] = []   # the tools whose user_errors is running, innermost last


class Stopped(SystemExit):
  """Ends the process with `prog: error: <message>` and exit code `code` inside user_errors (so inside every
  run_app); elsewhere it is SystemExit(code): the process ends with `code`, silently."""

  def __init__(self, message: str, code: int):
    super().__init__(code)
    self.message = message

  def __str__(self) -> str:
    return self.message


class Terminated(Stopped):
  """Raised by run_app's SIGTERM handler, wherever the main thread is (after a running C call returns)."""

  def __init__(self, message: str = 'terminated (SIGTERM)'):
    super().__init__(message, TERM_EXIT_CODE)


def prog_name() -> str:
  """The running tool's name, e.g. 'samoe_jax.train' (the innermost user_errors / run_app), else 'samoe_jax'."""
  return _PROGS[-1] if _PROGS else 'samoe_jax'


def error_message(err: BaseException) -> str:
  """The message of an expected error; an OSError's errno text gets its file name."""
  if isinstance(err, OSError) and err.strerror and not str(err).startswith('['):
    return str(err)
  if isinstance(err, OSError) and err.strerror:
    where = f': {err.filename}' if err.filename else ''
    return f'{err.strerror}{where}'
  return str(err) or type(err).__name__


def _in_main_thread() -> bool:
  return threading.current_thread() is threading.main_thread()


def _exit_at_once(signum: int, frame: Any) -> None:
  del frame
  os._exit(128 + signum)   # pylint: disable=protected-access


def _fail(prog: str, message: str, code: int) -> None:
  sys.stderr.write(f'{prog}: error: {message}\n')
  sys.stderr.flush()
  raise SystemExit(code) from None


@contextlib.contextmanager
def user_errors(prog: str) -> Iterator[None]:
  """Runs the body; an expected error ends the process with `prog: error: message` and exit code 1, Ctrl-C with
  `prog: error: interrupted (Ctrl-C)` and 130, a Stopped with its message and code. After Ctrl-C or a Stopped, a
  further Ctrl-C ends the process at once (no traceback from the clean-up at exit)."""
  _PROGS.append(prog)
  try:
    yield
  except EXPECTED_ERRORS as err:
    if os.environ.get('SAMOE_TRACEBACK'):
      raise
    _fail(prog, error_message(err), 1)
  except (KeyboardInterrupt, Stopped) as err:
    if os.environ.get('SAMOE_TRACEBACK'):
      traceback.print_exc()
    if _in_main_thread():
      signal.signal(signal.SIGINT, _exit_at_once)
    if isinstance(err, Stopped):
      _fail(prog, err.message, err.code)
    _fail(prog, 'interrupted (Ctrl-C)', INTERRUPT_EXIT_CODE)
  finally:
    _PROGS.pop()


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
  """SIGTERM raises Terminated in the body (main thread, where SIGTERM is not ignored or handled already); the
  previous handler is back afterwards."""
  if not _in_main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
    yield
    return

  def handler(signum: int, frame: Any) -> None:
    del signum, frame
    raise Terminated()

  signal.signal(signal.SIGTERM, handler)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _override_of(key: str, argv: list[str]) -> str | None:
  """The --config.A.B.KEY=... argument that names `key`, as typed."""
  for arg in argv:
    name = arg.split('=', 1)[0]
    if name.startswith('--config.') and name.split('.')[-1] == key:
      return name[len('--'):]
  return None


def flag_error(err: BaseException, argv: list[str]) -> ConfigFileError:
  """A --config load or override failure as one message naming the file or the key."""
  if isinstance(err, SyntaxError):
    return ConfigFileError(f'config file {err.filename} has a syntax error at line {err.lineno}: {err.msg}')
  if isinstance(err, (AttributeError, KeyError)):   # a mistyped --config.KEY override (the config is locked)
    text = str(err.args[0] if err.args else err).replace("\\'", "'").replace('\\n', '\n')
    match = re.search(r"'([^'\n]+)'", text)
    key = match.group(1) if match else text
    hint = re.search(r'Did you mean "([^"]+)"', text)
    typed = _override_of(key, argv) or key
    return ConfigFileError(f'{typed}: the config has no key {key!r}'
                           + (f'; did you mean {hint.group(1)!r}?' if hint else '')
                           + ' (python -m samoe_jax.describe --config=FILE prints the config)')
  text = str(err).strip()
  if isinstance(err, OSError) and 'Failed loading config file' in text:
    paths = re.findall(r'^\s+(\S+)\s*$', text, flags=re.M)
    reason = text.splitlines()[-1].strip()
    return ConfigFileError(f'config file {paths[0] if paths else "?"} could not be loaded: {reason}')
  return ConfigFileError(f'bad command-line flag: {error_message(err)}')


class _ConfigFileFailed(Exception):
  """Carries a ConfigFileError out of absl's flag parsing, which would recast a ValueError into its own text."""

  def __init__(self, error: ConfigFileError):
    super().__init__(str(error))
    self.error = error


def _load_config_file(parser: Any, spec: str) -> Any:
  try:
    lock = parser._lock_config  # pylint: disable=protected-access  (ml_collections' own setting for the flag)
    return config_file.load_spec(spec, module_name=f'{parser.name}_config', lock=lock)
  except ConfigFileError as err:
    raise _ConfigFileFailed(err) from err


def _load_config_files_checked() -> None:
  """Every --config file flag defined so far loads its file with config_file.load_spec (one message on error)."""
  module = sys.modules.get('ml_collections.config_flags.config_flags')
  if module is None:   # not imported: there is no such flag
    return
  from absl import flags  # pylint: disable=g-import-not-at-top
  for name in list(flags.FLAGS):
    parser = flags.FLAGS[name].parser
    if isinstance(parser, module.ConfigFileFlagParser) and 'parse' not in vars(parser):
      parser.parse = functools.partial(_load_config_file, parser)


def _parse_flags(argv: list[str]) -> Any:
  """absl's flag parsing, where any failure is one ValueError (ConfigFileError for --config)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  argv = aliases.rewrite_override_args(argv)
  sys.argv[:] = aliases.rewrite_override_args(sys.argv)   # ml_collections reads the overrides from sys.argv
  try:
    return flags.FLAGS(argv)
  except _ConfigFileFailed as failed:
    raise failed.error from failed.error.__cause__
  except flags.Error as err:
    text = re.sub(r'flag --(\S+)=None: Flag --\1 must have a value other than None\.', r'--\1 is required',
                  one_line(str(err)))
    raise ValueError(f'{text} (--helpshort lists the flags)') from err
  except (SyntaxError, AttributeError, KeyError, TypeError, ValueError, OSError) as err:
    raise flag_error(err, argv) from err


def _main_of(main: Callable[[list[str]], Any], argv: list[str]) -> Any:
  """`main` after the console is set up; its app.UsageError as one ValueError."""
  from absl import app  # pylint: disable=g-import-not-at-top
  console.quiet_library_logs()
  try:
    return main(argv)
  except app.UsageError as err:
    raise ValueError(f'{one_line(str(err))} (--helpshort lists the flags)') from err


def run_app(prog: str, main: Callable[[list[str]], Any], argv: list[str]) -> None:
  """absl's app.run(main, argv) where bad flags and --config files, the expected errors of `main`, Ctrl-C and
  SIGTERM end the process with one line (module docstring)."""
  from absl import app  # pylint: disable=g-import-not-at-top
  with user_errors(prog), terminate_raises():
    _load_config_files_checked()
    app.run(functools.partial(_main_of, main), argv=argv, flags_parser=_parse_flags)
