"""The vocabularies `data.vocabulary` may name: the shipped SentencePiece model, bytes, or a .model file."""

from __future__ import annotations

import functools
import hashlib
import os

from samoe_jax.data import tf_setup  # pylint: disable=unused-import  # before seqio: quiet TF, no GPU

import seqio  # pylint: disable=g-import-not-at-top,wrong-import-order

VOCAB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'vocab')
SHIPPED_MODEL = os.path.join(VOCAB_DIR, 'shakespeare_sp8k.model')
NAMED_VOCABULARIES = ('sentencepiece', 'byte')
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def _allowed() -> str:
  return f'{", ".join(map(repr, NAMED_VOCABULARIES))}, or a path to an existing SentencePiece .model file'


def _check_model_file(path: str) -> str:
  if not path.endswith('.model') or not os.path.isfile(path):
    why = 'does not end in .model' if not path.endswith('.model') else 'does not exist'
    raise ValueError(f'data.vocabulary={path!r} is not a known vocabulary ({why}): use {_allowed()}.')
  return os.path.abspath(path)


def _check_layout(vocab: seqio.SentencePieceVocabulary, path: str) -> None:
  sp = vocab.tokenizer
  ids = (sp.pad_id(), sp.eos_id(), sp.unk_id())
  if ids != (PAD_ID, EOS_ID, UNK_ID):
    raise ValueError(f'data.vocabulary={path!r} has (pad, eos, unk) ids {ids}; seqio needs '
                     f'({PAD_ID}, {EOS_ID}, {UNK_ID}): retrain it with pad_id=0, eos_id=1, unk_id=2 '
                     f'(see samoe_jax/data/train_tokenizer.py).')


@functools.lru_cache(maxsize=None)
def _load(kind: str, path: str) -> seqio.Vocabulary:
  if kind == 'byte':
    return seqio.ByteVocabulary()
  vocab = seqio.SentencePieceVocabulary(path)
  _check_layout(vocab, path)
  return vocab


def _resolve(name: str) -> tuple[str, str]:
  """(kind, absolute model path or '') for a data.vocabulary value; raises ValueError for a bad one."""
  if not isinstance(name, str) or not name:
    raise ValueError(f'data.vocabulary={name!r} is not a known vocabulary: use {_allowed()}.')
  if name == 'byte':
    return 'byte', ''
  if name == 'sentencepiece':
    return 'sentencepiece', SHIPPED_MODEL
  return 'sentencepiece', _check_model_file(name)


def get_vocabulary(name: str) -> seqio.Vocabulary:
  """The seqio vocabulary for `name`: 'sentencepiece' (shipped 8k model), 'byte', or a path to a .model file.

  Ids follow seqio's layout: 0 = padding, 1 = EOS, 2 = UNK.
  """
  return _load(*_resolve(name))


def vocabulary_key(name: str) -> str:
  """A short name for task registration: 'sentencepiece', 'byte', or 'spm_<content hash>' for a model file."""
  kind, path = _resolve(name)
  if kind == 'byte' or path == SHIPPED_MODEL:
    return kind
  with open(path, 'rb') as f:
    return 'spm_' + hashlib.sha256(f.read()).hexdigest()[:12]
