"""Batches of the fine-tuning task (data.task='task_finetune'): token rows with per-target loss weights.

The rows come from above this floor: evaluation/task_finetune.py writes an evaluation task's documents as the
evaluator writes them and tokenizes them once into ExampleRows; the pipeline (pipeline.py) takes them as its
`examples` argument and batches them here.

Training batches: an epoch is a permutation of the documents seeded by (data.shuffle_seed, epoch), a partial last
batch is dropped; exact resume as every in-memory task (pipeline.TrainIterator). Validation batches: the task's
evaluated split (gold continuations), in file order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

TASK = 'task_finetune'
Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class ExampleRows:
  """One split, tokenized: rows int32 [N, L + 1] (start token 0 first, zero-padded), weights float32 [N, L]
  (1 on the continuation's targets only) and a content fingerprint."""
  rows: np.ndarray
  weights: np.ndarray
  fingerprint: str


def require(examples: ExampleRows | None, what: str) -> ExampleRows:
  """`examples`, or ValueError saying where a fine-tuning run's rows come from."""
  if examples is None:
    raise ValueError(f'data.task={TASK!r}: the {what} batches need the task\'s rows (examples=, built by '
                     'evaluation/task_finetune.py)')
  return examples


def _features(rows: np.ndarray, weights: np.ndarray) -> Batch:
  return {'decoder_input_tokens': rows[:, :-1], 'decoder_target_tokens': rows[:, 1:],
          'decoder_loss_weights': weights}


def epoch_batches(examples: ExampleRows, global_batch: int, seed: int, epoch: int, start: int,
                  shard_index: int, num_shards: int) -> Iterator[Batch]:
  """Batches of `epoch` from batch `start` on: a permutation seeded by (seed, epoch), this shard's rows of each."""
  n = len(examples.rows)
  order = np.random.default_rng([int(seed), int(epoch)]).permutation(n)[:n // global_batch * global_batch]
  b = global_batch // num_shards
  for j in range(start, n // global_batch):
    idx = order[j * global_batch + shard_index * b:j * global_batch + (shard_index + 1) * b]
    yield _features(examples.rows[idx], examples.weights[idx])


def eval_batches(examples: ExampleRows, global_batch: int, num_batches: int, shard_index: int,
                 num_shards: int) -> list[Batch]:
  """The first `num_batches` global batches of the rows in file order; a short split fills its last batch with
  all-zero rows (loss weight 0)."""
  rows, weights = examples.rows[:num_batches * global_batch], examples.weights[:num_batches * global_batch]
  pad = -len(rows) % global_batch
  rows = np.concatenate([rows, np.zeros((pad, rows.shape[1]), np.int32)])
  weights = np.concatenate([weights, np.zeros((pad, weights.shape[1]), np.float32)])
  b = global_batch // num_shards
  out = []
  for j in range(len(rows) // global_batch):
    sl = slice(j * global_batch + shard_index * b, j * global_batch + (shard_index + 1) * b)
    out.append(_features(rows[sl], weights[sl]))
  return out
