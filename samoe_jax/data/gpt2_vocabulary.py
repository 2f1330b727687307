"""GPT-2 byte-level BPE in plain Python: tiktoken over a local .tiktoken file, every id shifted by one.

seqio reserves id 0 for padding (its feature converters weight the loss by `targets != 0`) and GPT-2's id 0 is the
real token "!", so every tiktoken id is shifted by +1:

  0                 padding (also the decoder's start token)
  1 .. N            BPE tokens 0 .. N-1 (GPT-2: N = 50256, so "!" is 1 and "Hello" is 15497)
  N + 1             <|endoftext|> (GPT-2's 50256) = EOS
  N + 2             ids in all (GPT-2: 50258); there is no UNK (byte-level BPE spells any text)

The shipped file `vocab/gpt2.tiktoken` is tiktoken's r50k_base (GPT-2), taken from the openai-whisper sdist (MIT,
see vocab/GPT2_LICENSE.txt); its sha256 is checked at load time. Any other .tiktoken file (base64 token, rank per
line, ranks 0 .. N-1) is read with GPT-2's pre-tokenization pattern and <|endoftext|> = N.

Text is encoded as ordinary text: a literal '<|endoftext|>' inside a document is spelled out in BPE tokens, never
turned into EOS. The file is read here rather than with tiktoken.load.load_tiktoken_bpe, which keeps a copy keyed
by the path in a temp-dir cache and would serve that stale copy if the file at the path changed. No TensorFlow or
seqio here: data/seqio_vocabularies.py wraps this vocabulary for the seqio tasks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable, Sequence

import numpy as np
import tiktoken

from samoe_jax.data import text_vocabularies

GPT2_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'vocab', 'gpt2.tiktoken')
GPT2_SHA256 = '306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930'
GPT2_VOCAB_SIZE = 50258  # 50256 BPE tokens + <|endoftext|> + padding
# tiktoken's r50k_base pattern: GPT-2's pre-tokenization regex with possessive quantifiers (same splits).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
ENDOFTEXT = '<|endoftext|>'
SHIFT = 1  # our id = tiktoken id + SHIFT


def _parse_ranks(contents: bytes, path: str) -> dict[bytes, int]:
  """{token bytes: rank} of a .tiktoken file; ValueError naming the file and line for a malformed one."""
  ranks: dict[bytes, int] = {}
  for number, line in enumerate(contents.splitlines(), start=1):
    if not line.strip():
      continue
    fields = line.split()
    try:
      if len(fields) != 2:
        raise ValueError('expected 2 fields')
      token, rank = base64.b64decode(fields[0], validate=True), int(fields[1])
    except (ValueError, binascii.Error) as e:
      raise ValueError(f'{path} line {number}: {line[:80]!r} is not "<base64 token> <rank>" ({e}).') from e
    if token in ranks:
      raise ValueError(f'{path} line {number}: token {token!r} appears twice.')
    ranks[token] = rank
  if not ranks:
    raise ValueError(f'{path} holds no tokens: a .tiktoken file has one "<base64 token> <rank>" line per token.')
  if sorted(ranks.values()) != list(range(len(ranks))):
    raise ValueError(f'{path}: the ranks of its {len(ranks)} tokens are not 0 .. {len(ranks) - 1}, each once.')
  return ranks


def load_encoding(path: str, sha256: str | None = None) -> tiktoken.Encoding:
  """A tiktoken.Encoding from the local .tiktoken file `path` (GPT-2 pattern, <|endoftext|> = its token count).

  With `sha256`, the file's content hash must equal it (ValueError otherwise). Never touches the network.
  """
  if not os.path.isfile(path):
    raise ValueError(f'BPE vocabulary file {path!r} does not exist.')
  with open(path, 'rb') as f:
    contents = f.read()
  digest = hashlib.sha256(contents).hexdigest()
  if sha256 is not None and digest != sha256:
    raise ValueError(f'{path} has sha256 {digest}, not {sha256} (the GPT-2 r50k_base file that '
                     f"data.vocabulary='gpt2' needs): restore samoe_jax/data/vocab/gpt2.tiktoken from the "
                     f'openai-whisper==20250625 sdist (whisper/assets/gpt2.tiktoken), or pass the path of a '
                     f'different .tiktoken file as data.vocabulary.')
  ranks = _parse_ranks(contents, path)
  n = len(ranks)
  name = 'gpt2' if digest == GPT2_SHA256 else f'bpe_{digest[:12]}'
  return tiktoken.Encoding(name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={ENDOFTEXT: n},
                           explicit_n_vocab=n + 1)


class Gpt2Vocabulary(text_vocabularies.Vocabulary):
  """A .tiktoken BPE file with ids shifted by +1 (0 = padding, EOS = <|endoftext|> + 1), seqio's decode rules.

  Args:
    path: the .tiktoken file (default: the shipped GPT-2 file).
    sha256: the content hash the file must have (default: GPT-2's; None accepts any well-formed file).
  """

  def __init__(self, path: str = GPT2_FILE, sha256: str | None = GPT2_SHA256):
    self._path = os.path.abspath(path)
    self._sha256 = sha256
    self._encoding = load_encoding(self._path, sha256)
    self._num_bpe = self._encoding.eot_token  # BPE tokens 0 .. N-1; <|endoftext|> = N

  # ----------------------------------------------------------------------------------------- ids

  @property
  def encoding(self) -> tiktoken.Encoding:
    """The unshifted tiktoken encoding."""
    return self._encoding

  @property
  def path(self) -> str:
    return self._path

  @property
  def bos_id(self) -> int | None:
    return None

  @property
  def eos_id(self) -> int:
    return self._num_bpe + SHIFT

  @property
  def unk_id(self) -> int | None:
    return None

  @property
  def vocab_size(self) -> int:
    return self._num_bpe + 2

  # ----------------------------------------------------------------------------------------- python

  def encode(self, s: str) -> list[int]:
    """Text -> shifted ids [T] (no EOS); '<|endoftext|>' in the text is ordinary text."""
    if isinstance(s, bytes):
      s = s.decode('utf-8', errors='replace')
    if not isinstance(s, str):
      raise ValueError(f'Gpt2Vocabulary encodes text (str); got {type(s).__name__} {s!r}.')
    return [i + SHIFT for i in self._encoding.encode_ordinary(s)]

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [np.asarray(ids, np.int32) + SHIFT for ids in self._encoding.encode_ordinary_batch(list(texts))]

  def _decode(self, ids: Iterable[int]) -> str:
    """Shifted ids -> text; padding, EOS and ids outside the vocabulary are dropped; broken UTF-8 becomes U+FFFD."""
    tokens = [int(i) - SHIFT for i in ids if SHIFT <= int(i) <= self._num_bpe]
    return self._encoding.decode(tokens, errors='replace')

  # ----------------------------------------------------------------------------------------- identity

  def __getstate__(self) -> dict:
    state = self.__dict__.copy()
    del state['_encoding']  # rebuilt from the file (hash-checked again) on unpickling
    return state

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._encoding = load_encoding(self._path, self._sha256)

  def __eq__(self, other: object) -> bool:
    return isinstance(other, Gpt2Vocabulary) and self._encoding.name == other._encoding.name

  def __hash__(self) -> int:
    return hash(self._encoding.name)

  def __str__(self) -> str:
    return f'Gpt2Vocabulary(file={self._path}, encoding={self._encoding.name}, size={self.vocab_size})'

