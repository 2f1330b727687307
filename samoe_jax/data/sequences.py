"""TensorFlow side of the pipeline: task sequences (streamed or cached as numpy) -> decoder-feature numpy batches.

`pipeline.py` imports this module lazily, so importing the public API does not import TensorFlow or seqio.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from samoe_jax.data import tf_setup  # before seqio: quiet TF, no GPU

import seqio  # pylint: disable=g-import-not-at-top,wrong-import-order
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-order

from samoe_jax.data import tasks  # pylint: disable=g-import-not-at-top,wrong-import-order
from samoe_jax.data import text_files  # pylint: disable=g-import-not-at-top,wrong-import-order

Batch = dict[str, np.ndarray]

# (task name, split, seq_len, max_rows) -> int32 [N, seq_len] sequences, zero-padded; filled on first use.
_SEQUENCE_CACHE: dict[tuple, np.ndarray] = {}


def is_in_memory(task: str) -> bool:
  """Whether data.task is tokenized once per process and held in memory (the embedded corpora, 'text_files')
  rather than streamed (a TFDS corpus)."""
  return task in tasks.IN_MEMORY


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


def in_memory_rows(data_cfg: Any, task: seqio.Task, split: str) -> np.ndarray:
  """All sequences of `split` of an in-memory task as int32 [N, data.seq_len], read-only, made once per process;
  'text_files' rows come from data.cache_dir when it holds them (text_files.load_rows)."""
  seq_len = int(data_cfg.seq_len)
  if data_cfg.task != text_files.TASK:
    return cached_rows(task, split, seq_len)
  key = (task.name, split, seq_len, None)  # the task name carries the corpus fingerprint
  if key not in _SEQUENCE_CACHE:
    rows = text_files.load_rows(data_cfg, split, lambda: tokenized_rows(task, split, seq_len))
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


def decoder_features(targets_BL: np.ndarray) -> Batch:
  """Decoder features of unpacked target rows, as seqio.DecoderFeatureConverter(pack=False) makes them:
  inputs are the targets shifted right with 0 first, loss weights are 1 where the target is not padding."""
  targets_BL = np.asarray(targets_BL, np.int32)
  inputs_BL = np.zeros_like(targets_BL)
  inputs_BL[:, 1:] = targets_BL[:, :-1]
  return {'decoder_input_tokens': inputs_BL, 'decoder_target_tokens': targets_BL,
          'decoder_loss_weights': (targets_BL != 0).astype(np.float32)}


def row_batches(rows: np.ndarray, seq_len: int, batch_size: int) -> Iterator[Batch]:
  """Numpy batches of `batch_size` consecutive rows of `rows` (int32 [N, seq_len]); a partial last batch is dropped.

  Pure numpy (the rows are in memory already): no tf.data iterator whose finalisation could run inside an
  unrelated garbage collection at the end of a run.
  """
  del seq_len
  for start in range(0, len(rows) - batch_size + 1, batch_size):
    yield decoder_features(rows[start:start + batch_size])


def stream_batches(task: seqio.Task, split: str, seq_len: int, batch_size: int, *, seed: int, shuffle_buffer: int,
                   start: int, shard_index: int, num_shards: int) -> Iterator[Batch]:
  """One shuffled pass over a streamed split, from batch `start` on; sharded at the source (seqio ShardInfo)."""
  shard_info = seqio.ShardInfo(shard_index, num_shards) if num_shards > 1 else None
  ds = stream(task, split, seq_len, shuffle=True, seed=seed, shuffle_buffer_size=shuffle_buffer or None,
              shard_info=shard_info)
  return _numpy_batches(_feature_batches(ds, seq_len, batch_size).skip(start))
