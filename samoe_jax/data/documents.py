"""The on-disk format of the embedded corpora: documents separated by one blank line.

A corpus file is UTF-8 text (gzip-compressed when its name ends in `.gz`). Documents never contain a blank line,
so `"\\n\\n"` separates them unambiguously; newlines inside a document are part of its text. Pure Python (no
TensorFlow): the corpus builder, the tokenizer trainer and the seqio data source all share these functions.
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Iterable, Sequence

SEPARATOR = '\n\n'

# Where the shipped corpora live (package data next to this module).
CORPUS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'corpus')


def split_passages(text: str) -> list[str]:
  """Splits a text into passages at blank lines; lines keep their indentation, lose trailing whitespace."""
  passages, current = [], []
  for line in text.replace('\r\n', '\n').replace('\r', '\n').split('\n'):
    line = line.rstrip()
    if line:
      current.append(line)
    elif current:
      passages.append('\n'.join(current))
      current = []
  if current:
    passages.append('\n'.join(current))
  return passages


def _check_document(doc: str, index: int) -> None:
  if not doc or doc != doc.strip('\n') or SEPARATOR in doc:
    raise ValueError(
        f'document {index} ({doc[:40]!r}...) cannot be stored: documents must be non-empty, must not start or end '
        f'with a newline and must not contain a blank line ({SEPARATOR!r}).')


def encode_documents(docs: Iterable[str]) -> bytes:
  """The file contents for `docs` (UTF-8, documents joined by a blank line, one final newline)."""
  docs = list(docs)
  for i, doc in enumerate(docs):
    _check_document(doc, i)
  return (SEPARATOR.join(docs) + '\n').encode('utf-8')


def decode_documents(data: bytes) -> list[str]:
  """Inverse of `encode_documents`."""
  text = data.decode('utf-8')
  if text.endswith('\n'):
    text = text[:-1]
  return [doc for doc in text.split(SEPARATOR) if doc]


def write_documents(path: str, docs: Sequence[str]) -> None:
  """Writes `docs` to `path`; gzip -9 with a zero timestamp (byte-reproducible) when `path` ends in `.gz`."""
  data = encode_documents(docs)
  if path.endswith('.gz'):
    buf = io.BytesIO()
    with gzip.GzipFile(filename='', mode='wb', fileobj=buf, compresslevel=9, mtime=0) as f:
      f.write(data)
    data = buf.getvalue()
  with open(path, 'wb') as f:
    f.write(data)


def read_documents(path: str) -> list[str]:
  """Reads the documents stored at `path` (plain or `.gz`)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'corpus file {path!r} does not exist.')
  with open(path, 'rb') as f:
    data = f.read()
  if path.endswith('.gz'):
    data = gzip.decompress(data)
  return decode_documents(data)
