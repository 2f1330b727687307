"""The seqio form of a data.vocabulary, for the seqio tasks (data/tasks.py); imports seqio and TensorFlow.

`get_seqio_vocabulary(name)` is seqio.SentencePieceVocabulary(model file) for SentencePiece, seqio.ByteVocabulary()
for bytes, and `BpeVocabulary` (a seqio.Vocabulary over data/gpt2_vocabulary.py's Gpt2Vocabulary, with
tf.numpy_function for the TensorFlow half) for a .tiktoken file. Their ids are those of
`vocabularies.get_vocabulary(name)`, the plain-Python vocabulary everything else uses.
"""

from __future__ import annotations

import functools

from samoe_jax.data import tf_setup  # pylint: disable=unused-import  # before seqio: quiet TF, no GPU

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-order
import seqio  # pylint: disable=g-import-not-at-top,wrong-import-order
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-order

from samoe_jax.data import gpt2_vocabulary  # pylint: disable=g-import-not-at-top,wrong-import-order
from samoe_jax.data import text_vocabularies  # pylint: disable=g-import-not-at-top,wrong-import-order
from samoe_jax.data import vocabularies  # pylint: disable=g-import-not-at-top,wrong-import-order


class BpeVocabulary(seqio.Vocabulary):
  """seqio vocabulary over a Gpt2Vocabulary (a .tiktoken BPE file, ids shifted by +1; see gpt2_vocabulary.py)."""

  def __init__(self, bpe: gpt2_vocabulary.Gpt2Vocabulary):
    super().__init__(extra_ids=0)
    self.bpe = bpe

  @property
  def bos_id(self) -> int | None:
    return None

  @property
  def eos_id(self) -> int:
    return self.bpe.eos_id

  @property
  def unk_id(self) -> int | None:
    return None

  @property
  def _base_vocab_size(self) -> int:
    return self.bpe.vocab_size

  def _encode(self, s: str) -> list[int]:
    return self.bpe.encode(s)

  def _decode(self, ids) -> str:
    return self.bpe._decode(ids)  # pylint: disable=protected-access  (seqio.Vocabulary.decode cut at EOS already)

  def _encode_numpy(self, s: bytes | np.ndarray) -> np.ndarray:
    s = s.item() if isinstance(s, np.ndarray) else s  # a 0-d array eagerly, bytes inside tf.data
    return np.asarray(self.bpe.encode(s.decode('utf-8', errors='replace')), np.int32)

  def _encode_batch_numpy(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = [self.bpe.encode(x.decode('utf-8', errors='replace')) for x in s.tolist()]
    values = np.asarray([i for row in rows for i in row], np.int32)
    return values, np.asarray([len(row) for row in rows], np.int64)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
    """tf.string scalar -> int32 [T]; tf.string [B] -> int32 ragged [B, None] (via tf.numpy_function)."""
    s = tf.convert_to_tensor(s, tf.string)
    if s.shape.rank == 0:
      ids = tf.numpy_function(self._encode_numpy, [s], tf.int32, stateful=False)
      ids.set_shape([None])
      return ids
    if s.shape.rank == 1:
      values, lengths = tf.numpy_function(self._encode_batch_numpy, [s], [tf.int32, tf.int64], stateful=False)
      values.set_shape([None])
      lengths.set_shape([None])
      return tf.RaggedTensor.from_row_lengths(values, lengths)
    raise ValueError(f'BpeVocabulary.encode_tf takes a scalar or 1-D tf.string tensor; got shape {s.shape}.')

  def _decode_numpy(self, ids: np.ndarray) -> np.ndarray:
    if ids.ndim == 1:
      return np.asarray(self._decode(ids.tolist()).encode('utf-8'), dtype=object)
    return np.asarray([self._decode(row).encode('utf-8') for row in ids.tolist()], dtype=object)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """int ids [T] -> tf.string scalar; [B, T] -> tf.string [B]."""
    ids = tf.convert_to_tensor(ids)
    if ids.shape.rank not in (1, 2):
      raise ValueError(f'BpeVocabulary.decode_tf takes 1-D or 2-D ids; got shape {ids.shape}.')
    text = tf.numpy_function(self._decode_numpy, [ids], tf.string, stateful=False)
    text.set_shape(ids.shape[:-1])
    return text

  def __eq__(self, other: object) -> bool:
    return isinstance(other, BpeVocabulary) and self.bpe == other.bpe

  def __hash__(self) -> int:
    return hash(self.bpe)

  def __str__(self) -> str:
    return f'BpeVocabulary({self.bpe})'


def seqio_vocabulary(vocab: text_vocabularies.Vocabulary) -> seqio.Vocabulary:
  """The seqio vocabulary with the ids of the plain vocabulary `vocab`."""
  if isinstance(vocab, text_vocabularies.SentencePieceVocabulary):
    return seqio.SentencePieceVocabulary(vocab.sentencepiece_model_file)
  if isinstance(vocab, text_vocabularies.ByteVocabulary):
    return seqio.ByteVocabulary()
  if isinstance(vocab, gpt2_vocabulary.Gpt2Vocabulary):
    return BpeVocabulary(vocab)
  raise ValueError(f'vocabulary {vocab} has no seqio form: use one of data/vocabularies.py\'s vocabularies.')


@functools.lru_cache(maxsize=None)
def get_seqio_vocabulary(name: str) -> seqio.Vocabulary:
  """The seqio vocabulary of data.vocabulary=`name` (checked and loaded by vocabularies.get_vocabulary)."""
  return seqio_vocabulary(vocabularies.get_vocabulary(name))
