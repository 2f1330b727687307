"""The pretraining input pipeline: seqio task -> fixed-length sequences -> decoder features -> numpy batches.

Each batch is {'decoder_input_tokens': int32 [b, L] (targets shifted right, 0 first), 'decoder_target_tokens':
int32 [b, L], 'decoder_loss_weights': float32 [b, L] (1 where target != 0)} with b = data.batch_size // num_shards
and L = data.seq_len, made by seqio's DecoderFeatureConverter (pack=False).

In-memory tasks (data.task 'shakespeare', 'shakespeare_tiny', 'text_files') are tokenized once per process in plain
Python (in_memory.py: no TensorFlow or seqio) and kept in memory as an int32 [N, L] array ('text_files' rows also
on disk with data.cache_dir); an epoch is a permutation
of its rows seeded by (data.shuffle_seed, epoch), and global batch j of an epoch is rows [j*B, (j+1)*B) of that
permutation, of which shard s takes rows [s*b, (s+1)*b). TFDS corpora
('tfds_lm') stream through seqio and tf.data (sequences.py) with a data.shuffle_buffer shuffle seeded per epoch,
sharded at the source.
`TrainIterator.get_state()` / `set_state()` give exact resume: the same batches as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from samoe_jax.data import in_memory
from samoe_jax.data import sources
from samoe_jax.data import finetune_rows

Batch = dict[str, np.ndarray]
FEATURES = ('decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights')
_STATE_KEYS = ('epoch', 'batch_in_epoch', 'batches_served')
_CHECKED_STATE_KEYS = ('task', 'seq_len', 'batch_size', 'shuffle_seed')


def _sequences(task: str):
  """The TensorFlow half of the pipeline for the streamed data.task `task`, imported on first use (importing this
  module stays cheap); an unknown task or missing TensorFlow / TFDS / seqio is refused in one line."""
  sources.check_task(task)
  sources.require_streaming(task)
  from samoe_jax.data import sequences  # local import: imports TensorFlow and seqio; only data.task='tfds_lm' needs it
  return sequences


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_sharding(data_cfg: Any, shard_index: int, num_shards: int) -> int:
  """Validates the batch settings; returns the per-shard batch size."""
  for key in ('seq_len', 'batch_size'):
    value = getattr(data_cfg, key)
    if not _is_int(value) or value <= 0:
      raise ValueError(f'data.{key}={value!r} must be a positive integer.')
  if not _is_int(num_shards) or num_shards <= 0:
    raise ValueError(f'num_shards={num_shards!r} must be a positive integer.')
  if not _is_int(shard_index) or not 0 <= shard_index < num_shards:
    raise ValueError(f'shard_index={shard_index!r} must be an integer in [0, num_shards={num_shards}).')
  if data_cfg.batch_size % num_shards:
    raise ValueError(f'data.batch_size={data_cfg.batch_size} is not divisible by num_shards={num_shards}: the '
                     f'global batch must split evenly over the data shards.')
  return int(data_cfg.batch_size) // int(num_shards)


def _shard_rows(rows: np.ndarray, global_batch: int, shard_index: int, num_shards: int) -> np.ndarray:
  """Shard `shard_index`'s slice of every global batch of `rows` (whose length is a multiple of global_batch)."""
  b = global_batch // num_shards
  grouped = rows.reshape(len(rows) // global_batch, global_batch, *rows.shape[1:])
  return grouped[:, shard_index * b:(shard_index + 1) * b].reshape(-1, *rows.shape[1:])


def epoch_seed(shuffle_seed: int, epoch: int) -> int:
  """The 31-bit shuffling seed of one epoch, derived from data.shuffle_seed and the epoch number."""
  digest = hashlib.sha256(f'{int(shuffle_seed)}:{int(epoch)}'.encode()).digest()
  return int.from_bytes(digest[:4], 'little') & 0x7FFFFFFF


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



def count_tokens(batch: Batch) -> int:
  """The number of non-padding target tokens (positions with loss weight > 0) in `batch`."""
  return int(np.count_nonzero(batch['decoder_loss_weights']))


# ---------------------------------------------------------------------------------------------- training


class TrainIterator:
  """Infinite, deterministic iterator of training batches with exact get_state() / set_state() resume."""

  def __init__(self, data_cfg: Any, *, shard_index: int = 0, num_shards: int = 1,
               examples: finetune_rows.ExampleRows | None = None):
    self._batch = _check_sharding(data_cfg, shard_index, num_shards)
    self._cfg = data_cfg
    self._shard_index, self._num_shards = shard_index, num_shards
    self._epoch = self._batch_in_epoch = self._served = 0
    self._epoch_iter: Iterator[Batch] | None = None
    self._finetune = None
    if data_cfg.task == finetune_rows.TASK:   # an evaluation task's training split (finetune_rows.py)
      self._finetune = finetune_rows.require(examples, 'training')
      return
    self._in_memory = in_memory.is_in_memory(data_cfg.task)
    if not self._in_memory:
      self._seq = _sequences(data_cfg.task)
      self._task = self._seq.get_task(data_cfg, 'train_split')
      return
    in_memory.check_split(data_cfg, 'train_split')
    self._name = in_memory.task_name(data_cfg)   # for 'text_files' the corpus fingerprint: files read once here
    rows = self._rows = in_memory.rows(data_cfg, data_cfg.train_split, self._name)
    tokens = int(np.count_nonzero(rows))
    if tokens < data_cfg.seq_len:
      raise ValueError(
          f'data.task={data_cfg.task!r} split {data_cfg.train_split!r} has {tokens} tokens, fewer than one '
          f'sequence of data.seq_len={data_cfg.seq_len}.')
    if len(rows) < data_cfg.batch_size:
      raise ValueError(
          f'data.task={data_cfg.task!r} split {data_cfg.train_split!r} has {len(rows)} sequences of '
          f'data.seq_len={data_cfg.seq_len} tokens, fewer than one global batch (data.batch_size='
          f'{data_cfg.batch_size}).')

  def __iter__(self) -> TrainIterator:
    return self

  def _epoch_batches(self, epoch: int, start: int) -> Iterator[Batch]:
    """The batches of `epoch` from batch index `start` on (this shard's rows)."""
    cfg = self._cfg
    if self._finetune is not None:
      return finetune_rows.epoch_batches(self._finetune, cfg.batch_size, cfg.shuffle_seed, epoch, start,
                                         self._shard_index, self._num_shards)
    if self._in_memory:
      rows = self._rows
      num_batches = len(rows) // cfg.batch_size
      order = np.random.default_rng([int(cfg.shuffle_seed), epoch]).permutation(len(rows))
      order = _shard_rows(order[:num_batches * cfg.batch_size], cfg.batch_size, self._shard_index,
                          self._num_shards)
      return row_batches(rows[order[start * self._batch:]], cfg.seq_len, self._batch)
    return self._seq.stream_batches(
        self._task, cfg.train_split, cfg.seq_len, self._batch, seed=epoch_seed(cfg.shuffle_seed, epoch),
        shuffle_buffer=cfg.shuffle_buffer, start=start, shard_index=self._shard_index, num_shards=self._num_shards)

  def __next__(self) -> Batch:
    while True:
      if self._epoch_iter is None:
        self._epoch_iter = self._epoch_batches(self._epoch, self._batch_in_epoch)
      try:
        batch = next(self._epoch_iter)
      except StopIteration:
        if self._batch_in_epoch == 0:
          raise ValueError(f'epoch {self._epoch} of data.task={self._cfg.task!r} split '
                           f'{self._cfg.train_split!r} produced no full batch of {self._batch} sequences of '
                           f'{self._cfg.seq_len} tokens: the corpus is too small.') from None
        self._epoch, self._batch_in_epoch, self._epoch_iter = self._epoch + 1, 0, None
        continue
      self._batch_in_epoch += 1
      self._served += 1
      return batch

  def close(self) -> None:
    """Releases the current epoch's stream now (a tf.data iterator for TFDS corpora), not at some later GC."""
    if self._epoch_iter is not None and hasattr(self._epoch_iter, 'close'):
      self._epoch_iter.close()
    self._epoch_iter = None

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable position (plus the settings it is only valid for)."""
    cfg = self._cfg
    state = {'epoch': self._epoch, 'batch_in_epoch': self._batch_in_epoch, 'batches_served': self._served,
             'task': cfg.task, 'seq_len': cfg.seq_len, 'batch_size': cfg.batch_size,
             'shuffle_seed': cfg.shuffle_seed}
    if cfg.task == 'text_files':   # the task name carries the corpus fingerprint (files, contents, settings)
      state['corpus'] = self._name
    if self._finetune is not None:   # task, split and file contents
      state['corpus'] = self._finetune.fingerprint
    return state

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues from `state` (from get_state); the next batches are those the saving iterator would have made."""
    for key in _STATE_KEYS:
      value = state.get(key) if isinstance(state, dict) else None
      if not _is_int(value) or value < 0:
        raise ValueError(f'iterator state {state!r}: {key!r} must be a non-negative integer, got {value!r}.')
    mine = self.get_state()
    for key in _CHECKED_STATE_KEYS:
      if key in state and state[key] != mine[key]:
        raise ValueError(f'iterator state was saved with data.{key}={state[key]!r} but this iterator has '
                         f'data.{key}={mine[key]!r}: the saved position means nothing here.')
    if 'corpus' in state and state['corpus'] != mine.get('corpus'):
      raise ValueError(f'iterator state was saved on the corpus {state["corpus"]!r}, but the data.* '
                       f'settings now give {mine.get("corpus")!r} (the files, their contents or the split '
                       'changed): the saved position means nothing here; resume with the original files or train '
                       'in a new --workdir.')
    self._epoch, self._batch_in_epoch, self._served = (int(state[k]) for k in _STATE_KEYS)
    self._epoch_iter = None


def make_train_iterator(data_cfg: Any, *, shard_index: int = 0, num_shards: int = 1,
                        examples: finetune_rows.ExampleRows | None = None) -> TrainIterator:
  """The infinite training iterator for `data_cfg` (batches of data.batch_size // num_shards sequences).
  examples: the training rows of data.task='task_finetune' (evaluation/task_finetune.train_rows)."""
  return TrainIterator(data_cfg, shard_index=shard_index, num_shards=num_shards, examples=examples)


# ---------------------------------------------------------------------------------------------- evaluation


def make_eval_batches(data_cfg: Any, num_batches: int, *, shard_index: int = 0, num_shards: int = 1,
                      examples: finetune_rows.ExampleRows | None = None) -> list[Batch]:
  """The first `num_batches` global batches of data.eval_split, in corpus order (this shard's rows); for
  data.task='task_finetune' of `examples`, its evaluated split (evaluation/task_finetune.eval_rows).

  A split shorter than that gives as many full batches as it has, and at least one: a split with fewer sequences
  than one global batch fills it with all-zero rows (loss weight 0).
  """
  if not _is_int(num_batches) or num_batches <= 0:
    raise ValueError(f'num_batches={num_batches!r} must be a positive integer.')
  batch = _check_sharding(data_cfg, shard_index, num_shards)
  if data_cfg.task == finetune_rows.TASK:   # the task's evaluated split, gold continuations (finetune_rows.py)
    return finetune_rows.eval_batches(finetune_rows.require(examples, 'validation'), int(data_cfg.batch_size),
                                      num_batches, shard_index, num_shards)
  global_batch, seq_len = data_cfg.batch_size, data_cfg.seq_len
  wanted = num_batches * global_batch
  if in_memory.is_in_memory(data_cfg.task):
    in_memory.check_split(data_cfg, 'eval_split')
    rows = in_memory.rows(data_cfg, data_cfg.eval_split)[:wanted]
    if not len(rows):
      raise ValueError(f'data.eval_split={data_cfg.eval_split!r} of data.task={data_cfg.task!r} has no tokens: '
                       'nothing to evaluate on (text_files: set data.validation_files, or data.files with '
                       'data.validation_fraction).')
  else:
    seq = _sequences(data_cfg.task)
    task = seq.get_task(data_cfg, 'eval_split')
    rows = seq.cached_rows(task, data_cfg.eval_split, seq_len, wanted)[:wanted]
  if len(rows) < global_batch:
    rows = np.concatenate([rows, np.zeros((global_batch - len(rows), seq_len), np.int32)])
  rows = rows[:len(rows) // global_batch * global_batch]
  return list(row_batches(_shard_rows(rows, global_batch, shard_index, num_shards), seq_len, batch))
