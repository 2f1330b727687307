"""Fine-tuning data from an evaluation task's training split: the evaluator's own prompt, the gold continuation.

`data.task='task_finetune'` with `data.finetune_task` (an evaluation task with a 'train' split: piqa, boolq,
triviaqa, webqs, hellaswag, winogrande, arc_easy, arc_challenge, openbookqa, copa) and `data.finetune_data_dir`
(its `<task>/<split>.jsonl` files, docs/evaluation.md). `python -m samoe_jax.finetune` sets these.

Every document becomes one sequence, written exactly as the evaluator writes a few-shot example:
    context      = task.description + task.shot_text(doc)          (the zero-shot prompt; WinoGrande: the gold
                                                                     option filled in, as in its shots)
    continuation = task.target_delimiter + task.shot_answer(doc)    (the gold choice / answer)
split into ids the way the scorer splits a log-likelihood request (evaluation/tokenization.py), so the tokens
trained on are the tokens the evaluator scores. The row is [0] + context_ids + continuation_ids, cut to its last
data.seq_len + 1 ids (as the scorer cuts), inputs = row[:-1], targets = row[1:], and the loss weight is 1 on the
continuation's targets only (0 on the prompt and the padding).

Training batches: an epoch is a permutation of the documents seeded by (data.shuffle_seed, epoch), a partial last
batch is dropped; exact resume as every in-memory task (pipeline.TrainIterator). Validation batches: the task's
evaluated split (gold continuations), in file order.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from absl import logging
import numpy as np

TASK = 'task_finetune'
TRAIN_SPLIT = 'train'
Batch = dict[str, np.ndarray]


def tasks_with_training_split() -> tuple[str, ...]:
  from samoe_jax.evaluation.tasks.registry import TASK_CLASSES  # pylint: disable=g-import-not-at-top
  return tuple(name for name, cls in TASK_CLASSES.items() if cls.fewshot_split == TRAIN_SPLIT)


def get_finetune_task(data_cfg: Any):
  """The evaluation task of data.finetune_task over data.finetune_data_dir; ValueError when it has no 'train'."""
  from samoe_jax.evaluation.tasks.registry import get_task  # pylint: disable=g-import-not-at-top
  name, data_dir = data_cfg.finetune_task, data_cfg.finetune_data_dir
  allowed = tasks_with_training_split()
  if name not in allowed:
    raise ValueError(f'data.finetune_task={name!r}: fine-tuning needs an evaluation task with a {TRAIN_SPLIT!r} '
                     f'split; use one of {", ".join(allowed)}')
  if not isinstance(data_dir, str) or not data_dir:
    raise ValueError(f'data.finetune_data_dir={data_dir!r}: give the directory holding <task>/<split>.jsonl '
                     '(docs/evaluation.md)')
  return get_task(name, data_dir)


def formatted_example(task, doc: dict[str, Any]) -> tuple[str, str]:
  """(context, continuation) of one document: the evaluator's prompt and the gold continuation (module doc)."""
  answer = task.shot_answer(doc)
  if answer is None:
    raise ValueError(f'task {task.name!r}: a document has an empty gold answer, nothing to fine-tune on: {doc}')
  return task.description + task.shot_text(doc), task.target_delimiter + answer


def example_rows(tokenizer, pairs: list[tuple[str, str]], seq_len: int) -> tuple[np.ndarray, np.ndarray, int]:
  """Token rows of (context, continuation) pairs: int32 [N, seq_len + 1] (start token 0 first, zero-padded) and
  float32 [N, seq_len] loss weights on the continuation targets; and how many rows were cut to fit."""
  rows = np.zeros((len(pairs), seq_len + 1), np.int32)
  weights = np.zeros((len(pairs), seq_len), np.float32)
  cut = 0
  for i, (context, continuation) in enumerate(pairs):
    context_ids, continuation_ids = tokenizer.split_context_continuation(context, continuation)
    if not continuation_ids:
      raise ValueError(f'continuation {continuation!r} after {context[-60:]!r} encodes to no tokens')
    row = [0] + context_ids + continuation_ids
    if len(row) > seq_len + 1:
      row, cut = row[-(seq_len + 1):], cut + 1
    n = len(row)
    rows[i, :n] = row
    scored = min(len(continuation_ids), n - 1)
    weights[i, n - 1 - scored:n - 1] = 1.0
  return rows, weights, cut


def _features(rows: np.ndarray, weights: np.ndarray) -> Batch:
  return {'decoder_input_tokens': rows[:, :-1], 'decoder_target_tokens': rows[:, 1:],
          'decoder_loss_weights': weights}


class SplitExamples:
  """One split of the fine-tuning task, tokenized once: rows [N, L + 1], weights [N, L], a content fingerprint."""

  _CACHE: dict[tuple, 'SplitExamples'] = {}

  def __init__(self, rows: np.ndarray, weights: np.ndarray, fingerprint: str):
    self.rows, self.weights, self.fingerprint = rows, weights, fingerprint

  @classmethod
  def load(cls, data_cfg: Any, split: str | None) -> 'SplitExamples':
    """`split` of data.finetune_task (None: the task's evaluated split), cached per process."""
    task = get_finetune_task(data_cfg)
    split = split or task.eval_split
    path = task.path(split)
    if not os.path.isfile(path):
      raise ValueError(f'data.finetune_task={task.name!r}: {path} does not exist. {task.how_to_get(split)}')
    with open(path, 'rb') as f:
      digest = hashlib.sha256(f.read()).hexdigest()
    key = (task.name, path, digest, data_cfg.vocabulary, int(data_cfg.seq_len))
    if key not in cls._CACHE:
      from samoe_jax.evaluation.tokenization import EvalTokenizer  # pylint: disable=g-import-not-at-top
      from samoe_jax.data import vocabularies  # pylint: disable=g-import-not-at-top
      tokenizer = EvalTokenizer(vocabularies.get_vocabulary(data_cfg.vocabulary))
      pairs = [formatted_example(task, doc) for doc in task.docs(split)]
      if not pairs:
        raise ValueError(f'{path} holds no documents: nothing to fine-tune or validate on')
      rows, weights, cut = example_rows(tokenizer, pairs, int(data_cfg.seq_len))
      if cut:
        logging.warning('%s: %d of %d examples are longer than data.seq_len=%d + 1 tokens and keep only their last '
                        'tokens (as the evaluator scores them)', path, cut, len(pairs), data_cfg.seq_len)
      cls._CACHE[key] = cls(rows, weights, f'{task.name}:{split}:{digest[:16]}')
    return cls._CACHE[key]


def training_examples(data_cfg: Any) -> SplitExamples:
  """The training split, checked to hold at least one global batch (data.batch_size documents); a shorter one is
  refused here, before a run writes anything (data/sources.check_data_source)."""
  examples = SplitExamples.load(data_cfg, TRAIN_SPLIT)
  if len(examples.rows) < data_cfg.batch_size:
    raise ValueError(f'data.finetune_task={data_cfg.finetune_task!r} has {len(examples.rows)} training documents, '
                     f'fewer than one global batch (data.batch_size={data_cfg.batch_size}).')
  return examples


def epoch_batches(examples: SplitExamples, global_batch: int, seed: int, epoch: int, start: int,
                  shard_index: int, num_shards: int) -> Any:
  """Batches of `epoch` from batch `start` on: a permutation seeded by (seed, epoch), this shard's rows of each."""
  n = len(examples.rows)
  order = np.random.default_rng([int(seed), int(epoch)]).permutation(n)[:n // global_batch * global_batch]
  b = global_batch // num_shards
  for j in range(start, n // global_batch):
    idx = order[j * global_batch + shard_index * b:j * global_batch + (shard_index + 1) * b]
    yield _features(examples.rows[idx], examples.weights[idx])


def eval_batches(data_cfg: Any, num_batches: int, shard_index: int, num_shards: int) -> list[Batch]:
  """The first `num_batches` global batches of the task's evaluated split in file order (gold continuations);
  a short split fills its last batch with all-zero rows (loss weight 0)."""
  examples = SplitExamples.load(data_cfg, None)
  global_batch = int(data_cfg.batch_size)
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
