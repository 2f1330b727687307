"""Perplexity on held-out text: a pretraining task's validation split, or local text files.

Validation split: token-level cross-entropy of the whole split (or its first N batches) through the same
compiled eval step as the trainer's validation; perplexity = exp(cross-entropy).

Local files, scored as lm-evaluation-harness scores WikiText (loglikelihood_rolling over whole documents, in
disjoint windows of the model's maximum length): a `.jsonl` file holds one document per line in its 'text'
field; any other file is one document. Reported: token_perplexity = exp(-sum ll / tokens),
word_perplexity = exp(-sum ll / words), byte_perplexity = exp(-sum ll / UTF-8 bytes) and
bits_per_byte = -sum ll / bytes / ln 2, with words counted by whitespace splitting as the harness does.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from samoe_jax.data import pipeline
from samoe_jax.evaluation import task_finetune
from samoe_jax.evaluation.requests import Backend, RollingLoglikelihoodRequest
from samoe_jax.evaluation.tasks.readers import read_text
from samoe_jax.evaluation.validation import validation_metrics, make_eval_step
from samoe_jax.sharding.partitioner import Partitioner

ALL_BATCHES = 1 << 30


def parse_validation_batches(value: str, config: Any, allow_none: bool = True) -> int:
  """A --validation_batches flag: 'config' (train.eval_batches), 'all' (0: the whole split), 'none' (-1: skip;
  only when allow_none) or a count >= 1. Raises ValueError naming the value and what is allowed."""
  if value == 'config':
    return int(config.train.eval_batches)
  if value == 'all':
    return 0
  if value == 'none' and allow_none:
    return -1
  if value.isdigit() and int(value) > 0:
    return int(value)
  allowed = 'config (train.eval_batches), all, none or a count >= 1' if allow_none else (
      'config (train.eval_batches), all or a count >= 1')
  raise ValueError(f'--validation_batches={value!r}: use {allowed}')


def read_documents(path: str) -> list[str]:
  """The documents of a local text file (see the module docstring); errors name the file and line."""
  if not os.path.isfile(path):
    raise ValueError(f'perplexity file {path!r} does not exist')
  text = read_text(path)   # bytes that are not UTF-8: an error naming the line and byte offset
  if not path.endswith('.jsonl'):
    docs = [text]
  else:
    docs = []
    for number, line in enumerate(text.split('\n'), 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as err:
        raise ValueError(f'{path}:{number}: not valid JSON ({err.msg})') from err
      if not isinstance(record, dict) or not isinstance(record.get('text'), str):
        raise ValueError(f'{path}:{number}: a JSON object with a string field "text" is required')
      docs.append(record['text'])
  if not any(d.strip() for d in docs):
    raise ValueError(f'perplexity file {path!r} holds no text: there is nothing to score (a perplexity over 0 '
                     'tokens would read as 1)')
  return docs


def text_perplexity(backend: Backend, tokenizer: Any, paths: Sequence[str]) -> dict[str, dict[str, float]]:
  """{file basename: {token_perplexity, word_perplexity, byte_perplexity, bits_per_byte}} per file."""
  out = {}
  for path in paths:
    docs = read_documents(path)
    lls = backend.loglikelihood_rolling([RollingLoglikelihoodRequest(d) for d in docs])
    total = -sum(lls)
    tokens = sum(len(tokenizer.encode(d)) for d in docs)
    words = sum(len(re.split(r'\s+', d)) for d in docs)
    num_bytes = sum(len(d.encode('utf-8')) for d in docs)
    out[f'ppl:{os.path.basename(path)}'] = {
        'token_perplexity': math.exp(min(total / max(tokens, 1), 700.0)),
        'word_perplexity': math.exp(min(total / max(words, 1), 700.0)),
        'byte_perplexity': math.exp(min(total / max(num_bytes, 1), 700.0)),
        'bits_per_byte': total / max(num_bytes, 1) / math.log(2),
        'num_tokens': float(tokens)}
  return out


def validation_perplexity(model: Any, params: Any, partitioner: Partitioner, config: ml_collections.ConfigDict,
                          num_batches: int = 0) -> dict[str, float]:
  """Cross-entropy, perplexity and token count of data.eval_split of the config's pretraining task
  (num_batches = 0: the whole split)."""
  shard = {'shard_index': jax.process_index(), 'num_shards': jax.process_count()}
  host = pipeline.make_eval_batches(config.data, num_batches or ALL_BATCHES, **shard,
                                    examples=task_finetune.eval_rows(config.data))
  batches = [partitioner.shard_batch(b) for b in host]
  eval_fn = make_eval_step(model, partitioner, partitioner.logical_to_mesh(model.param_logical_axes()))
  metrics = validation_metrics(eval_fn, params, batches)
  return {'cross_entropy': metrics['eval/cross_entropy'], 'perplexity': metrics['eval/perplexity'],
          'accuracy': metrics['eval/accuracy'], 'num_tokens': metrics['eval/num_tokens']}
