"""SentencePiece and byte vocabularies in plain Python (no TensorFlow, no seqio), with seqio's ids.

`SentencePieceVocabulary(path)` and `ByteVocabulary()` give the ids, sizes and decoded text of
seqio.SentencePieceVocabulary(path) (extra_ids=0) and seqio.ByteVocabulary(), the vocabularies of the seqio tasks:
0 = padding, 1 = EOS, 2 = UNK; a SentencePiece id is the model's own piece id, a byte is its value + 3 (259 ids).
tests/test_text_vocabularies.py checks that against seqio on the shipped corpora and models.

`Vocabulary` is the Python half of seqio.Vocabulary that the project uses (encode, decode, the special ids,
vocab_size) plus `encode_batch`, which tokenizes many documents at once into int32 arrays (data/in_memory.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece

PAD_ID = 0
BYTE_OFFSET = 3   # ByteVocabulary: ids 0, 1, 2 are padding, EOS and UNK; byte b is id b + 3
BYTE_VOCAB_SIZE = 256 + BYTE_OFFSET


class Vocabulary:
  """Text <-> int ids; 0 is padding. Subclasses give the ids (eos_id, unk_id, vocab_size) and _encode/_decode."""

  pad_id: int = PAD_ID
  extra_ids: int = 0

  @property
  def bos_id(self) -> int | None:
    return None

  @property
  def eos_id(self) -> int | None:
    raise NotImplementedError

  @property
  def unk_id(self) -> int | None:
    raise NotImplementedError

  @property
  def vocab_size(self) -> int:
    raise NotImplementedError

  def encode(self, s: str) -> list[int]:
    """Text -> ids [T], no EOS."""
    raise NotImplementedError

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    """Texts -> one int32 [T_i] array of ids each (no EOS), as `encode` gives them."""
    return [np.asarray(self.encode(text), np.int32) for text in texts]

  def _decode(self, ids: list[int]) -> str:
    raise NotImplementedError

  def decode(self, ids: Iterable[int]) -> str:
    """Ids -> text, as seqio.Vocabulary.decode: ids >= vocab_size become UNK (where there is one) and everything
    after the first EOS is dropped; padding, EOS and UNK render as the vocabulary renders them."""
    clean = [int(i) for i in ids]
    if self.unk_id is not None:
      clean = [self.unk_id if i >= self.vocab_size else i for i in clean]
    if self.eos_id is not None and self.eos_id in clean:
      clean = clean[:clean.index(self.eos_id) + 1]
    return self._decode(clean)


class SentencePieceVocabulary(Vocabulary):
  """A SentencePiece .model file through the `sentencepiece` package; ids are the model's piece ids.

  Raises whatever sentencepiece raises for a file that is not a model (data/vocabularies.py names the file).
  """

  def __init__(self, path: str):
    self._path = os.path.abspath(path)
    with open(self._path, 'rb') as f:
      self._model = f.read()
    self._sp = sentencepiece.SentencePieceProcessor()
    self._sp.LoadFromSerializedProto(self._model)

  @property
  def tokenizer(self) -> sentencepiece.SentencePieceProcessor:
    """The loaded SentencePieceProcessor (seqio's `tokenizer`)."""
    return self._sp

  @property
  def sentencepiece_model_file(self) -> str:
    return self._path

  @property
  def sp_model(self) -> bytes:
    """The model file's bytes."""
    return self._model

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id()   # -1 where the model has none, as seqio reports it

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  @property
  def unk_id(self) -> int:
    return self._sp.unk_id()

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def encode(self, s: str) -> list[int]:
    return self._sp.EncodeAsIds(s)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [np.asarray(ids, np.int32) for ids in self._sp.encode(list(texts))]

  def _decode(self, ids: list[int]) -> str:
    return self._sp.DecodeIds(ids)

  def __getstate__(self) -> dict:
    return {'_path': self._path, '_model': self._model}

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._sp = sentencepiece.SentencePieceProcessor()
    self._sp.LoadFromSerializedProto(self._model)

  def __eq__(self, other: object) -> bool:
    return isinstance(other, SentencePieceVocabulary) and self._model == other._model

  def __hash__(self) -> int:
    return hash(self._model)

  def __str__(self) -> str:
    return f'SentencePieceVocabulary(file={self._path}, size={self.vocab_size})'


class ByteVocabulary(Vocabulary):
  """UTF-8 bytes: byte b is id b + 3 (259 ids); decoding drops padding, EOS, UNK and broken UTF-8."""

  @property
  def eos_id(self) -> int:
    return 1

  @property
  def unk_id(self) -> int:
    return 2

  @property
  def vocab_size(self) -> int:
    return BYTE_VOCAB_SIZE

  def encode(self, s: str | bytes) -> list[int]:
    data = s if isinstance(s, bytes) else s.encode('utf-8')
    return [b + BYTE_OFFSET for b in data]

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32) + BYTE_OFFSET for text in texts]

  def _decode(self, ids: list[int]) -> str:
    data = bytes(i - BYTE_OFFSET for i in ids if BYTE_OFFSET <= i < BYTE_VOCAB_SIZE)
    return data.decode('utf-8', errors='ignore')

  def __eq__(self, other: object) -> bool:
    return isinstance(other, ByteVocabulary)

  def __hash__(self) -> int:
    return hash('ByteVocabulary')

  def __str__(self) -> str:
    return f'ByteVocabulary(size={BYTE_VOCAB_SIZE})'
