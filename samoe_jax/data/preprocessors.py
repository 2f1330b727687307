"""seqio preprocessors of the pretraining tasks (named functions, so tf.data traces them without AutoGraph noise)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from samoe_jax.data import tf_setup  # pylint: disable=unused-import  # before seqio: quiet TF, no GPU

import seqio  # pylint: disable=g-import-not-at-top,wrong-import-order
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-order


def _flat_targets(example: Mapping[str, tf.Tensor]) -> tf.Tensor:
  """An example's tokens in order: one document's int32 [n], or the rows of a chunk (ragged [k, None]) joined."""
  targets = example['targets']
  return targets.flat_values if isinstance(targets, tf.RaggedTensor) else targets


# Consecutive examples joined into one tensor before the stream is cut, so that the per-element work of tf.data
# (the scan step, a flat_map dataset) happens once per chunk, not once per (often tiny) document or per token.
CHUNK_EXAMPLES = 256


def _join(chunk: tf.RaggedTensor | tf.Tensor) -> tf.Tensor:
  """A chunk's tokens in order (ragged_batch gives a dense [k, n] chunk when every example has the same shape)."""
  return chunk.flat_values if isinstance(chunk, tf.RaggedTensor) else tf.reshape(chunk, [-1])


def _not_last(tokens: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  return tokens, tf.constant(False)


def _cutter(length: int) -> Callable:
  """A scan step: (carried tokens [< length], (tokens [n], is_last)) -> (new carry, (the full sequences
  [m, length] of carry + tokens, the remainder [< length] if is_last else [0]))."""

  def cut(carry: tf.Tensor, tokens_and_flag: tuple[tf.Tensor, tf.Tensor]):
    tokens, is_last = tokens_and_flag
    stream = tf.concat([carry, tokens], axis=0)
    num_full = tf.size(stream) // length
    full = tf.reshape(stream[:num_full * length], [num_full, length])
    rest = stream[num_full * length:]
    return rest, (full, tf.cond(is_last, lambda: rest, lambda: rest[:0]))

  return cut


def _non_empty(tokens: tf.Tensor) -> tf.Tensor:
  return tf.size(tokens) > 0


def _sequences(full: tf.Tensor, tail: tf.Tensor) -> tf.data.Dataset:
  rows = tf.data.Dataset.from_tensor_slices(full)
  return rows.concatenate(tf.data.Dataset.from_tensors(tail).filter(_non_empty))


def _as_targets(tokens: tf.Tensor) -> dict[str, tf.Tensor]:
  return {'targets': tokens}


def concatenate_and_split(dataset: tf.data.Dataset, sequence_length: Mapping[str, int] | None,
                          output_features: Mapping[str, seqio.Feature] | None = None) -> tf.data.Dataset:
  """Concatenates the 'targets' of consecutive examples and cuts the stream into sequences_length['targets'].

  An example's 'targets' is one document, int32 [n], or a chunk of documents, ragged int32 [k, None]. Documents
  keep their EOS, so sequences cross document boundaries (GPT-style). Every sequence is full except possibly the
  last, shorter one; the feature converter pads it (padding has loss weight 0). The result equals
  `unbatch().batch(length)` of the token stream, computed CHUNK_EXAMPLES examples at a time (a tf.data scan
  carrying the unfinished sequence) instead of one token at a time.
  """
  del output_features
  if not sequence_length or not sequence_length.get('targets'):
    raise ValueError(f'concatenate_and_split needs sequence_length["targets"] > 0, got {sequence_length!r}.')
  length = int(sequence_length['targets'])
  tokens = dataset.map(_flat_targets, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  dtype = tokens.element_spec.dtype
  chunks = tokens.ragged_batch(CHUNK_EXAMPLES).map(_join)
  flagged = chunks.map(_not_last).concatenate(
      tf.data.Dataset.from_tensors((tf.zeros([0], dtype), tf.constant(True))))
  pieces = flagged.scan(tf.zeros([0], dtype), _cutter(length))
  return pieces.flat_map(_sequences).map(_as_targets)
