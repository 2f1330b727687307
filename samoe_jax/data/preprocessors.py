"""seqio preprocessors of the pretraining tasks (named functions, so tf.data traces them without AutoGraph noise)."""

from __future__ import annotations

from collections.abc import Mapping

from samoe_jax.data import tf_setup  # pylint: disable=unused-import  # before seqio: quiet TF, no GPU

import seqio  # pylint: disable=g-import-not-at-top,wrong-import-order
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-order


def _targets(example: Mapping[str, tf.Tensor]) -> tf.Tensor:
  return example['targets']


def _as_targets(tokens: tf.Tensor) -> dict[str, tf.Tensor]:
  return {'targets': tokens}


def concatenate_and_split(dataset: tf.data.Dataset, sequence_length: Mapping[str, int] | None,
                          output_features: Mapping[str, seqio.Feature] | None = None) -> tf.data.Dataset:
  """Concatenates the 'targets' of consecutive examples and cuts the stream into sequences_length['targets'].

  Documents keep their EOS, so sequences cross document boundaries (GPT-style). Every sequence is full except
  possibly the last, shorter one; the feature converter pads it (padding has loss weight 0).
  """
  del output_features
  if not sequence_length or not sequence_length.get('targets'):
    raise ValueError(f'concatenate_and_split needs sequence_length["targets"] > 0, got {sequence_length!r}.')
  length = int(sequence_length['targets'])
  tokens = dataset.map(_targets, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
  return tokens.batch(length, drop_remainder=False).map(_as_targets)
