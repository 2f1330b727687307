"""The in-memory tasks in plain Python: documents -> ids -> int32 [N, data.seq_len] rows, made once per process.

data.task 'shakespeare' / 'shakespeare_tiny' (the embedded corpus, samoe_jax/data/corpus) and 'text_files'
(text_files.py; its rows also kept in data.cache_dir) are tokenized here with data.vocabulary's plain vocabulary
(vocabularies.py): every document's ids followed by EOS, all concatenated in corpus order and cut into rows of
data.seq_len, the last, shorter row zero-padded. These are the rows the seqio task of the same name gives
(tasks.py: tokenize, append_eos, preprocessors.concatenate_and_split; tests/test_in_memory.py compares them on
the shipped corpora), so no TensorFlow or seqio is needed to train on these tasks.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from samoe_jax.data import documents
from samoe_jax.data import text_files
from samoe_jax.data import text_vocabularies
from samoe_jax.data import vocabularies

# Embedded corpora: task -> (directory under samoe_jax/data/corpus, file suffix).
EMBEDDED = {'shakespeare': ('shakespeare', '.txt.gz'), 'shakespeare_tiny': ('shakespeare_tiny', '.txt')}
EMBEDDED_SPLITS = ('train', 'validation')
IN_MEMORY = (*EMBEDDED, text_files.TASK)
ENCODE_CHUNK = 256   # documents per vocabulary.encode_batch call

# (task name, split, seq_len) -> read-only int32 [N, seq_len] rows; the task name carries the vocabulary and, for
# 'text_files', the corpus fingerprint.
_ROWS: dict[tuple[str, str, int], np.ndarray] = {}


def is_in_memory(task: str) -> bool:
  """Whether data.task is tokenized once per process and held in memory (the embedded corpora, 'text_files')
  rather than streamed (a TFDS corpus)."""
  return task in IN_MEMORY


def corpus_path(corpus: str, split: str) -> str:
  """The file holding `split` of the embedded corpus `corpus`."""
  directory, suffix = EMBEDDED[corpus]
  return os.path.join(documents.CORPUS_DIR, directory, split + suffix)


@functools.lru_cache(maxsize=None)
def embedded_documents(path: str) -> tuple[str, ...]:
  """The documents of an embedded corpus file, read once per process."""
  return tuple(documents.read_documents(path))


def task_name(data_cfg: Any) -> str:
  """The name of the seqio task of an in-memory data.task: '<task>_<vocab>' for an embedded corpus,
  'text_files_<vocab>_<first 16 hex digits of the corpus fingerprint>' for text files (files are read)."""
  vocab_key = vocabularies.vocabulary_key(data_cfg.vocabulary)
  if data_cfg.task in EMBEDDED:
    return f'{data_cfg.task}_{vocab_key}'
  if data_cfg.task == text_files.TASK:
    return f'text_files_{vocab_key}_{text_files.load_corpus(data_cfg).fingerprint[:16]}'
  raise ValueError(f'data.task={data_cfg.task!r} is not an in-memory task: use one of {IN_MEMORY}.')


def check_split(data_cfg: Any, key: str) -> None:
  """Raises ValueError when data.`key` (train_split / eval_split) is not a split of the in-memory task."""
  split = getattr(data_cfg, key)
  splits = text_files.SPLITS if data_cfg.task == text_files.TASK else EMBEDDED_SPLITS
  if split not in splits:
    raise ValueError(f'data.{key}={split!r} is not a split of task {task_name(data_cfg)!r}: use one of {splits}.')


def split_documents(data_cfg: Any, split: str) -> Sequence[str]:
  """The documents of `split` in corpus order."""
  if data_cfg.task == text_files.TASK:
    return text_files.load_corpus(data_cfg).documents[split]
  return embedded_documents(corpus_path(data_cfg.task, split))


def pack_rows(docs: Sequence[str], vocab: text_vocabularies.Vocabulary, seq_len: int) -> np.ndarray:
  """int32 [ceil(T / seq_len), seq_len]: the ids of every document followed by EOS (T in all), cut into rows;
  the last row zero-padded. [0, seq_len] when there are no documents."""
  eos = np.array([vocab.eos_id], np.int32)
  chunks = []
  for start in range(0, len(docs), ENCODE_CHUNK):
    ids = vocab.encode_batch(docs[start:start + ENCODE_CHUNK])
    chunks.append(np.concatenate([part for doc in ids for part in (doc, eos)]))
  stream = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)
  rows = np.zeros((-(-len(stream) // seq_len), seq_len), np.int32)
  rows.reshape(-1)[:len(stream)] = stream
  return rows


def tokenize(data_cfg: Any, split: str) -> np.ndarray:
  """The rows of `split`, tokenized now (not cached)."""
  vocab = vocabularies.get_vocabulary(data_cfg.vocabulary)
  return pack_rows(split_documents(data_cfg, split), vocab, int(data_cfg.seq_len))


def rows(data_cfg: Any, split: str, name: str | None = None) -> np.ndarray:
  """The read-only int32 [N, data.seq_len] rows of `split`, made once per process; 'text_files' rows come from
  data.cache_dir when it holds them (text_files.load_rows). `name`: task_name(data_cfg) if known (for
  'text_files' computing it reads and hashes every file)."""
  key = (name or task_name(data_cfg), split, int(data_cfg.seq_len))
  if key not in _ROWS:
    if data_cfg.task == text_files.TASK:
      made = text_files.load_rows(data_cfg, split, lambda: tokenize(data_cfg, split))
    else:
      made = tokenize(data_cfg, split)
    made.setflags(write=False)
    _ROWS[key] = made
  return _ROWS[key]


def forget(name: str) -> None:
  """Drops the in-process rows of the task `name` (tests: the disk cache is then the only source)."""
  for key in [k for k in _ROWS if k[0] == name]:
    del _ROWS[key]
