"""The prepared TFDS corpus of data.task='tfds_lm': `check_tfds_dataset` finds it (never downloads it). Imports
TensorFlow (quietly, through tf_setup)."""

from __future__ import annotations

from typing import Any

from samoe_jax.data import tf_setup  # pylint: disable=unused-import  # before TensorFlow: quiet, no GPU

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-order


def check_tfds_dataset(tfds_name: str, tfds_data_dir: str, text_key: str) -> Any:
  """Checks that `tfds_name` is prepared in `tfds_data_dir` with a `text_key` feature; returns its builder.

  Raises ValueError for empty or malformed settings and FileNotFoundError (naming the directory and dataset)
  when the directory or the prepared dataset is missing. Never downloads or prepares anything.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if not tfds_name or ':' not in tfds_name:
    raise ValueError(f"data.tfds_name={tfds_name!r}: task 'tfds_lm' needs a TFDS name with a version, "
                     f"e.g. 'c4/en:3.1.0'.")
  if not tfds_data_dir:
    raise ValueError(f"data.tfds_data_dir is empty: task 'tfds_lm' reads {tfds_name!r} only from a prepared TFDS "
                     f'directory (a local path or gs://...); nothing is downloaded.')
  if not tf.io.gfile.isdir(tfds_data_dir):
    raise FileNotFoundError(f'data.tfds_data_dir={tfds_data_dir!r} does not exist (looking for the prepared TFDS '
                            f'dataset {tfds_name!r}; nothing is downloaded).')
  not_found = FileNotFoundError(
      f'TFDS dataset {tfds_name!r} is not prepared in data.tfds_data_dir={tfds_data_dir!r}: prepare it there '
      f'first (e.g. `tfds build {tfds_name.split(":")[0]} --data_dir={tfds_data_dir}` on a machine with the raw '
      f'data); nothing is downloaded.')
  try:
    builder = tfds.builder(tfds_name, data_dir=tfds_data_dir)
  except (tfds.core.registered.DatasetNotFoundError, FileNotFoundError, ValueError, AssertionError) as e:
    raise not_found from e
  if not builder.is_prepared():
    raise not_found
  features = list(builder.info.features.keys())
  if text_key not in features:
    raise ValueError(f'data.text_key={text_key!r} is not a feature of TFDS dataset {tfds_name!r}: it has '
                     f'{features}.')
  return builder
