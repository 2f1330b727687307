"""Reading an evaluation split from a local JSONL file (one Hugging Face dataset row per line), with checks.

A task declares the fields it reads as a schema: dotted paths (`choices.text` is doc['choices']['text']) to one
of the kinds below. Each line must be a JSON object holding every declared field with the declared kind; other
fields are kept as they are (a file exported from the hub with `Dataset.to_json` has many). Blank lines are
skipped. Every error names the file, the 1-based line number and the field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

# Field kinds: a string, an integer (JSON number without fraction; not a boolean), a list of strings.
STR, INT, STR_LIST = 'str', 'int', 'str_list'
KINDS = (STR, INT, STR_LIST)

Schema = Mapping[str, str]


def lookup(doc: Mapping[str, Any], path: str) -> Any:
  """The value at dotted `path` of `doc`; KeyError naming the first missing part."""
  value: Any = doc
  for part in path.split('.'):
    if not isinstance(value, Mapping) or part not in value:
      raise KeyError(part)
    value = value[part]
  return value


def kind_error(value: Any, kind: str) -> str | None:
  """Why `value` is not of `kind`, or None when it is."""
  if kind == STR:
    ok = isinstance(value, str)
  elif kind == INT:
    ok = isinstance(value, int) and not isinstance(value, bool)
  elif kind == STR_LIST:
    ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
  else:
    raise ValueError(f'unknown field kind {kind!r}: use one of {KINDS}')
  if ok:
    return None
  wanted = {STR: 'a string', INT: 'an integer', STR_LIST: 'a list of strings'}[kind]
  return f'is {json.dumps(value)[:80]} ({type(value).__name__}), expected {wanted}'


def check_doc(doc: Any, schema: Schema, where: str) -> dict[str, Any]:
  """`doc` itself when it is an object holding every schema field with its kind; ValueError naming `where`."""
  if not isinstance(doc, dict):
    raise ValueError(f'{where}: expected a JSON object (one dataset row), got {type(doc).__name__}')
  for path, kind in schema.items():
    try:
      value = lookup(doc, path)
    except KeyError:
      raise ValueError(f'{where}: missing field {path!r} (this task needs the fields {sorted(schema)})') from None
    problem = kind_error(value, kind)
    if problem:
      raise ValueError(f'{where}: field {path!r} {problem}')
  return doc


def read_text(path: str) -> str:
  """The UTF-8 text of `path`; bytes that are not UTF-8 are a ValueError naming the file, line and byte offset."""
  with open(path, 'rb') as f:
    data = f.read()
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError as err:
    line = data.count(b'\n', 0, err.start) + 1
    raise ValueError(f'{path}:{line}: not UTF-8 text (byte offset {err.start}: {data[err.start:err.start + 4]!r}); '
                     'evaluation files must be UTF-8') from None


def read_jsonl(path: str, schema: Schema, *, how_to_get: str = '') -> list[dict[str, Any]]:
  """Every row of the JSONL file `path`, in file order, checked against `schema`.

  Raises FileNotFoundError naming `path` (and `how_to_get`, a hint on where the data comes from) when the file
  is missing, and ValueError naming the file and line for bad JSON, a non-object line, a missing field or a
  field of the wrong kind, and for a file without rows.
  """
  if not os.path.isfile(path):
    hint = f' {how_to_get}' if how_to_get else ''
    raise FileNotFoundError(f'evaluation data file {path!r} does not exist.{hint}')
  return [doc for doc, _ in read_jsonl_with_lines(path, schema)]


def read_jsonl_with_lines(path: str, schema: Schema) -> list[tuple[dict[str, Any], int]]:
  """(row, 1-based line number) of every row of an existing JSONL file, checked as read_jsonl checks."""
  docs = []
  for number, line in enumerate(read_text(path).split('\n'), start=1):
    if not line.strip():
      continue
    where = f'{path}:{number}'
    try:
      doc = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f'{where}: not valid JSON ({e.msg} at column {e.colno})') from None
    docs.append((check_doc(doc, schema, where), number))
  if not docs:
    raise ValueError(f'{path}: the file holds no rows (one JSON object per line expected)')
  return docs
