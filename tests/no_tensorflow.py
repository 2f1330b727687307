"""Runs a module or code as if TensorFlow, tensorflow-text, tensorflow-datasets and seqio were not installed.

  python tests/no_tensorflow.py -m samoe_jax.train --config=... --workdir=...
  python tests/no_tensorflow.py -c 'from samoe_jax.experiments import h100; ...'

Every finder on sys.meta_path is wrapped so that those packages are never found: `import tensorflow` raises
ModuleNotFoundError and importlib.util.find_spec('tensorflow') is None, as on the GPU image that lacks them
(tests/test_no_tensorflow.py). Run it with the repository root on PYTHONPATH.
"""

from __future__ import annotations

import runpy
import sys

HIDDEN = ('tensorflow', 'tensorflow_text', 'tensorflow_datasets', 'seqio')


class _Hiding:
  """A meta-path finder that finds nothing under the hidden top-level names and defers to `finder` otherwise."""

  def __init__(self, finder):
    self._finder = finder

  def find_spec(self, name, path=None, target=None):
    if name.partition('.')[0] in HIDDEN or not hasattr(self._finder, 'find_spec'):
      return None
    return self._finder.find_spec(name, path, target)

  def __getattr__(self, attr):   # invalidate_caches, find_distributions, ...
    return getattr(self._finder, attr)


def hide() -> None:
  """Makes the HIDDEN packages unimportable in this process (none may be imported already)."""
  loaded = sorted(name for name in sys.modules if name.partition('.')[0] in HIDDEN)
  if loaded:
    raise RuntimeError(f'already imported: {loaded}')
  sys.meta_path[:] = [_Hiding(finder) for finder in sys.meta_path]


def main(argv: list[str]) -> None:
  if len(argv) < 2 or argv[0] not in ('-m', '-c'):
    raise SystemExit('usage: no_tensorflow.py -m MODULE [ARGS...] | -c CODE')
  hide()
  if argv[0] == '-m':
    sys.argv = [argv[1], *argv[2:]]
    runpy.run_module(argv[1], run_name='__main__', alter_sys=True)
  else:
    sys.argv = ['-c', *argv[2:]]
    exec(compile(argv[1], '<no_tensorflow -c>', 'exec'), {'__name__': '__main__'})  # pylint: disable=exec-used


if __name__ == '__main__':
  main(sys.argv[1:])
