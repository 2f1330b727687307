"""gin front end to the ml-collections config: t5x-style `--gin_file` / `--gin.KEY=VALUE` runs.

A gin file names a base config file and overrides its keys section by section; the result is the same
ConfigDict `--config=` would give, validated the same way, so the two front ends can never disagree:

  # configs/gin/tiny_samoe.gin
  samoe.experiment.config_file = 'configs/tiny_samoe.py'    # required: the ml-collections base config
  samoe.train.steps = 1000                                   # any key of the base config's sections
  samoe.pool.size = 4

  python -m samoe_jax.train --gin_file=configs/gin/tiny_samoe.gin --gin.samoe.train.steps=200 --workdir=DIR

Sections (configurables in the gin module 'samoe'): experiment (config_file), model, moe, pool, data, train, eval,
mesh, distill, init. gin macros (`STEPS = 1000`, `samoe.train.steps = %STEPS`) and `include` work as usual. A binding of a key
the base config does not have is an error naming the key and the section's keys; relative config_file paths
are resolved against the gin file's directory, then the working directory. A method subsection is bound as a dict
(`samoe.moe.graph = {'kind': 'similarity', 'lam': 0.5}`: the keys given are set); the moe section's old flat
method keys (`samoe.moe.graph_lambda = 0.5`) set their subsection's field (config/aliases.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import gin
import ml_collections

from samoe_jax.config import aliases, config_file

SECTIONS = ('model', 'moe', 'pool', 'data', 'train', 'eval', 'mesh', 'distill', 'init')


def _section_overrides(**overrides: Any) -> dict[str, Any]:
  """A section's bindings as {key: value} (the configurable's parameters are whatever the gin file binds)."""
  return overrides


def _register_sections() -> None:
  for section in SECTIONS:
    gin.external_configurable(_section_overrides, name=section, module='samoe')


@gin.configurable('experiment', module='samoe')
def experiment(config_file: str = gin.REQUIRED) -> str:
  """The ml-collections base config file the gin bindings override."""
  return config_file


_register_sections()


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """get_config() of a Python config file (as ml_collections' --config= flag loads it)."""
  if not os.path.isfile(path):
    raise ValueError(f'samoe.experiment.config_file={path!r} does not exist')
  # anything the file raises, or a get_config() that returns no ConfigDict: one ConfigFileError (a ValueError)
  return config_file.load(path, module_name=f'samoe_gin_base_{abs(hash(path))}', lock=False)


def _resolve_config_file(path: str, gin_files: Sequence[str]) -> str:
  if os.path.isabs(path) or not gin_files:
    return path
  for base in (os.path.dirname(os.path.abspath(gin_files[0])), os.getcwd()):
    candidate = os.path.join(base, path)
    if os.path.isfile(candidate):
      return candidate
  return path


def apply_overrides(config: ml_collections.ConfigDict, section: str, overrides: dict[str, Any]) -> None:
  """Sets config.<section>.<key> for every binding (a subsection's dict key by key; an old flat key of the moe
section its subsection's field); unknown keys are an error naming the allowed ones."""
  for key, value in overrides.items():
    path = aliases.DOTTED.get(f'{section}.{key}', f'{section}.{key}').split('.')
    if isinstance(value, dict) and isinstance(config[section].get(key), ml_collections.ConfigDict):
      for field, item in value.items():
        _set(config, f'samoe.{section}.{key}', path + [field], item)
    else:
      _set(config, f'samoe.{section}.{key}', path, value)


def _set(config: ml_collections.ConfigDict, binding: str, path: list[str], value: Any) -> None:
  """config.<path> = value (an int where the base has a float becomes a float)."""
  node = config
  for part in path[:-1]:
    node = node[part]
  key, where = path[-1], '.'.join(path[:-1])
  if key not in node:
    raise ValueError(f'gin binding {binding}: the base config has no key {".".join(path)}; {where} has '
                     f'{sorted(node.keys())}')
  if isinstance(node[key], float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  node[key] = value


def config_from_gin(gin_files: Sequence[str], gin_bindings: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Parses the gin files and bindings (clearing earlier gin state) and returns the overridden base config."""
  for path in gin_files:
    if not os.path.isfile(path):
      raise ValueError(f'--gin_file={path!r} does not exist')
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings(list(gin_files), list(gin_bindings), finalize_config=False)
    base = experiment()
  except (ValueError, KeyError, TypeError, RuntimeError, SyntaxError) as err:   # gin's errors, no traceback
    raise ValueError(f'gin: {err}') from err
  config = load_config_file(_resolve_config_file(base, gin_files))
  for section in SECTIONS:
    overrides = gin.get_bindings(f'samoe.{section}')
    apply_overrides(config, section, dict(overrides))
  return config


def operative_config() -> str:
  """The bindings in effect, macros resolved, one per line (written next to config.json as config.gin)."""
  lines = [f"samoe.experiment.config_file = {experiment()!r}"]
  for section in SECTIONS:
    lines += [f'samoe.{section}.{key} = {value!r}' for key, value in sorted(gin.get_bindings(f'samoe.{section}').items())]
  return '\n'.join(lines) + '\n'


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """t5x's command-line shorthand: `--gin.KEY=VALUE` becomes `--gin_bindings=KEY = VALUE`."""
  out = []
  for arg in argv:
    if arg.startswith('--gin.') and '=' in arg:
      key, value = arg[len('--gin.'):].split('=', 1)
      out.append(f'--gin_bindings={key} = {value}')
    else:
      out.append(arg)
  return out
