"""Tests of samoe_jax.data: corpus, tokenizer, vocabularies, seqio tasks, the batch pipeline and a prepared TFDS dir.

Real seqio / TFDS / SentencePiece throughout; the embedded tests use the tiny corpus slices except one test that
checks the full corpus tokenizes identically through seqio and through SentencePiece in Python.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from samoe_jax.config.defaults import get_base_config
from samoe_jax.data import documents
from samoe_jax.data import pipeline
from samoe_jax.data import seqio_vocabularies
from samoe_jax.data import sequences
from samoe_jax.data import tasks
from samoe_jax.data import train_tokenizer
from samoe_jax.data import vocabularies

import tensorflow_datasets as tfds  # pylint: disable=g-bad-import-order  # after samoe_jax.data (quiet TF)
from batch_checks import KEYS, assert_same_batches, take  # pylint: disable=g-bad-import-order  (tests/ helper)

TINY = os.path.join(documents.CORPUS_DIR, 'shakespeare_tiny')
FULL = os.path.join(documents.CORPUS_DIR, 'shakespeare')


def cfg(**overrides):
  """The base data config on the tiny corpus, small shapes, with `overrides`."""
  c = get_base_config().data
  c.task, c.seq_len, c.batch_size = 'shakespeare_tiny', 32, 4
  for key, value in overrides.items():
    setattr(c, key, value)
  return c


def complete_documents(docs, vocab, num_tokens):
  """How many of `docs` (each plus EOS) fit entirely in the first `num_tokens` tokens."""
  ends = np.cumsum([len(vocab.encode(doc)) + 1 for doc in docs])
  return int((ends <= num_tokens).sum())


def split_at_eos(tokens):
  """Token segments between EOS ids (the last, unterminated one dropped)."""
  ends = np.flatnonzero(tokens == vocabularies.EOS_ID)
  return [tokens[start + 1:end] for start, end in zip(np.r_[-1, ends[:-1]], ends)]


# ---------------------------------------------------------------------------------------------- corpus


def test_document_format_round_trip(tmp_path):
  text = 'A.\nLine one\n  indented   \n\n\n\nB.\nLine two\r\n\r\nC.'
  docs = documents.split_passages(text)
  assert docs == ['A.\nLine one\n  indented', 'B.\nLine two', 'C.']
  for name in ('d.txt', 'd.txt.gz'):
    documents.write_documents(str(tmp_path / name), docs)
    assert documents.read_documents(str(tmp_path / name)) == docs
  with pytest.raises(ValueError, match='blank line'):
    documents.encode_documents(['ok', 'bad\n\nbad'])


def test_shipped_corpus_split_and_tiny_slices():
  with open(os.path.join(FULL, 'manifest.json')) as f:
    manifest = json.load(f)
  train = documents.read_documents(os.path.join(FULL, 'train.txt.gz'))
  validation = documents.read_documents(os.path.join(FULL, 'validation.txt.gz'))
  assert len(train) == manifest['splits']['train']['documents'] == 37073
  assert len(validation) == manifest['splits']['validation']['documents'] == 1869
  assert set(manifest['splits']['validation']['works']) == {'julius_caesar', 'tempest', 'lovers_complaint',
                                                            'passionate_pilgrim'}
  assert not set(manifest['splits']['train']['works']) & set(manifest['splits']['validation']['works'])
  assert len(manifest['splits']['train']['works']) + len(manifest['splits']['validation']['works']) == 42
  assert all(doc and '\n\n' not in doc and doc == doc.strip('\n') for doc in train + validation)
  assert sum('\n' in doc for doc in train) > len(train) // 2  # passages keep their line breaks
  assert any(doc.startswith('PROSPERO.\n') for doc in validation)  # The Tempest is held out ...
  assert not any(doc.startswith('PROSPERO.\n') for doc in train)  # ... and nowhere in training
  for split, docs in (('train', train), ('validation', validation)):
    tiny = documents.read_documents(os.path.join(TINY, f'{split}.txt'))
    assert 10 < len(tiny) and tiny == docs[100:100 + len(tiny)]


# ---------------------------------------------------------------------------------------------- vocabularies


def test_shipped_sentencepiece_layout_and_round_trip():
  vocab = vocabularies.get_vocabulary('sentencepiece')
  sp = vocab.tokenizer
  assert vocab.vocab_size == 8192 <= get_base_config().model.vocab_size
  assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
  assert sp.id_to_piece(3) == '\n'
  text = "HAMLET.\nTo be, or not to be:  that is\n\n  the question.\n\tcafé ☃ 42 "
  ids = vocab.encode(text)
  assert ids.count(3) == text.count('\n') and 0 not in ids and 1 not in ids
  assert vocab.decode(ids) == text
  seqio_vocab = seqio_vocabularies.get_seqio_vocabulary('sentencepiece')   # the seqio tasks' form: same ids
  assert seqio_vocab.encode(text) == ids and seqio_vocab.decode(ids) == text
  tf_ids = seqio_vocab.encode_tf(text).numpy().tolist()
  assert tf_ids == ids
  assert seqio_vocab.decode_tf(np.array(ids, np.int32)).numpy().decode() == text


def test_byte_vocabulary_and_model_path():
  byte = vocabularies.get_vocabulary('byte')
  assert byte.vocab_size == 259 and byte.eos_id == 1
  assert byte.encode('a\n') == [ord('a') + 3, ord('\n') + 3]
  assert byte.decode(byte.encode('two\nlines')) == 'two\nlines'
  path_vocab = vocabularies.get_vocabulary(vocabularies.SHIPPED_MODEL)
  assert path_vocab.encode('To be\n') == vocabularies.get_vocabulary('sentencepiece').encode('To be\n')
  assert vocabularies.vocabulary_key(vocabularies.SHIPPED_MODEL) == 'sentencepiece'
  assert vocabularies.vocabulary_key('byte') == 'byte'


@pytest.mark.parametrize('bad', ['bpe', '/no/such/file.model', 'README.md', ''])
def test_bad_vocabulary_names_value_and_choices(bad):
  with pytest.raises(ValueError) as e:
    vocabularies.get_vocabulary(bad)
  assert repr(bad) in str(e.value) and "'sentencepiece'" in str(e.value) and "'byte'" in str(e.value)


def test_train_tokenizer_is_deterministic(tmp_path):
  models = []
  for run in range(2):
    prefix = str(tmp_path / f'run{run}')
    path = train_tokenizer.train(os.path.join(TINY, 'train.txt'), prefix, vocab_size=400)
    with open(path, 'rb') as f:
      models.append(f.read())
    vocab = vocabularies.get_vocabulary(path)
    assert vocab.vocab_size == 400 and vocab.tokenizer.id_to_piece(3) == '\n'
    assert vocabularies.vocabulary_key(path).startswith('spm_')
    text = 'KING.\nWhat say you?\n  Speak.'
    assert vocab.decode(vocab.encode(text)) == text
  assert models[0] == models[1]


# ---------------------------------------------------------------------------------------------- tasks


def test_bad_task_and_split_errors():
  with pytest.raises(ValueError, match=r"data.task='nonexistent'.*'shakespeare'.*'tfds_lm'"):
    pipeline.make_train_iterator(cfg(task='nonexistent'))
  with pytest.raises(ValueError, match=r"data.train_split='test'.*'train', 'validation'"):
    pipeline.make_train_iterator(cfg(train_split='test'))
  with pytest.raises(ValueError, match=r"data.vocabulary='gpt4'"):
    pipeline.make_train_iterator(cfg(vocabulary='gpt4'))
  assert tasks.get_task_name(cfg()) == 'shakespeare_tiny_sentencepiece'
  assert tasks.get_task_name(cfg(vocabulary='byte')) == 'shakespeare_tiny_byte'


@pytest.mark.parametrize('vocabulary', ['byte', 'sentencepiece'])
def test_eos_ends_every_document_in_order(vocabulary):
  c = cfg(vocabulary=vocabulary, seq_len=64, batch_size=2)
  vocab = vocabularies.get_vocabulary(vocabulary)
  batches = pipeline.make_eval_batches(c, 10_000)
  tokens = np.concatenate([b['decoder_target_tokens'].reshape(-1) for b in batches])
  docs = documents.read_documents(os.path.join(TINY, 'validation.txt'))
  segments = split_at_eos(tokens)
  assert len(segments) == complete_documents(docs, vocab, len(tokens)) > 10  # only the tail after the last batch
  assert [vocab.decode(s.tolist()) for s in segments] == docs[:len(segments)]
  assert tokens.max() < vocab.vocab_size


def test_full_corpus_tokenizes_like_python_sentencepiece():
  c = cfg(task='shakespeare', seq_len=128, batch_size=16)
  rows = sequences.cached_rows(tasks.get_task(c), 'validation', 128)
  sp = vocabularies.get_vocabulary('sentencepiece').tokenizer
  docs = documents.read_documents(os.path.join(FULL, 'validation.txt.gz'))
  expected = np.concatenate([np.r_[ids, 1] for ids in sp.encode(docs)])
  assert rows.shape == (-(-len(expected) // 128), 128)
  np.testing.assert_array_equal(rows.reshape(-1)[:len(expected)], expected)
  assert not rows.reshape(-1)[len(expected):].any()
  batches = pipeline.make_eval_batches(c, 8)
  assert len(batches) == 8 and sum(map(pipeline.count_tokens, batches)) == 8 * 16 * 128
  train = next(pipeline.make_train_iterator(c))
  assert train['decoder_target_tokens'].shape == (16, 128)


# ---------------------------------------------------------------------------------------------- batches


def test_importing_the_api_does_not_import_tensorflow():
  code = ('import sys; from samoe_jax.data import pipeline; '
          'print(sorted(m for m in ("tensorflow", "seqio", "tensorflow_datasets") if m in sys.modules))')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       env={**os.environ, 'PYTHONPATH': root}, cwd=root)
  assert out.stdout.strip() == '[]'
  assert pipeline.count_tokens({'decoder_loss_weights': np.array([[1., 1., 0.], [1., 0., 0.]])}) == 3


def test_batch_shapes_dtypes_and_shift():
  it = pipeline.make_train_iterator(cfg())
  for batch in take(it, 5):
    assert set(batch) == set(KEYS)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        'decoder_input_tokens': ((4, 32), np.int32), 'decoder_target_tokens': ((4, 32), np.int32),
        'decoder_loss_weights': ((4, 32), np.float32)}
    targets, inputs = batch['decoder_target_tokens'], batch['decoder_input_tokens']
    assert (inputs[:, 0] == 0).all()
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
    np.testing.assert_array_equal(batch['decoder_loss_weights'], (targets != 0).astype(np.float32))
    assert pipeline.count_tokens(batch) == int((targets != 0).sum())


def test_numpy_decoder_features_equal_seqio_feature_converter():
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rows = np.array([[5, 6, 7, 1], [8, 1, 0, 0], [9, 10, 11, 12]], np.int32)
  ds = tf.data.Dataset.from_tensor_slices({'targets': rows})
  expected = list(seqio.DecoderFeatureConverter(pack=False)(ds, {'targets': 4}).batch(3).as_numpy_iterator())[0]
  got = pipeline.decoder_features(rows)
  for key, value in got.items():
    np.testing.assert_array_equal(value, expected[key])
    assert value.dtype == {'decoder_loss_weights': np.float32}.get(key, np.int32)


def test_determinism_and_reshuffling():
  first = take(pipeline.make_train_iterator(cfg()), 4)
  assert_same_batches(first, take(pipeline.make_train_iterator(cfg()), 4))
  other = next(pipeline.make_train_iterator(cfg(shuffle_seed=1)))
  assert not np.array_equal(first[0]['decoder_target_tokens'], other['decoder_target_tokens'])
  # Every epoch serves the same sequences in a new order.
  c = cfg(seq_len=64, batch_size=8)
  it = pipeline.make_train_iterator(c)
  rows = sequences.cached_rows(tasks.get_task(c), 'train', 64)
  per_epoch = len(rows) // 8
  epochs = [np.concatenate([b['decoder_target_tokens'] for b in take(it, per_epoch)]) for _ in range(2)]
  state = it.get_state()  # the next epoch starts lazily, on the next batch
  assert (state['epoch'], state['batch_in_epoch'], state['batches_served']) == (1, per_epoch, 2 * per_epoch)
  assert not np.array_equal(epochs[0], epochs[1])
  def as_set(a):
    return {r.tobytes() for r in a}
  for epoch in epochs:  # distinct rows of the corpus (each epoch leaves out its own len(rows) % 8)
    assert as_set(epoch) <= as_set(rows) and len(as_set(epoch)) == per_epoch * 8
  assert len(as_set(epochs[0]) & as_set(epochs[1])) >= per_epoch * 8 - len(rows) % 8


def test_resume_is_exact_across_epoch_boundary():
  c = cfg(seq_len=64, batch_size=8)
  it = pipeline.make_train_iterator(c)
  per_epoch = len(sequences.cached_rows(tasks.get_task(c), 'train', 64)) // 8
  assert per_epoch >= 4
  take(it, per_epoch - 3)
  state = json.loads(json.dumps(it.get_state()))
  assert state['epoch'] == 0 and state['batch_in_epoch'] == per_epoch - 3 == state['batches_served']
  reference = take(it, 6)  # 3 from epoch 0, 3 from epoch 1
  assert it.get_state()['epoch'] == 1 and it.get_state()['batch_in_epoch'] == 3
  resumed = pipeline.make_train_iterator(c)
  resumed.set_state(state)
  assert_same_batches(reference, take(resumed, 6))
  assert resumed.get_state() == it.get_state()
  # Restoring into a used iterator, and a minimal state dict, work too.
  it.set_state({'epoch': 1, 'batch_in_epoch': 0, 'batches_served': per_epoch})
  assert_same_batches(reference[3:], take(it, 3))


def test_set_state_rejects_bad_or_foreign_states():
  it = pipeline.make_train_iterator(cfg())
  state = it.get_state()
  with pytest.raises(ValueError, match=r'data.seq_len=64.*data.seq_len=32'):
    it.set_state({**state, 'seq_len': 64})
  with pytest.raises(ValueError, match="'epoch'"):
    it.set_state({'batch_in_epoch': 0, 'batches_served': 0})


def test_shards_split_the_global_batch():
  whole = take(pipeline.make_train_iterator(cfg(batch_size=4)), 3)
  halves = [take(pipeline.make_train_iterator(cfg(batch_size=4), shard_index=s, num_shards=2), 3) for s in (0, 1)]
  for j in range(3):
    for key in KEYS:
      assert halves[0][j][key].shape[0] == 2
      np.testing.assert_array_equal(np.concatenate([halves[0][j][key], halves[1][j][key]]), whole[j][key])
  eval_whole = pipeline.make_eval_batches(cfg(), 2)
  eval_half = pipeline.make_eval_batches(cfg(), 2, shard_index=1, num_shards=2)
  np.testing.assert_array_equal(eval_half[1]['decoder_target_tokens'], eval_whole[1]['decoder_target_tokens'][2:])
  with pytest.raises(ValueError, match=r'data.batch_size=4 is not divisible by num_shards=3'):
    pipeline.make_train_iterator(cfg(batch_size=4), num_shards=3)
  with pytest.raises(ValueError, match=r'data.batch_size=4 is not divisible by num_shards=3'):
    pipeline.make_eval_batches(cfg(batch_size=4), 1, num_shards=3)
  with pytest.raises(ValueError, match=r'shard_index=2'):
    pipeline.make_train_iterator(cfg(batch_size=4), shard_index=2, num_shards=2)


def test_eval_batches_are_fixed_and_padding_is_not_counted():
  c = cfg(vocabulary='byte', seq_len=1024, batch_size=8)
  docs = documents.read_documents(os.path.join(TINY, 'validation.txt'))
  num_tokens = sum(len(d.encode()) + 1 for d in docs)  # bytes plus one EOS per document
  assert 3 * 1024 < num_tokens < 4 * 1024
  batches = pipeline.make_eval_batches(c, 5)
  assert len(batches) == 1  # fewer sequences than one batch: one batch, padded
  assert_same_batches(batches, pipeline.make_eval_batches(c, 5))
  batch = batches[0]
  assert pipeline.count_tokens(batch) == num_tokens == int(batch['decoder_loss_weights'].sum())
  weights, targets = batch['decoder_loss_weights'], batch['decoder_target_tokens']
  assert not targets[4:].any() and not weights[4:].any()                       # padding rows
  last = num_tokens - 3 * 1024
  assert weights[3, :last].all() and not weights[3, last:].any()               # padded tail of the last row
  assert targets[3, last - 1] == vocabularies.EOS_ID
  # A longer split gives as many full batches as exist, no more, and the batches are a prefix of each other.
  short = cfg(vocabulary='byte', seq_len=64, batch_size=8)
  many = pipeline.make_eval_batches(short, 1000)
  assert len(many) == num_tokens // 64 // 8
  assert_same_batches(pipeline.make_eval_batches(short, 3), many[:3])
  assert all(pipeline.count_tokens(b) == 8 * 64 for b in many)


def test_tiny_corpus_too_small_for_one_batch():
  with pytest.raises(ValueError, match=r'fewer than one global batch \(data.batch_size=4096\)'):
    pipeline.make_train_iterator(cfg(batch_size=4096))


# ---------------------------------------------------------------------------------------------- prepared TFDS


TFDS_TRAIN = documents.read_documents(os.path.join(TINY, 'train.txt'))[:40]
TFDS_VALIDATION = documents.read_documents(os.path.join(TINY, 'validation.txt'))[:12]


class SamoeTinyText(tfds.core.GeneratorBasedBuilder):
  """A few local text documents, prepared into a temporary TFDS directory."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({'content': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(TFDS_TRAIN), 'validation': self._generate_examples(TFDS_VALIDATION)}

  def _generate_examples(self, docs):
    for i, doc in enumerate(docs):
      yield i, {'content': doc}


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  builder = SamoeTinyText(data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return data_dir


@pytest.fixture
def no_network(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError(f'network connection attempted: {args}')
  monkeypatch.setattr(socket.socket, 'connect', refuse)
  monkeypatch.setattr(socket, 'create_connection', refuse)


def tfds_cfg(data_dir, **overrides):
  settings = dict(task='tfds_lm', tfds_name='samoe_tiny_text:1.0.0', tfds_data_dir=data_dir, text_key='content',
                  vocabulary='byte', seq_len=64, batch_size=4, shuffle_buffer=64)
  return cfg(**{**settings, **overrides})


def test_tfds_task_eval_reads_the_prepared_documents(tfds_dir, no_network):
  c = tfds_cfg(tfds_dir)
  assert tasks.get_task_name(c).startswith('tfds_lm_byte_')
  batches = pipeline.make_eval_batches(c, 1000)
  tokens = np.concatenate([b['decoder_target_tokens'].reshape(-1) for b in batches])
  byte = vocabularies.get_vocabulary('byte')
  segments = [byte.decode(s.tolist()) for s in split_at_eos(tokens)]
  # TFDS stores examples in its own (hashed) order: read that order straight from the prepared directory.
  stored = tfds.builder('samoe_tiny_text:1.0.0', data_dir=tfds_dir).as_dataset(split='validation')
  stored = [ex['content'].decode() for ex in tfds.as_numpy(stored)]
  assert sorted(stored) == sorted(TFDS_VALIDATION)
  assert len(segments) == complete_documents(stored, byte, len(tokens)) >= len(stored) - 3
  assert segments == stored[:len(segments)]
  for b in batches:
    np.testing.assert_array_equal(b['decoder_input_tokens'][:, 1:], b['decoder_target_tokens'][:, :-1])


def test_tfds_task_training_is_deterministic_and_resumable(tfds_dir, no_network):
  c = tfds_cfg(tfds_dir)
  rows = -(-sum(len(d.encode()) + 1 for d in TFDS_TRAIN) // 64)  # the last row is partial
  per_epoch = rows // 4
  it = pipeline.make_train_iterator(c)
  run = take(it, per_epoch + 3)
  assert it.get_state()['epoch'] == 1 and it.get_state()['batch_in_epoch'] == 3
  assert_same_batches(run, take(pipeline.make_train_iterator(c), per_epoch + 3))
  other = take(pipeline.make_train_iterator(tfds_cfg(tfds_dir, shuffle_seed=5)), 1)[0]
  assert not np.array_equal(other['decoder_target_tokens'], run[0]['decoder_target_tokens'])
  # Epochs are reshuffled, and hold only sequences of the corpus.
  assert not np.array_equal(run[0]['decoder_target_tokens'], run[per_epoch]['decoder_target_tokens'])
  epoch0 = np.concatenate([r['decoder_target_tokens'] for r in run[:per_epoch]])
  assert len({r.tobytes() for r in epoch0}) == per_epoch * 4 and (epoch0 == 0).any(axis=1).sum() <= 1
  assert (epoch0 == vocabularies.EOS_ID).sum() >= len(TFDS_TRAIN) - 3
  resumed = pipeline.make_train_iterator(c)
  resumed.set_state({'epoch': 0, 'batch_in_epoch': per_epoch - 2, 'batches_served': per_epoch - 2})
  assert_same_batches(run[per_epoch - 2:], take(resumed, 5))
  shard = next(pipeline.make_train_iterator(c, shard_index=1, num_shards=2))
  assert shard['decoder_target_tokens'].shape == (2, 64)


def test_tfds_missing_directory_or_dataset_is_a_clear_error(tfds_dir, tmp_path, no_network):
  missing = str(tmp_path / 'not_there')
  with pytest.raises(FileNotFoundError, match=r"data.tfds_data_dir='.*not_there' does not exist.*samoe_tiny_text"):
    pipeline.make_train_iterator(tfds_cfg(missing))
  empty = str(tmp_path)
  for name in ('c4/en:3.1.0', 'no_such_dataset:1.0.0'):
    with pytest.raises(FileNotFoundError) as e:
      pipeline.make_eval_batches(tfds_cfg(empty, tfds_name=name), 1)
    assert repr(name) in str(e.value) and repr(empty) in str(e.value) and 'nothing is downloaded' in str(e.value)
  assert not os.listdir(empty)  # nothing was created, let alone downloaded
  with pytest.raises(ValueError, match=r"data.tfds_name='samoe_tiny_text'.*version"):
    pipeline.make_train_iterator(tfds_cfg(tfds_dir, tfds_name='samoe_tiny_text'))
  with pytest.raises(ValueError, match=r"data.text_key='text'.*\['content'\]"):
    pipeline.make_train_iterator(tfds_cfg(tfds_dir, text_key='text'))
  with pytest.raises(ValueError, match=r'data.tfds_data_dir is empty'):
    pipeline.make_train_iterator(tfds_cfg(''))
