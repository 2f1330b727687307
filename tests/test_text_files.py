"""Tests of data.task='text_files': documents, the rows (in_memory.py, checked against the seqio task), the hash
split, the disk cache, errors, training.

Real code paths on tiny files written into a temporary directory; the byte vocabulary unless a test needs
SentencePiece. One module-scoped corpus is shared by most tests.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import math
import os
import pathlib

import numpy as np
import pytest

from samoe_jax.config.defaults import get_base_config
from samoe_jax.training.config_checks import validate_config
from samoe_jax.data import in_memory
from samoe_jax.data import pipeline
from samoe_jax.data import preprocessors
from samoe_jax.data import seqio_vocabularies
from samoe_jax.data import sequences
from samoe_jax.data import sources
from samoe_jax.data import tasks
from samoe_jax.data import text_files
from samoe_jax.data import vocabularies

import tensorflow as tf  # pylint: disable=g-bad-import-order  # after samoe_jax.data (quiet TF)
from batch_checks import KEYS, assert_same_batches, take  # pylint: disable=g-bad-import-order  (tests/ helper)

ROOT = pathlib.Path(__file__).resolve().parents[1]

A_TXT = 'Alpha one.\r\nAlpha two.   \r\n\r\n\r\n  Beta indented.\n \nGamma.\n'
A_DOCS = ['Alpha one.\nAlpha two.', '  Beta indented.', 'Gamma.']
B_DOCS = [f'Paragraph {i} of file b: the quick brown fox jumps over {i * 7} lazy dogs.\nAnd a second line.'
          for i in range(30)]
C_DOCS = [f'JSON body {i}, with "quotes" and a tab\there.' for i in range(20)]
D_DOCS = [f'café ☃ {i}\ntwo lines' for i in range(10)]
V_DOCS = [f'Held-out paragraph {i}: nothing like the training text.' for i in range(12)]


def write(path, data: str | bytes) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  data = data.encode('utf-8') if isinstance(data, str) else data
  if str(path).endswith('.gz'):
    data = gzip.compress(data, mtime=0)
  with open(path, 'wb') as f:
    f.write(data)
  return str(path)


def jsonl(docs, key='body') -> str:
  return ''.join(json.dumps({key: doc, 'text': 'not this field'}) + '\n' for doc in docs)


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  """train/{a.txt, b.txt.gz, c.jsonl, d.jsonl.gz} and validation/v.txt; returns the root directory."""
  root = tmp_path_factory.mktemp('text_files')
  write(root / 'train' / 'a.txt', A_TXT)
  write(root / 'train' / 'b.txt.gz', '\n\n'.join(B_DOCS) + '\n')
  empty_body = json.dumps({'body': '', 'text': 'empty body'})   # skipped: empty documents are dropped
  write(root / 'train' / 'c.jsonl', jsonl(C_DOCS[:10]) + '\n' + empty_body + '\n' + jsonl(C_DOCS[10:]))
  write(root / 'train' / 'd.jsonl.gz', jsonl(D_DOCS))
  write(root / 'validation' / 'v.txt', '\n\n\n'.join(V_DOCS))
  return root


TRAIN_DOCS = A_DOCS + B_DOCS + C_DOCS + D_DOCS   # sorted file order: a.txt, b.txt.gz, c.jsonl, d.jsonl.gz


def cfg(root=None, **overrides):
  """Base data config for text_files on `root`'s train/validation files (byte vocabulary, small shapes)."""
  c = get_base_config().data
  c.task, c.vocabulary, c.seq_len, c.batch_size, c.text_key = 'text_files', 'byte', 16, 4, 'body'
  if root is not None:
    c.train_files = f'{root}/train/*.txt*,{root}/train/*.jsonl*'
    c.validation_files = f'{root}/validation/*.txt'
  for key, value in overrides.items():
    setattr(c, key, value)
  return c


def decoded_documents(rows, vocab):
  """The texts between EOS ids of the rows' token stream (padding dropped)."""
  tokens = rows.reshape(-1)
  tokens = tokens[tokens != 0]
  assert tokens[-1] == vocabularies.EOS_ID
  ends = np.flatnonzero(tokens == vocabularies.EOS_ID)
  return [vocab.decode(tokens[start + 1:end].tolist()) for start, end in zip(np.r_[-1, ends[:-1]], ends)]


# ---------------------------------------------------------------------------------------------- documents and batches


def test_task_is_registered_and_in_memory():
  assert 'text_files' in sources.TASKS and in_memory.is_in_memory('text_files')
  assert not in_memory.is_in_memory('tfds_lm') and in_memory.is_in_memory('shakespeare')


def test_batches_and_tokens_decode_back_to_the_documents(corpus):
  c = cfg(corpus)
  checked = text_files.check_text_files(c)
  assert list(checked.documents['train']) == TRAIN_DOCS and list(checked.documents['validation']) == V_DOCS
  vocab = vocabularies.get_vocabulary('byte')
  task = tasks.get_task(c)
  assert task.name.startswith('text_files_byte_') and in_memory.task_name(c) == task.name
  for split, docs in (('train', TRAIN_DOCS), ('validation', V_DOCS)):
    rows = in_memory.rows(c, split)
    assert rows.dtype == np.int32 and rows.shape[1] == 16 and not rows.flags.writeable
    np.testing.assert_array_equal(rows, sequences.tokenized_rows(task, split, 16))   # the seqio task's rows
    assert decoded_documents(rows, vocab) == docs   # EOS after every document, in file order
    assert np.count_nonzero(rows) == sum(len(d.encode()) + 1 for d in docs)
  for batch in take(pipeline.make_train_iterator(c), 3) + pipeline.make_eval_batches(c, 2):
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        'decoder_input_tokens': ((4, 16), np.int32), 'decoder_target_tokens': ((4, 16), np.int32),
        'decoder_loss_weights': ((4, 16), np.float32)}
    np.testing.assert_array_equal(batch['decoder_input_tokens'][:, 1:], batch['decoder_target_tokens'][:, :-1])
    np.testing.assert_array_equal(batch['decoder_loss_weights'], batch['decoder_target_tokens'] != 0)
  first = pipeline.make_eval_batches(c, 1)[0]['decoder_target_tokens']
  np.testing.assert_array_equal(first, in_memory.rows(c, 'validation')[:4])


def test_txt_document_modes(corpus, tmp_path):
  text = 'First line\r\nsecond line  \n\n\n  third\n\n'
  assert text_files.txt_documents(text, 'paragraph') == ['First line\nsecond line', '  third']
  assert text_files.txt_documents(text, 'line') == ['First line', 'second line', '  third']
  assert text_files.txt_documents(text, 'file') == ['First line\nsecond line\n\n\n  third']
  assert text_files.txt_documents('\n \n', 'file') == [] == text_files.txt_documents('', 'paragraph')
  write(tmp_path / 'one.txt', '\ufeff' + text)
  write(tmp_path / 'two.txt.gz', 'Other file.\n')
  vocab = vocabularies.get_vocabulary('byte')
  for mode, expected in (('line', ['First line', 'second line', '  third', 'Other file.']),
                         ('file', ['First line\nsecond line\n\n\n  third', 'Other file.'])):
    c = cfg(train_files=f'{tmp_path}/*.txt*', validation_files=f'{corpus}/validation/v.txt', txt_documents=mode,
            seq_len=4, batch_size=1)
    assert list(text_files.check_text_files(c).documents['train']) == expected
    assert decoded_documents(in_memory.rows(c, 'train'), vocab) == expected


def test_concatenate_and_split_equals_token_by_token_batching():
  rng = np.random.default_rng(0)
  docs = [rng.integers(3, 200, size=n).astype(np.int32) for n in rng.integers(0, 30, size=300)]
  ragged = tf.RaggedTensor.from_row_lengths(np.concatenate(docs), [len(d) for d in docs])

  def as_docs():   # int32 [n] examples, one per document
    return tf.data.Dataset.from_tensor_slices({'targets': ragged})

  def as_chunks():   # ragged [k, None] examples, as the text_files source makes them
    return as_docs().ragged_batch(33)

  stream = np.concatenate(docs)
  for length in (7, 64, len(stream), len(stream) + 5):
    expected = [stream[i:i + length] for i in range(0, len(stream), length)]
    for source in (as_docs, as_chunks):
      got = list(preprocessors.concatenate_and_split(source(), {'targets': length}).as_numpy_iterator())
      assert len(got) == len(expected)
      for row, want in zip(got, expected):
        np.testing.assert_array_equal(row['targets'], want)
  exact = np.arange(3, 3 + 64, dtype=np.int32)   # a stream of exactly 4 sequences: no empty fifth one
  ds = tf.data.Dataset.from_tensor_slices({'targets': exact.reshape(8, 8)})
  sequences_of_ds = preprocessors.concatenate_and_split(ds, {'targets': 16}).as_numpy_iterator()
  assert [r['targets'].size for r in sequences_of_ds] == [16] * 4
  empty = ds.take(0)
  assert not list(preprocessors.concatenate_and_split(empty, {'targets': 16}).as_numpy_iterator())


def test_sentencepiece_tokens_equal_python_sentencepiece(corpus):
  c = cfg(corpus, vocabulary='sentencepiece', seq_len=32, batch_size=2)
  vocab = vocabularies.get_vocabulary('sentencepiece')
  seqio_sp = seqio_vocabularies.get_seqio_vocabulary('sentencepiece')
  assert tasks.encodes_batches(seqio_sp) and not tasks.encodes_batches(seqio_vocabularies.get_seqio_vocabulary('byte'))
  rows = in_memory.rows(c, 'train')
  np.testing.assert_array_equal(rows, sequences.tokenized_rows(tasks.get_task(c), 'train', 32))   # chunked seqio
  expected = np.concatenate([np.r_[ids, 1] for ids in vocab.tokenizer.encode(TRAIN_DOCS)]).astype(np.int32)
  assert rows.shape == (math.ceil(len(expected) / 32), 32)
  np.testing.assert_array_equal(rows.reshape(-1)[:len(expected)], expected)
  assert not rows.reshape(-1)[len(expected):].any()


# ---------------------------------------------------------------------------------------------- order and resume


def test_determinism_and_reshuffling(corpus):
  first = take(pipeline.make_train_iterator(cfg(corpus)), 4)
  assert_same_batches(first, take(pipeline.make_train_iterator(cfg(corpus)), 4))
  other = next(pipeline.make_train_iterator(cfg(corpus, shuffle_seed=1)))
  assert not np.array_equal(first[0]['decoder_target_tokens'], other['decoder_target_tokens'])


def test_resume_is_exact_across_epoch_boundary(corpus):
  c = cfg(corpus)
  per_epoch = len(in_memory.rows(c, 'train')) // 4
  assert per_epoch >= 6
  it = pipeline.make_train_iterator(c)
  take(it, per_epoch - 2)
  state = json.loads(json.dumps(it.get_state()))
  assert state['task'] == 'text_files' and state['batch_in_epoch'] == per_epoch - 2
  reference = take(it, 5)   # 2 from epoch 0, 3 from epoch 1
  assert (it.get_state()['epoch'], it.get_state()['batch_in_epoch']) == (1, 3)
  resumed = pipeline.make_train_iterator(c)
  resumed.set_state(state)
  assert_same_batches(reference, take(resumed, 5))
  assert resumed.get_state() == it.get_state()
  changed = pipeline.make_train_iterator(cfg(corpus, txt_documents='line'))   # other documents: another corpus
  with pytest.raises(ValueError, match='saved on the corpus .* resume with the original files'):
    changed.set_state(state)


# ---------------------------------------------------------------------------------------------- hash split


def test_hash_split_is_disjoint_stable_and_follows_the_formula(tmp_path):
  lines = [f'line {i} of the hash split corpus' for i in range(400)]
  write(tmp_path / 'one' / 'x1.txt', '\n'.join(lines[:200]))
  write(tmp_path / 'one' / 'x2.txt', '\n'.join(lines[200:]))
  write(tmp_path / 'two' / 'z.txt', '\n'.join(lines[:200]))   # the same files under names in the other order
  write(tmp_path / 'two' / 'a.txt.gz', '\n'.join(lines[200:]))
  splits = []
  for directory in ('one', 'two'):
    c = cfg(files=f'{tmp_path}/{directory}/*', txt_documents='line', validation_fraction=0.2, batch_size=1)
    docs = text_files.check_text_files(c).documents
    splits.append({split: set(docs[split]) for split in docs})
    assert len(docs['train']) + len(docs['validation']) == 400
  assert splits[0] == splits[1]
  train, validation = splits[0]['train'], splits[0]['validation']
  assert not train & validation and train | validation == set(lines)
  for line in lines:   # the documented rule, computed here independently
    u = int.from_bytes(hashlib.sha256(line.encode('utf-8')).digest()[:8], 'little') / 2**64
    assert (line in validation) == (u < 0.2)
  assert 50 <= len(validation) <= 110
  # Both splits tokenize: the validation batches come from the held-out lines only.
  c = cfg(files=f'{tmp_path}/one/*', txt_documents='line', validation_fraction=0.2, seq_len=8, batch_size=2)
  rows = in_memory.rows(c, 'validation')
  assert set(decoded_documents(rows, vocabularies.get_vocabulary('byte'))) == validation
  assert pipeline.make_eval_batches(c, 1)[0]['decoder_target_tokens'].shape == (2, 8)


# ---------------------------------------------------------------------------------------------- disk cache


def test_disk_cache_hit_equals_fresh_tokenization(corpus, tmp_path, monkeypatch):
  cache = tmp_path / 'cache'
  c = cfg(corpus, vocabulary='sentencepiece', cache_dir=str(cache))
  task = tasks.get_task(c)
  fresh = sequences.tokenized_rows(task, 'train', 16)   # through seqio
  in_memory.forget(task.name)
  first = in_memory.rows(c, 'train')
  key = text_files.cache_key(text_files.load_corpus(c), c, 'train')
  path = text_files.cache_path(str(cache), key)
  assert os.path.isfile(path) and sorted(os.listdir(cache)) == [f'text_files_{key}.json', f'text_files_{key}.npy']
  with open(path[:-4] + '.json') as f:
    manifest = json.load(f)
  assert manifest['tokens'] == np.count_nonzero(fresh) and manifest['seq_len'] == 16
  assert manifest['vocabulary'].startswith('sha256:') and len(manifest['files']) == 5   # every corpus file
  assert manifest['format_version'] == text_files.FORMAT_VERSION == 2
  in_memory.forget(task.name)
  monkeypatch.setattr(in_memory, 'tokenize', lambda *a: pytest.fail('a cache hit must not tokenize'))
  hit = in_memory.rows(c, 'train')
  assert hit.dtype == fresh.dtype == first.dtype == np.int32
  np.testing.assert_array_equal(hit, fresh)
  np.testing.assert_array_equal(first, fresh)
  # Everything that determines the rows is in the key; an identical config gives the same key.
  corp = text_files.load_corpus(c)
  assert text_files.cache_key(text_files.load_corpus(cfg(corpus, vocabulary='sentencepiece')), c, 'train') == key
  others = {text_files.cache_key(corp, cfg(corpus, vocabulary='byte'), 'train'),
            text_files.cache_key(corp, cfg(corpus, vocabulary='sentencepiece', seq_len=32), 'train'),
            text_files.cache_key(corp, c, 'validation'),
            text_files.cache_key(text_files.load_corpus(cfg(corpus, txt_documents='line')), c, 'train'),
            text_files.cache_key(text_files.load_corpus(cfg(corpus, text_key='text')), c, 'train')}
  assert key not in others and len(others) == 5


def test_disk_cache_key_follows_file_contents(tmp_path):
  cache = tmp_path / 'cache'
  write(tmp_path / 'data' / 'doc.txt', '\n\n'.join(B_DOCS))
  c = cfg(train_files=f'{tmp_path}/data/*.txt', cache_dir=str(cache), batch_size=2)
  old = in_memory.rows(c, 'train')
  old_key = text_files.cache_key(text_files.load_corpus(c), c, 'train')
  with open(text_files.cache_path(str(cache), old_key), 'rb') as f:
    old_bytes = f.read()
  write(tmp_path / 'data' / 'doc.txt', '\n\n'.join(B_DOCS[::-1]))   # same bytes, other order
  new_key = text_files.cache_key(text_files.load_corpus(c), c, 'train')
  assert new_key != old_key
  new = in_memory.rows(c, 'train')
  assert decoded_documents(new, vocabularies.get_vocabulary('byte')) == B_DOCS[::-1]
  assert not np.array_equal(new, old)
  with open(text_files.cache_path(str(cache), old_key), 'rb') as f:
    assert f.read() == old_bytes   # the other key's file is untouched
  assert os.path.isfile(text_files.cache_path(str(cache), new_key))
  assert not [name for name in os.listdir(cache) if name.startswith('.tmp')]


# ---------------------------------------------------------------------------------------------- errors


def check(c, eval_batches=0):
  return text_files.check_text_files(c, eval_batches=eval_batches)


def test_file_errors_name_the_key_glob_file_and_position(corpus, tmp_path):
  with pytest.raises(ValueError, match=r"data.train_files='.*/nothing/\*.txt': matches no file"):
    check(cfg(train_files=f'{tmp_path}/nothing/*.txt'))
  with pytest.raises(ValueError, match=r"data.validation_files=.*the glob 'missing/\*.jsonl' matches no file "
                                       r'\(relative to '):
    check(cfg(corpus, validation_files=f'{corpus}/validation/v.txt,missing/*.jsonl'))
  write(tmp_path / 'bad' / 'notes.md', 'text')
  with pytest.raises(ValueError, match=r"notes.md' is not a supported file: use .txt, .txt.gz, .jsonl"):
    check(cfg(train_files=f'{tmp_path}/bad/*'))
  write(tmp_path / 'latin1' / 'x.txt', b'caf\xe9 au lait')
  with pytest.raises(ValueError, match=r"latin1/x.txt' is not UTF-8: byte offset 3 "):
    check(cfg(train_files=f'{tmp_path}/latin1/x.txt'))
  write(tmp_path / 'latin1' / 'y.jsonl.gz', b'{"body": "ok"}\n\xff')
  with pytest.raises(ValueError, match=r"y.jsonl.gz' is not UTF-8: byte offset 15 of the decompressed data"):
    check(cfg(train_files=f'{tmp_path}/latin1/y.jsonl.gz'))
  write(tmp_path / 'json' / 'bad.jsonl', '{"body": "fine"}\n{"body": "broken\n')
  with pytest.raises(ValueError, match=r"bad.jsonl' line 2: not valid JSON"):
    check(cfg(train_files=f'{tmp_path}/json/bad.jsonl'))
  write(tmp_path / 'json' / 'field.jsonl', '\n{"text": "wrong field"}\n')
  with pytest.raises(ValueError, match=r"field.jsonl' line 2: no field data.text_key='body' \(the line has \['text'\]"):
    check(cfg(train_files=f'{tmp_path}/json/field.jsonl'))
  write(tmp_path / 'json' / 'number.jsonl', '{"body": 7}\n')
  with pytest.raises(ValueError, match=r"number.jsonl' line 1: field data.text_key='body' is a int, not a string"):
    check(cfg(train_files=f'{tmp_path}/json/number.jsonl'))
  write(tmp_path / 'json' / 'not.jsonl.gz', 'x')
  with open(tmp_path / 'json' / 'not.jsonl.gz', 'wb') as f:
    f.write(b'not gzip at all')
  with pytest.raises(ValueError, match=r"not.jsonl.gz' is not a valid gzip file"):
    check(cfg(train_files=f'{tmp_path}/json/not.jsonl.gz'))
  with pytest.raises(ValueError, match=r'both match .*v.txt.*a file belongs to one split'):
    check(cfg(train_files=f'{corpus}/validation/*.txt', validation_files=f'{corpus}/validation/v.txt'))


def test_corpus_size_errors(corpus, tmp_path):
  write(tmp_path / 'empty' / 'blank.txt', '\n  \n\n')
  write(tmp_path / 'empty' / 'blank.jsonl', '\n')
  with pytest.raises(ValueError, match=r'the corpus is empty: its 2 file\(s\) .*blank.* hold no document'):
    check(cfg(train_files=f'{tmp_path}/empty/*'))
  write(tmp_path / 'small' / 'hi.txt', 'Hi there.')   # 9 bytes + EOS = 10 byte tokens
  with pytest.raises(ValueError, match=r"'train' split has 10 tokens .* shorter than one sequence of data.seq_len=16"):
    check(cfg(train_files=f'{tmp_path}/small/hi.txt'))
  with pytest.raises(ValueError, match=r'has 10 tokens .* 2 sequences of data.seq_len=8: fewer than one global '
                                       r'batch \(data.batch_size=4\)'):
    check(cfg(train_files=f'{tmp_path}/small/hi.txt', seq_len=8))
  check(cfg(train_files=f'{tmp_path}/small/hi.txt', seq_len=8, batch_size=2))
  # SentencePiece: the text gives only an upper bound; the exact count is checked once tokenized.
  sp = cfg(train_files=f'{tmp_path}/small/hi.txt', vocabulary='sentencepiece', seq_len=4, batch_size=4)
  check(sp)   # 'Hi there.' is 4 pieces + EOS: 2 sequences of 4 tokens
  with pytest.raises(ValueError, match=r"split 'train' has 2 sequences of data.seq_len=4 tokens, fewer than one "
                                       r'global batch'):
    pipeline.make_train_iterator(sp)
  with pytest.raises(ValueError, match=r"split 'train' has 5 tokens, fewer than one sequence of data.seq_len=16"):
    pipeline.make_train_iterator(cfg(train_files=f'{tmp_path}/small/hi.txt', vocabulary='sentencepiece',
                                     batch_size=1))
  # No validation files: fine without validation batches, a clear error with them.
  no_validation = cfg(train_files=f'{corpus}/train/*.txt*')
  check(no_validation)
  with pytest.raises(ValueError, match=r"data.eval_split='validation' .* no documents .* train.eval_batches=8"):
    check(no_validation, eval_batches=8)
  with pytest.raises(ValueError, match=r"data.eval_split='validation' of data.task='text_files' has no tokens"):
    pipeline.make_eval_batches(no_validation, 1)
  write(tmp_path / 'few' / 'three.txt', 'one\ntwo\nthree')
  with pytest.raises(ValueError, match=r'data.validation_fraction=1e-09: the hash split of the 3 documents .* '
                                       r'leaves the validation split empty'):
    check(cfg(files=f'{tmp_path}/few/*.txt', txt_documents='line', validation_fraction=1e-9, seq_len=2,
              batch_size=1))


def test_setting_errors_in_check_and_validate_config(corpus):
  cases = [
      (dict(train_files=f'{corpus}/train/a.txt', files=f'{corpus}/train/a.txt'),
       r"data.files=.*given together with data.train_files=.*exactly one of data.train_files"),
      (dict(), r"data.train_files='': and data.files are both empty: data.task='text_files' needs exactly one"),
      (dict(files=f'{corpus}/train/a.txt', validation_fraction=1.5), r'data.validation_fraction=1.5: must be a '
       r'number in \(0, 1\)'),
      (dict(files=f'{corpus}/train/a.txt', validation_fraction=0.0), r'data.validation_fraction=0.0: must be'),
      (dict(files=f'{corpus}/train/a.txt', validation_files=f'{corpus}/validation/v.txt'),
       r'data.validation_files=.*only goes with data.train_files'),
      (dict(train_files=f'{corpus}/train/a.txt', txt_documents='sentence'),
       r"data.txt_documents='sentence': must be one of 'paragraph', 'line', 'file'"),
      (dict(train_files=f'{corpus}/train/a.txt', eval_split='test'),
       r"data.eval_split='test': must be one of 'train', 'validation'"),
  ]
  for overrides, message in cases:
    with pytest.raises(ValueError, match=message):
      check(cfg(**overrides))
    config = get_base_config()
    config.data = cfg(**overrides)
    with pytest.raises(ValueError, match=message):
      validate_config(config)
  config = get_base_config()
  config.data = cfg(corpus)
  config.model.vocab_size = 264
  validate_config(config)   # a good text_files config passes (and reads no file)
  assert text_files.setting_errors(cfg(corpus)) == []


# ---------------------------------------------------------------------------------------------- training


def tiny_config(**overrides):
  """configs/test_tiny.py with `overrides` (dotted keys)."""
  spec = importlib.util.spec_from_file_location('configs_test_tiny', ROOT / 'configs' / 'test_tiny.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.update_from_flattened_dict(overrides)
  return config


def test_training_end_to_end_and_bad_glob_fails_before_the_workdir(corpus, tmp_path):
  from samoe_jax.training import loop  # pylint: disable=g-import-not-at-top  (imports JAX)
  data = {'data.task': 'text_files', 'data.text_key': 'body', 'data.train_files': cfg(corpus).train_files,
          'data.validation_files': cfg(corpus).validation_files}
  run = {'train.steps': 2, 'train.decay_steps': 2, 'train.warmup_steps': 1, 'train.eval_every': 2,
         'train.eval_batches': 2, 'train.checkpoint_every': 2, 'train.async_checkpoint': False,
         'model.dropout_rate': 0.0}
  bad = tmp_path / 'bad_run'
  with pytest.raises(ValueError, match=r"data.train_files='.*/no_such_dir/\*.txt': matches no file"):
    loop.train(tiny_config(**{**run, **data, 'data.train_files': f'{tmp_path}/no_such_dir/*.txt'}), str(bad))
  assert not bad.exists()
  metrics = loop.train(tiny_config(**run, **data), str(tmp_path / 'run'))
  assert metrics['step'] == 2 and math.isfinite(metrics['eval/perplexity']) and metrics['eval/num_tokens'] > 0
  with open(tmp_path / 'run' / 'config.json') as f:
    assert json.load(f)['data']['train_files'] == data['data.train_files']
  # Resuming on another corpus (other documents) is refused before anything in the workdir is rewritten.
  before = {p.name: p.read_bytes() for p in (tmp_path / 'run').iterdir() if p.is_file()}
  more = {**run, 'train.steps': 4, 'train.decay_steps': 4}
  with pytest.raises(ValueError, match='saved on the corpus .* resume with the original files'):
    loop.train(tiny_config(**more, **data, **{'data.txt_documents': 'line'}), str(tmp_path / 'run'))
  assert {p.name: p.read_bytes() for p in (tmp_path / 'run').iterdir() if p.is_file()} == before
