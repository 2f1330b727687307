"""TensorFlow side of the pipeline: seqio task sequences (streamed, or cached as numpy) -> numpy batches.

Training and validation use it for the streamed tasks only ('tfds_lm'); the in-memory tasks are made in plain
Python (in_memory.py). `pipeline.py` imports this module lazily, so importing the public API does not import
TensorFlow or seqio.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from samoe_jax.data import tf_setup  # before seqio: quiet TF, no GPU

import seqio  # pylint: disable=g-import-not-at-top,wrong-import-order
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-order

from samoe_jax.data import tasks  # pylint: disable=g-import-not-at-top,wrong-import-order

Batch = dict[str, np.ndarray]

# (task name, split, seq_len, max_rows) -> int32 [N, seq_len] sequences, zero-padded; filled on first use.
_SEQUENCE_CACHE: dict[tuple, np.ndarray] = {}


def get_task(data_cfg: Any, split_key: str) -> seqio.Task:
  """The task of `data_cfg`, after checking that data.`split_key` names one of its splits."""
  tf_setup.hide_accelerators()
  task = tasks.get_task(data_cfg)
  tasks.check_split(task, getattr(data_cfg, split_key), split_key)
  return task


def stream(task: seqio.Task, split: str, seq_len: int, **kwargs: Any) -> tf.data.Dataset:
  """The task's {'targets': int32 [<= seq_len]} sequences of one pass over `split` (kwargs: get_dataset's)."""
  return task.get_dataset(sequence_length={'targets': seq_len}, split=split, use_cached=False, num_epochs=1,
                          **kwargs)


def _targets(example: dict[str, tf.Tensor]) -> tf.Tensor:
  return example['targets']


def tokenized_rows(task: seqio.Task, split: str, seq_len: int, max_rows: int | None = None) -> np.ndarray:
  """All sequences of `split` in order (or its first `max_rows`) through seqio, as int32 [N, seq_len], zero-padded
  (not cached)."""
  ds = stream(task, split, seq_len, shuffle=False)
  ds = (ds if max_rows is None else ds.take(max_rows)).map(_targets)
  parts = list(ds.padded_batch(1024, padded_shapes=[seq_len], padding_values=0).as_numpy_iterator())
  return np.concatenate(parts).astype(np.int32) if parts else np.zeros((0, seq_len), np.int32)


def cached_rows(task: seqio.Task, split: str, seq_len: int, max_rows: int | None = None) -> np.ndarray:
  """`tokenized_rows`, tokenized once per process and kept in memory (read-only).

  The full embedded corpus: ~1.4M tokens, 5.7 MB, ~2 s.
  """
  key = (task.name, split, seq_len, max_rows)
  if key not in _SEQUENCE_CACHE:
    rows = tokenized_rows(task, split, seq_len, max_rows)
    rows.setflags(write=False)
    _SEQUENCE_CACHE[key] = rows
  return _SEQUENCE_CACHE[key]


def _feature_batches(ds: tf.data.Dataset, seq_len: int, batch_size: int) -> tf.data.Dataset:
  """{'targets'} sequences -> batched decoder features (seqio DecoderFeatureConverter, no packing)."""
  converter = seqio.DecoderFeatureConverter(pack=False)
  return converter(ds, {'targets': seq_len}).batch(batch_size, drop_remainder=True)


def _numpy_batches(ds: tf.data.Dataset) -> Iterator[Batch]:
  for batch in ds.as_numpy_iterator():
    yield {
        'decoder_input_tokens': batch['decoder_input_tokens'].astype(np.int32),
        'decoder_target_tokens': batch['decoder_target_tokens'].astype(np.int32),
        'decoder_loss_weights': batch['decoder_loss_weights'].astype(np.float32),
    }


def stream_batches(task: seqio.Task, split: str, seq_len: int, batch_size: int, *, seed: int, shuffle_buffer: int,
                   start: int, shard_index: int, num_shards: int) -> Iterator[Batch]:
  """One shuffled pass over a streamed split, from batch `start` on; sharded at the source (seqio ShardInfo)."""
  shard_info = seqio.ShardInfo(shard_index, num_shards) if num_shards > 1 else None
  ds = stream(task, split, seq_len, shuffle=True, seed=seed, shuffle_buffer_size=shuffle_buffer or None,
              shard_info=shard_info)
  return _numpy_batches(_feature_batches(ds, seq_len, batch_size).skip(start))
