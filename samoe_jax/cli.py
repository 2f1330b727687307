"""One way for every entry point to fail on bad input: one message on stderr, exit code 1, no traceback.

The project's own checks raise ValueError (a bad value: the message names the key, the value and what is allowed),
OSError (a path the user gave: missing, not a directory, not writable, disk full) or FloatingPointError (a loss
that turned NaN/Inf). `user_errors(prog)` turns exactly these into `prog: error: <message>` and exit code 1; any
other exception is a bug and keeps its traceback. SAMOE_TRACEBACK=1 keeps the traceback of the expected errors
too (for debugging the project itself). `run_app` makes a --config file that is missing, has a syntax
error or is given a mistyped --config.KEY override one of these errors (run_app: absl's app.run with this).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import traceback
from typing import Any, Callable, Iterator

EXPECTED_ERRORS = (ValueError, OSError, FloatingPointError)


class ConfigFileError(ValueError):
  """A --config file that cannot be loaded, or an override of a key that the config does not have."""


def error_message(err: BaseException) -> str:
  """The message of an expected error; an OSError's errno text gets its file name."""
  if isinstance(err, OSError) and err.strerror and not str(err).startswith('['):
    return str(err)
  if isinstance(err, OSError) and err.strerror:
    where = f': {err.filename}' if err.filename else ''
    return f'{err.strerror}{where}'
  return str(err) or type(err).__name__


@contextlib.contextmanager
def user_errors(prog: str) -> Iterator[None]:
  """Runs the body; an expected error ends the process with `prog: error: message` and exit code 1."""
  try:
    yield
  except EXPECTED_ERRORS as err:
    if os.environ.get('SAMOE_TRACEBACK'):
      raise
    sys.stderr.write(f'{prog}: error: {error_message(err)}\n')
    sys.stderr.flush()
    raise SystemExit(1) from None


def _override_of(key: str, argv: list[str]) -> str | None:
  """The --config.A.B.KEY=... argument that names `key`, as typed."""
  for arg in argv:
    name = arg.split('=', 1)[0]
    if name.startswith('--config.') and name.split('.')[-1] == key:
      return name[len('--'):]
  return None


def _raised_while_parsing_flags(err: BaseException) -> bool:
  """True when `err` came out of absl's flag parsing (loading a --config file, applying --config.KEY=...)."""
  frames = traceback.extract_tb(err.__traceback__)
  return any('absl/flags' in f.filename or 'config_flags' in f.filename for f in frames)


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


def run_app(prog: str, main: Callable[[list[str]], Any], argv: list[str]) -> None:
  """absl's app.run(main, argv) where bad flags and --config files, and the expected errors of `main`, end the
  process with one message and exit code 1 (see user_errors)."""
  from absl import app  # pylint: disable=g-import-not-at-top
  with user_errors(prog):
    try:
      app.run(main, argv=argv)
    except (SyntaxError, AttributeError, KeyError, TypeError, ValueError, OSError) as err:
      if not _raised_while_parsing_flags(err):
        raise
      raise flag_error(err, argv) from err
