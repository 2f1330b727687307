"""The vocabularies `data.vocabulary` may name: the shipped SentencePiece model, bytes, GPT-2 BPE, or a file.

Plain Python (sentencepiece, tiktoken; no TensorFlow or seqio): `get_vocabulary` gives a
text_vocabularies.Vocabulary with seqio's ids; the seqio tasks wrap it (data/seqio_vocabularies.py).
"""

from __future__ import annotations

import functools
import hashlib
import os

from samoe_jax.data import gpt2_vocabulary
from samoe_jax.data import text_vocabularies

VOCAB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'vocab')
SHIPPED_MODEL = os.path.join(VOCAB_DIR, 'shakespeare_sp8k.model')
SHIPPED_GPT2 = gpt2_vocabulary.GPT2_FILE
NAMED_VOCABULARIES = ('sentencepiece', 'byte', 'gpt2')
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def _allowed() -> str:
  return (f'{", ".join(map(repr, NAMED_VOCABULARIES))}, or a path to an existing SentencePiece .model file or '
          f'tiktoken BPE .tiktoken file')


def _check_file(path: str) -> str:
  known_suffix = path.endswith(('.model', '.tiktoken'))
  if not known_suffix or not os.path.isfile(path):
    why = 'does not exist' if known_suffix else 'does not end in .model or .tiktoken'
    raise ValueError(f'data.vocabulary={path!r} is not a known vocabulary ({why}): use {_allowed()}.')
  return os.path.abspath(path)


def _check_layout(vocab: text_vocabularies.SentencePieceVocabulary, path: str) -> None:
  sp = vocab.tokenizer
  ids = (sp.pad_id(), sp.eos_id(), sp.unk_id())
  if ids != (PAD_ID, EOS_ID, UNK_ID):
    raise ValueError(f'data.vocabulary={path!r} has (pad, eos, unk) ids {ids}; seqio needs '
                     f'({PAD_ID}, {EOS_ID}, {UNK_ID}): retrain it with pad_id=0, eos_id=1, unk_id=2 '
                     f'(see samoe_jax/data/train_tokenizer.py).')


@functools.lru_cache(maxsize=None)
def _load(kind: str, path: str) -> text_vocabularies.Vocabulary:
  if kind == 'byte':
    return text_vocabularies.ByteVocabulary()
  if kind == 'bpe':  # the shipped file must be GPT-2's (hash-checked); any other .tiktoken file is taken as is
    return gpt2_vocabulary.Gpt2Vocabulary(path, gpt2_vocabulary.GPT2_SHA256 if path == SHIPPED_GPT2 else None)
  try:
    vocab = text_vocabularies.SentencePieceVocabulary(path)
  except Exception as err:  # pylint: disable=broad-except  (protobuf DecodeError, RuntimeError, OSError)
    raise ValueError(f'data.vocabulary={path!r} is not a SentencePiece model ({type(err).__name__}: {err}); give '
                     'a .model file written by sentencepiece (samoe_jax/data/train_tokenizer.py trains one).') from err
  _check_layout(vocab, path)
  return vocab


def _resolve(name: str) -> tuple[str, str]:
  """(kind, absolute file path or '') for a data.vocabulary value; raises ValueError for a bad one."""
  if not isinstance(name, str) or not name:
    raise ValueError(f'data.vocabulary={name!r} is not a known vocabulary: use {_allowed()}.')
  if name == 'byte':
    return 'byte', ''
  if name == 'sentencepiece':
    return 'sentencepiece', SHIPPED_MODEL
  if name == 'gpt2':
    return 'bpe', SHIPPED_GPT2
  path = _check_file(name)
  return ('bpe' if path.endswith('.tiktoken') else 'sentencepiece'), path


def get_vocabulary(name: str) -> text_vocabularies.Vocabulary:
  """The vocabulary for `name`: 'sentencepiece' (shipped 8k model), 'byte', 'gpt2' (shipped GPT-2 BPE,
  hash-checked), or a path to a SentencePiece .model file or a tiktoken .tiktoken BPE file.

  Ids follow seqio's layout: 0 = padding; SentencePiece and bytes have 1 = EOS, 2 = UNK; BPE files have every
  tiktoken id shifted by +1 and EOS = <|endoftext|> + 1 (GPT-2: 50257 of 50258 ids), see gpt2_vocabulary.py.
  """
  return _load(*_resolve(name))


def vocabulary_key(name: str) -> str:
  """A short name for task registration: 'sentencepiece', 'byte', 'gpt2' (the shipped file, or any file with
  GPT-2's content), or 'spm_<content hash>' / 'bpe_<content hash>' for a .model / .tiktoken file."""
  kind, path = _resolve(name)
  if kind == 'byte' or path == SHIPPED_MODEL:
    return kind
  if path == SHIPPED_GPT2:
    return 'gpt2'
  with open(path, 'rb') as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  if kind == 'bpe':
    return 'gpt2' if digest == gpt2_vocabulary.GPT2_SHA256 else 'bpe_' + digest[:12]
  return 'spm_' + digest[:12]
