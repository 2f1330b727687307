"""Tests of samoe_jax.data.corpus_vocab: more vocabularies for a built experiment corpus (a small fake one)."""

from __future__ import annotations

import json
import os

import pytest

from samoe_jax.data import corpus_vocab
from samoe_jax.data import experiment_corpus as ec
from test_experiment_corpus import _fake_source  # pylint: disable=g-bad-import-order  (tests/ helper)


def test_vocab_name():
  assert [corpus_vocab.vocab_name(n) for n in (1024, 2048, 4096, 1000)] == ['sp1k', 'sp2k', 'sp4k', 'sp1000']


def test_train_vocab_reproduces_the_corpus_model_and_counts_tokens(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(ec, 'SP_VOCAB_SIZE', 300)
  monkeypatch.setattr(ec, 'MIN_TRAIN_TOKENS', 1000)
  out = str(tmp_path / 'corpus')
  src = _fake_source(tmp_path)
  manifest = ec.build(out, str(tmp_path / 'dl'), srcs=(src,))
  files = {n: ec.sha256_file(os.path.join(out, n)) for n in manifest['files']}

  # The corpus's own size under another name: the same sample and flags give sp4k.model's bytes and counts.
  assert corpus_vocab.main(['--corpus', out, '--vocab_size', '300', '--vocab_size', '296']) == 0
  with open(os.path.join(out, 'sp300.model'), 'rb') as a, open(os.path.join(out, 'sp4k.model'), 'rb') as b:
    assert a.read() == b.read()
  with open(os.path.join(out, 'sp300.json'), encoding='utf-8') as f:
    info = json.load(f)
  assert info['tokens'] == {s: manifest['splits'][s]['tokens'] for s in ec.SPLITS}
  assert info['tokens_with_eos'] == {s: manifest['splits'][s]['tokens_with_eos'] for s in ec.SPLITS}
  assert info['sample_paragraphs'] == manifest['tokenizer']['sample_paragraphs']
  assert info['flags'] == manifest['tokenizer']['flags']
  with open(os.path.join(out, 'sp296.json'), encoding='utf-8') as f:
    small = json.load(f)
  assert small['vocab_size'] == 296 and small['tokens']['train'] > info['tokens']['train']   # fewer pieces, more tokens
  assert f"{info['tokens']['train']:,}" in capsys.readouterr().out
  # The corpus itself is untouched and still this build.
  assert {n: ec.sha256_file(os.path.join(out, n)) for n in manifest['files']} == files
  assert ec.check_out_dir(out, force=False, srcs=(src,))

  with pytest.raises(ec.CorpusError, match='sp4k.model is a file of the corpus itself'):
    corpus_vocab.train_vocab(out, 4096)
  with open(os.path.join(out, 'train.jsonl.gz'), 'ab') as f:
    f.write(b'x')
  with pytest.raises(ec.CorpusError, match='does not match its manifest.json'):
    corpus_vocab.train_vocab(out, 290)
  assert corpus_vocab.main(['--corpus', str(tmp_path / 'none'), '--vocab_size', '300']) == 1
