"""The seqio pretraining tasks: the embedded Shakespeare corpus (full and tiny), your text files, a TFDS corpus.

Tasks are registered on first use, one per (task, vocabulary[, TFDS dataset]):

  shakespeare_<vocab>        the embedded corpus (samoe_jax/data/corpus/shakespeare), splits train / validation
  shakespeare_tiny_<vocab>   ~16 KB / ~4 KB slices of it, for fast tests and smoke runs
  tfds_lm_<vocab>_<hash>     data.text_key of data.tfds_name read from the prepared directory data.tfds_data_dir
  text_files_<vocab>_<hash>  .txt / .jsonl files named by data.train_files / data.files (text_files.py); <hash> is
                             the corpus fingerprint (file contents, file list, document and split settings)

<vocab> is `vocabularies.vocabulary_key(data.vocabulary)`. Every task yields {'targets': int32 [<= seq_len]}:
documents are tokenized, end with EOS (id 1), are concatenated and cut into data.seq_len pieces.
Nothing is ever downloaded: a missing TFDS directory or dataset is an error naming both.

Training reads only 'tfds_lm' through seqio (data/sequences.py): the in-memory tasks make the same rows in plain
Python (data/in_memory.py, no TensorFlow); their seqio tasks remain for comparison and for seqio users.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from samoe_jax.data import tf_setup  # pylint: disable=unused-import  # before seqio: quiet TF, no GPU

import seqio  # pylint: disable=g-import-not-at-top,wrong-import-order
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-order

from samoe_jax.data import in_memory  # pylint: disable=g-import-not-at-top,wrong-import-order
from samoe_jax.data import preprocessors  # pylint: disable=g-import-not-at-top,wrong-import-order
from samoe_jax.data import seqio_vocabularies  # pylint: disable=g-import-not-at-top,wrong-import-order
from samoe_jax.data import sources  # pylint: disable=g-import-not-at-top,wrong-import-order
from samoe_jax.data import text_files  # pylint: disable=g-import-not-at-top,wrong-import-order
from samoe_jax.data import vocabularies  # pylint: disable=g-import-not-at-top,wrong-import-order
from samoe_jax.data.in_memory import EMBEDDED, EMBEDDED_SPLITS  # pylint: disable=g-import-not-at-top,wrong-import-order
from samoe_jax.data.tfds_dataset import check_tfds_dataset  # pylint: disable=g-import-not-at-top,wrong-import-order

# text_files examples are chunks of this many documents when the vocabulary encodes a batch of strings at once
# (SentencePiece, BPE): one tf.data element per chunk, not per (often tiny) document. Same tokens either way.
TEXT_FILES_CHUNK = 256


# ---------------------------------------------------------------------------------------------- embedded corpora


def embedded_dataset(split: str, shuffle_files: bool, seed: int | None = None, *, corpus: str) -> tf.data.Dataset:
  """seqio dataset_fn: the documents of one split as {'text': string}, in corpus order (one file per split)."""
  del shuffle_files, seed  # one file per split; the pipeline shuffles sequences
  if split not in EMBEDDED_SPLITS:
    raise ValueError(f'split {split!r} of corpus {corpus!r} does not exist: use one of {EMBEDDED_SPLITS}.')
  docs = in_memory.embedded_documents(in_memory.corpus_path(corpus, split))
  return tf.data.Dataset.from_tensor_slices({'text': tf.constant(docs)})


def _embedded_source(corpus: str) -> seqio.DataSource:
  return seqio.FunctionDataSource(dataset_fn=functools.partial(embedded_dataset, corpus=corpus),
                                  splits=EMBEDDED_SPLITS)


# ---------------------------------------------------------------------------------------------- prepared TFDS


def _tfds_source(tfds_name: str, tfds_data_dir: str) -> seqio.DataSource:
  # read_only=True: seqio reads with builder.as_dataset and never calls tfds.load(download=True).
  return seqio.TfdsDataSource(tfds_name=tfds_name, tfds_data_dir=tfds_data_dir, read_only=True)


# ---------------------------------------------------------------------------------------------- text files


def text_files_dataset(split: str, shuffle_files: bool, seed: int | None = None, *, corpus: text_files.Corpus,
                       chunk: int) -> tf.data.Dataset:
  """seqio dataset_fn: the split's documents in file order as {'text': string} (chunk 0) or as chunks
  {'text': string [<= chunk]}, which seqio's tokenize turns into ragged [k, None] targets."""
  del shuffle_files, seed  # the pipeline shuffles sequences
  if split not in text_files.SPLITS:
    raise ValueError(f"split {split!r} of data.task='text_files' does not exist: use one of {text_files.SPLITS}.")
  ds = tf.data.Dataset.from_tensor_slices({'text': tf.constant(list(corpus.documents[split]), tf.string)})
  return ds.batch(chunk) if chunk else ds


def encodes_batches(vocab: seqio.Vocabulary) -> bool:
  """Whether vocab.encode_tf maps a string vector to the ragged rows of its elements' ids (seqio's
  ByteVocabulary does not: tf.io.decode_raw needs strings of equal length)."""
  probe = ['To be,', 'or not\n']
  try:
    ids = vocab.encode_tf(tf.constant(probe))
  except (tf.errors.OpError, ValueError, TypeError):
    return False
  return isinstance(ids, tf.RaggedTensor) and ids.to_list() == [vocab.encode(text) for text in probe]


def _text_files_source(corpus: text_files.Corpus, vocab: seqio.Vocabulary) -> seqio.DataSource:
  chunk = TEXT_FILES_CHUNK if encodes_batches(vocab) else 0
  return seqio.FunctionDataSource(dataset_fn=functools.partial(text_files_dataset, corpus=corpus, chunk=chunk),
                                  splits=text_files.SPLITS)


# ---------------------------------------------------------------------------------------------- registration


def _register(name: str, source: seqio.DataSource, text_key: str, vocab: seqio.Vocabulary) -> None:
  seqio.TaskRegistry.add(
      name,
      source=source,
      preprocessors=[
          functools.partial(seqio.preprocessors.rekey, key_map={'targets': text_key}),
          seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos,
          preprocessors.concatenate_and_split,
      ],
      output_features={'targets': seqio.Feature(vocabulary=vocab, add_eos=True, dtype=tf.int32)},
      metric_fns=[],
  )


def get_task_name(data_cfg: Any) -> str:
  """Registers (once) and returns the seqio task for data_cfg.task / .vocabulary (/ .tfds_* for 'tfds_lm', the
  files for 'text_files', which are read and hashed on every call)."""
  task = data_cfg.task
  sources.check_task(task)
  corpus = text_files.load_corpus(data_cfg) if task == text_files.TASK else None
  if in_memory.is_in_memory(task):
    name = in_memory.task_name(data_cfg)
  else:
    vocab_key = vocabularies.vocabulary_key(data_cfg.vocabulary)
    tfds_name, data_dir, text_key = data_cfg.tfds_name, data_cfg.tfds_data_dir, data_cfg.text_key
    check_tfds_dataset(tfds_name, data_dir, text_key)
    digest = hashlib.sha256(f'{tfds_name}\n{data_dir}\n{text_key}'.encode()).hexdigest()[:12]
    name = f'tfds_lm_{vocab_key}_{digest}'
  if name not in seqio.TaskRegistry.names():
    vocab = seqio_vocabularies.get_seqio_vocabulary(data_cfg.vocabulary)
    if task in EMBEDDED:
      _register(name, _embedded_source(task), 'text', vocab)
    elif corpus is not None:
      _register(name, _text_files_source(corpus, vocab), 'text', vocab)
    else:
      _register(name, _tfds_source(data_cfg.tfds_name, data_cfg.tfds_data_dir), data_cfg.text_key, vocab)
  return name


def get_task(data_cfg: Any) -> seqio.Task:
  """The registered seqio task for `data_cfg`."""
  return seqio.get_mixture_or_task(get_task_name(data_cfg))


def check_split(task: seqio.Task, split: str, key: str) -> None:
  """Raises ValueError when `split` (the value of data.`key`) is not a split of `task`."""
  splits = tuple(task.splits)
  if split not in splits:
    raise ValueError(f'data.{key}={split!r} is not a split of task {task.name!r}: use one of {splits}.')
