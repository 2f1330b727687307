"""The plain-Python vocabularies and rows (data/text_vocabularies.py, data/in_memory.py) against seqio's.

Ids, sizes and decoded text of the SentencePiece, byte and GPT-2 vocabularies equal seqio's (Python and
TensorFlow halves) on the shipped corpora; the in-memory rows equal the seqio tasks' rows; the experiment corpus's
sp1k model is checked too where /work/runs/corpus/sp1k.model exists.
"""

from __future__ import annotations


import numpy as np
import pytest

from samoe_jax.config.defaults import get_base_config
from samoe_jax.data import in_memory
from samoe_jax.data import seqio_vocabularies
from samoe_jax.data import sequences
from samoe_jax.data import tasks
from samoe_jax.data import text_vocabularies
from samoe_jax.data import train_tokenizer
from samoe_jax.data import vocabularies

import seqio  # pylint: disable=g-bad-import-order  # after samoe_jax.data (quiet TF)

TINY_DOCS = in_memory.embedded_documents(in_memory.corpus_path('shakespeare_tiny', 'validation'))
ODD_TEXTS = ['', ' ', 'To be,  or not\n\n\tto be: café ☃ 日本語 🎭', '\r\n trailing  ', '<|endoftext|> 42']


def cfg(**overrides):
  c = get_base_config().data
  c.task, c.seq_len, c.batch_size = 'shakespeare_tiny', 32, 4
  for key, value in overrides.items():
    setattr(c, key, value)
  return c


@pytest.mark.parametrize('name', ['sentencepiece', 'byte', 'gpt2'])
def test_ids_sizes_and_text_equal_seqio(name):
  plain, ours = vocabularies.get_vocabulary(name), seqio_vocabularies.get_seqio_vocabulary(name)
  reference = {'sentencepiece': lambda: seqio.SentencePieceVocabulary(vocabularies.SHIPPED_MODEL),
               'byte': seqio.ByteVocabulary, 'gpt2': lambda: ours}[name]()
  assert not isinstance(plain, seqio.Vocabulary) and isinstance(reference, seqio.Vocabulary)
  assert (plain.vocab_size, plain.eos_id, plain.unk_id, plain.pad_id) == (
      reference.vocab_size, reference.eos_id, reference.unk_id, reference.pad_id)
  texts = list(TINY_DOCS) + ODD_TEXTS
  ids = [plain.encode(text) for text in texts]
  assert ids == [list(reference.encode(text)) for text in texts]
  assert [a.tolist() for a in plain.encode_batch(texts)] == ids
  assert [reference.encode_tf(text).numpy().tolist() for text in texts] == ids   # the seqio pipeline's ids
  assert [plain.decode(i) for i in ids] == [reference.decode(i) for i in ids]
  # decode: padding, ids past the vocabulary (the model's padding rows), everything after the first EOS
  odd = [0, 5, plain.vocab_size + 3, 7, plain.eos_id, 9, 10]
  assert plain.decode(odd) == reference.decode(odd)


def test_sentencepiece_layout_and_bad_model(tmp_path):
  sp = vocabularies.get_vocabulary('sentencepiece')
  assert isinstance(sp, text_vocabularies.SentencePieceVocabulary)
  assert (sp.vocab_size, sp.bos_id, sp.eos_id, sp.unk_id) == (8192, -1, 1, 2)
  assert sp.sentencepiece_model_file == vocabularies.SHIPPED_MODEL
  bad = tmp_path / 'not_a_model.model'
  bad.write_bytes(b'this is not a protocol buffer')
  with pytest.raises(ValueError, match=r"data.vocabulary='.*not_a_model.model' is not a SentencePiece model"):
    vocabularies.get_vocabulary(str(bad))


@pytest.fixture(scope='module')
def sp1k(tmp_path_factory) -> str:
  """A 1k unigram model trained with the project's trainer flags (as the experiment corpus's sp1k) on the shipped
  Shakespeare validation split: a model other than the shipped one."""
  corpus = in_memory.corpus_path('shakespeare', 'validation')
  return train_tokenizer.train(corpus, str(tmp_path_factory.mktemp('sp') / 'sp1k'), vocab_size=1024)


def test_a_trained_1k_model_equals_seqio(sp1k):
  plain, reference = vocabularies.get_vocabulary(sp1k), seqio.SentencePieceVocabulary(sp1k)
  texts = list(TINY_DOCS) + ODD_TEXTS
  ids = [plain.encode(text) for text in texts]
  assert ids == [list(reference.encode(text)) for text in texts]
  assert [plain.decode(i) for i in ids] == [reference.decode(i) for i in ids]
  assert plain.vocab_size == reference.vocab_size == 1024


@pytest.mark.parametrize('vocabulary', ['byte', 'sentencepiece', 'gpt2'])
def test_in_memory_rows_equal_the_seqio_task(vocabulary):
  c = cfg(vocabulary=vocabulary)
  task = tasks.get_task(c)
  assert in_memory.task_name(c) == task.name
  for split in ('train', 'validation'):
    rows = in_memory.rows(c, split)
    assert rows.dtype == np.int32 and not rows.flags.writeable
    np.testing.assert_array_equal(rows, sequences.tokenized_rows(task, split, 32))


def test_full_embedded_validation_rows_equal_the_seqio_task():
  c = cfg(task='shakespeare', seq_len=128, vocabulary='sentencepiece')
  np.testing.assert_array_equal(in_memory.tokenize(c, 'validation'),
                                sequences.tokenized_rows(tasks.get_task(c), 'validation', 128))


def test_pack_rows_appends_eos_cuts_and_pads():
  byte = vocabularies.get_vocabulary('byte')
  rows = in_memory.pack_rows(['ab', '', 'cde'], byte, 3)   # a+3 b+3 EOS | EOS c+3 d+3 | e+3 EOS 0
  np.testing.assert_array_equal(rows, [[100, 101, 1], [1, 102, 103], [104, 1, 0]])
  assert in_memory.pack_rows(['abcde'], byte, 3).shape == (2, 3)   # 6 tokens: exactly two rows
  assert in_memory.pack_rows([], byte, 4).shape == (0, 4)
  many = [f'document {i}' for i in range(in_memory.ENCODE_CHUNK * 2 + 5)]   # across encode_batch chunks
  flat = in_memory.pack_rows(many, byte, 7).reshape(-1)
  expected = np.concatenate([np.r_[byte.encode(d), 1] for d in many])
  np.testing.assert_array_equal(flat[:len(expected)], expected)
  assert not flat[len(expected):].any()


def test_bad_split_is_named():
  with pytest.raises(ValueError, match=r"data.eval_split='test' is not a split of task 'shakespeare_tiny_byte': "
                                       r"use one of \('train', 'validation'\)"):
    in_memory.check_split(cfg(vocabulary='byte', eval_split='test'), 'eval_split')
