"""Config files for command-line tests: configs/test_tiny.py plus overrides, as a file `--config=` can load."""

from __future__ import annotations

import pathlib
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
_TEMPLATE = '''
import importlib.util
def get_config():
  spec = importlib.util.spec_from_file_location('configs_test_tiny', {path!r})
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.update_from_flattened_dict({overrides!r})
  return config
'''


def write_tiny_config(path: pathlib.Path, overrides: dict[str, Any]) -> pathlib.Path:
  """Writes a config file at `path`: configs/test_tiny.py with `overrides` (dotted keys) applied."""
  path.write_text(_TEMPLATE.format(path=str(ROOT / 'configs' / 'test_tiny.py'), overrides=dict(overrides)))
  return path


def tiny_config(overrides: dict[str, Any] | None = None):
  """configs/test_tiny.py's ConfigDict with `overrides` (dotted keys) applied, in this process."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('configs_test_tiny', str(ROOT / 'configs' / 'test_tiny.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.update_from_flattened_dict(dict(overrides or {}))
  return config
