"""Loading a Python config file (`--config=FILE[:ARG]`): its module, then `get_config(*ARG)`, a ConfigDict.

Whatever goes wrong is one ConfigFileError (a ValueError) naming the file, the line in it and the exception:

  config file configs/x.py line 12: NameError: name 'foo' is not defined
  config file configs/x.py line 3: RuntimeError: boom (in samoe_jax/config/defaults.py line 40)
  config file configs/x.py line 2: get_config() returned int 3, not an ml_collections ConfigDict

the line is the deepest one of the file in the traceback (for a return value: get_config's `def`), and where the
error was raised in other code of the user's (not a library's), that place follows in parentheses. The original
exception is the ConfigFileError's __cause__ (SAMOE_TRACEBACK=1 prints both tracebacks, samoe_jax/cli.py).
`python -m samoe_jax.X --config=FILE` loads with this (cli.run_app), and so do the gin front end's
samoe.experiment.config_file, a distillation teacher's config and the bench's --configs. A file that sets the moe
section's old flat method keys (moe.graph_lambda, ...) gives the config with them moved to their subsections
(config/aliases.py).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
import traceback
from typing import Any, Sequence

import ml_collections

from samoe_jax.config import aliases

_LIBRARY_DIRS = tuple(sorted({os.path.realpath(p) + os.sep for key, p in sysconfig.get_paths().items()
                              if key in ('stdlib', 'platstdlib', 'purelib', 'platlib')}))


class ConfigFileError(ValueError):
  """A --config file that cannot be loaded, or an override of a key that the config does not have."""


def split_spec(spec: str) -> tuple[str, tuple[str, ...]]:
  """'configs/x.py:ARG' -> ('configs/x.py', ('ARG',)), as ml_collections' --config flag splits it."""
  path, *args = spec.split(':', 1)
  return path, tuple(args)


def _same_file(a: str, b: str) -> bool:
  return os.path.realpath(a) == os.path.realpath(b)


def _shown(path: str) -> str:
  """`path` relative to the working directory when it lies under it."""
  real, cwd = os.path.realpath(path), os.path.realpath(os.getcwd())
  return os.path.relpath(real, cwd) if real.startswith(cwd + os.sep) else path


def _is_library(filename: str) -> bool:
  return filename.startswith('<') or os.path.realpath(filename).startswith(_LIBRARY_DIRS)


def one_line(text: str) -> str:
  """A message's lines joined by '; ' (blank lines dropped)."""
  return '; '.join(line.strip() for line in text.splitlines() if line.strip())


def describe_error(path: str, err: BaseException) -> str:
  """'config file PATH line N: Type: message (in OTHER line M)' for an exception raised loading or calling it."""
  if isinstance(err, SyntaxError) and err.filename and _same_file(err.filename, path):
    return f'config file {path} has a syntax error at line {err.lineno}: {err.msg}'
  frames = traceback.extract_tb(err.__traceback__)
  ours = [f for f in frames if _same_file(f.filename, path)]
  where = f' line {ours[-1].lineno}' if ours else ''
  text = one_line(str(err))
  message = f'config file {path}{where}: {type(err).__name__}' + (f': {text}' if text else '')
  if isinstance(err, SyntaxError) and err.filename:
    return message + f' (in {_shown(err.filename)} line {err.lineno})'
  user = [f for f in frames if not _is_library(f.filename)]
  if user and not _same_file(user[-1].filename, path):
    message += f' (in {_shown(user[-1].filename)} line {user[-1].lineno})'
  return message


def _returned(value: Any) -> str:
  if value is None:
    return 'None (a missing return statement?)'
  text = repr(value)
  return f'{type(value).__name__} {text if len(text) <= 60 else text[:57] + "..."}'


def load(path: str, args: Sequence[str] = (), module_name: str = 'config_config',
         lock: bool = True) -> ml_collections.ConfigDict:
  """get_config(*args) of the Python file `path` (a module named `module_name` in sys.modules, as ml_collections
  names it), locked when `lock`. Raises ConfigFileError naming the file, the line and the exception."""
  if not path:
    raise ConfigFileError('--config is empty: give a config file, e.g. configs/tiny_samoe.py')
  if not os.path.isfile(path):
    reason = 'is a directory, not a config file' if os.path.isdir(path) else \
        f'[Errno 2] No such file or directory: {path!r}'
    raise ConfigFileError(f'config file {path} could not be loaded: {reason}')
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[module_name] = module   # as loader.load_module() did: dataclasses in the file need it
  try:
    spec.loader.exec_module(module)
  except Exception as err:  # pylint: disable=broad-except  (whatever the file raises: one message)
    del sys.modules[module_name]
    raise ConfigFileError(describe_error(path, err)) from err
  get_config = getattr(module, 'get_config', None)
  if not callable(get_config):
    raise ConfigFileError(f'config file {path} has no get_config() function')
  try:
    config = get_config(*args)
  except Exception as err:  # pylint: disable=broad-except
    raise ConfigFileError(describe_error(path, err)) from err
  if not isinstance(config, ml_collections.ConfigDict):
    code = getattr(get_config, '__code__', None)
    line = f' line {code.co_firstlineno}' if code is not None and _same_file(code.co_filename, path) else ''
    raise ConfigFileError(f'config file {path}{line}: get_config() returned {_returned(config)}, not an '
                          'ml_collections ConfigDict')
  config = aliases.resolve(config)   # a file written with the moe section's old flat method keys
  if lock:
    config.lock()
  return config


def load_spec(spec: str, module_name: str = 'config_config', lock: bool = True) -> ml_collections.ConfigDict:
  """load() of 'FILE[:ARG]' as --config= gives it."""
  path, args = split_spec(spec)
  return load(path, args, module_name, lock)
