"""Imports TensorFlow quietly and keeps it off accelerators (JAX owns them).

Every data module imports this before seqio or tensorflow_datasets, so the environment variable is set before
TensorFlow loads and TensorFlow never allocates GPU memory beside JAX.
"""

from __future__ import annotations

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position


def hide_accelerators() -> None:
  """Makes TensorFlow see no GPU; a no-op once TensorFlow has initialised its devices."""
  try:
    tf.config.set_visible_devices([], 'GPU')
  except (RuntimeError, ValueError):  # devices already initialised: too late to change, keep going
    pass


hide_accelerators()
