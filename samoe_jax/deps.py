"""One clear error when a feature needs a Python package this environment lacks.

The one-GPU image has jax, flax, optax, orbax, numpy and sentencepiece but no TensorFlow, tensorflow-text,
tensorflow-datasets or seqio: training on the in-memory tasks works there, and a feature that needs one of those
packages (a TFDS corpus, the seqio form of an evaluation task) says so in one line instead of an import traceback.
"""

from __future__ import annotations

import importlib.util

# import name -> pip name (requirements.txt pins the versions)
PIP_NAMES = {'tensorflow': 'tensorflow', 'tensorflow_text': 'tensorflow-text',
             'tensorflow_datasets': 'tensorflow-datasets', 'seqio': 'seqio'}


class MissingPackageError(ValueError):
  """A feature was asked for whose package is not installed (a ValueError: the CLIs print it as one line)."""


def is_installed(name: str) -> bool:
  """Whether the top-level package `name` can be imported (its spec is found; nothing is imported)."""
  try:
    return importlib.util.find_spec(name) is not None
  except (ImportError, ValueError):
    return False


def require(feature: str, *packages: str) -> None:
  """Raises MissingPackageError naming `feature` and every one of `packages` that is not installed."""
  missing = [name for name in packages if not is_installed(name)]
  if missing:
    plural = len(missing) > 1
    raise MissingPackageError(
        f'{feature} needs the Python package{"s" if plural else ""} {", ".join(missing)}, which '
        f'{"are" if plural else "is"} not installed here: pip install '
        f'{" ".join(PIP_NAMES.get(name, name) for name in missing)} (versions: requirements.txt).')
