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

The data pipeline batches these rows (data/finetune_rows.py): a fine-tuning run's callers pass train_rows(data) /
eval_rows(data) to pipeline.make_train_iterator / make_eval_batches as `examples`.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from absl import logging
import numpy as np

from samoe_jax.config.checks import Problems, register
from samoe_jax.data import vocabularies
from samoe_jax.data.finetune_rows import TASK, ExampleRows
from samoe_jax.evaluation.tasks.registry import TASK_CLASSES, get_task
from samoe_jax.evaluation.tokenization import EvalTokenizer

TRAIN_SPLIT = 'train'
_CACHE: dict[tuple, ExampleRows] = {}


def tasks_with_training_split() -> tuple[str, ...]:
  return tuple(name for name, cls in TASK_CLASSES.items() if cls.fewshot_split == TRAIN_SPLIT)


@register('data')
def check_finetune_settings(c: Any, problems: Problems) -> None:
  """data.finetune_task and data.finetune_data_dir when data.task='task_finetune' (a registered check,
  config/checks.py)."""
  d = c.data
  if d.task != TASK:
    return
  if d.finetune_task not in tasks_with_training_split():
    problems.add('data.finetune_task', d.finetune_task, 'must be an evaluation task with a training split: one of '
                 + ', '.join(tasks_with_training_split()))
  if not (isinstance(d.finetune_data_dir, str) and d.finetune_data_dir):
    problems.add('data.finetune_data_dir', d.finetune_data_dir, 'must name the directory of <task>/<split>.jsonl '
                 'files')


def get_finetune_task(data_cfg: Any):
  """The evaluation task of data.finetune_task over data.finetune_data_dir; ValueError when it has no 'train'."""
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


def load_split(data_cfg: Any, split: str | None) -> ExampleRows:
  """`split` of data.finetune_task (None: the task's evaluated split), tokenized once and cached per process."""
  task = get_finetune_task(data_cfg)
  split = split or task.eval_split
  path = task.path(split)
  if not os.path.isfile(path):
    raise ValueError(f'data.finetune_task={task.name!r}: {path} does not exist. {task.how_to_get(split)}')
  with open(path, 'rb') as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  key = (task.name, path, digest, data_cfg.vocabulary, int(data_cfg.seq_len))
  if key not in _CACHE:
    tokenizer = EvalTokenizer(vocabularies.get_vocabulary(data_cfg.vocabulary))
    pairs = [formatted_example(task, doc) for doc in task.docs(split)]
    if not pairs:
      raise ValueError(f'{path} holds no documents: nothing to fine-tune or validate on')
    rows, weights, cut = example_rows(tokenizer, pairs, int(data_cfg.seq_len))
    if cut:
      logging.warning('%s: %d of %d examples are longer than data.seq_len=%d + 1 tokens and keep only their last '
                      'tokens (as the evaluator scores them)', path, cut, len(pairs), data_cfg.seq_len)
    _CACHE[key] = ExampleRows(rows, weights, f'{task.name}:{split}:{digest[:16]}')
  return _CACHE[key]


def training_examples(data_cfg: Any) -> ExampleRows:
  """The training split, checked to hold at least one global batch (data.batch_size documents); a shorter one is
  refused here, before a run writes anything (check_data)."""
  examples = load_split(data_cfg, TRAIN_SPLIT)
  if len(examples.rows) < data_cfg.batch_size:
    raise ValueError(f'data.finetune_task={data_cfg.finetune_task!r} has {len(examples.rows)} training documents, '
                     f'fewer than one global batch (data.batch_size={data_cfg.batch_size}).')
  return examples


def train_rows(data_cfg: Any) -> ExampleRows | None:
  """The `examples` of pipeline.make_train_iterator: a fine-tuning run's training split; None for any other
  data.task."""
  return training_examples(data_cfg) if data_cfg.task == TASK else None


def eval_rows(data_cfg: Any) -> ExampleRows | None:
  """The `examples` of pipeline.make_eval_batches: a fine-tuning run's evaluated split (gold continuations); None
  for any other data.task."""
  return load_split(data_cfg, None) if data_cfg.task == TASK else None


def check_data(data_cfg: Any) -> None:
  """A fine-tuning run's data checks before it writes anything (training/preflight.py): both splits read and
  tokenized (cached for the run), at least one global batch of training documents; nothing for another data.task."""
  train_rows(data_cfg)
  eval_rows(data_cfg)
