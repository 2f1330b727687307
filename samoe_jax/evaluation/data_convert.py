"""Converting a downloaded hub file (parquet or JSON lines) to the evaluator's `<task>/<split>.jsonl`.

The rows are kept as the hub has them (every field, the hub's names), one JSON object per line in UTF-8, as
`datasets.Dataset.to_json` would write them; the evaluator reads only the fields it needs. Reading parquet needs
pyarrow (installed with lm-eval's `datasets`); without it the error says `pip install pyarrow`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from samoe_jax.evaluation.data_sources import FORMATS, JSONL, PARQUET
from samoe_jax.evaluation.tasks import readers

Row = dict[str, Any]


def read_parquet(path: str) -> list[Row]:
  """The rows of a parquet file as Python objects (structs become dicts, lists stay lists)."""
  try:
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(f'{path}: reading parquet needs pyarrow, which is not installed: pip install pyarrow') from None
  try:
    return pq.read_table(path).to_pylist()
  except Exception as err:  # pylint: disable=broad-except  # pyarrow's errors: ArrowInvalid, OSError, ...
    raise ValueError(f'{path}: not a readable parquet file ({" ".join(str(err).split())[:200]})') from None


def read_json_lines(path: str) -> list[Row]:
  """The objects of a JSON-lines file (the evaluator's reader: ValueError naming the file and line)."""
  return [row for row, _ in readers.read_jsonl_with_lines(path, {})]


def read_rows(path: str, fmt: str) -> list[Row]:
  """The rows of the source file `path` in format `fmt` (parquet or jsonl)."""
  if fmt == PARQUET:
    return read_parquet(path)
  if fmt == JSONL:
    return read_json_lines(path)
  raise ValueError(f'source format {fmt!r}: use one of {FORMATS}')


def write_json_lines(rows: Iterable[Row], path: str) -> int:
  """Writes one JSON object per line (UTF-8, non-ASCII kept); returns the number of rows."""
  count = 0
  with open(path, 'w', encoding='utf-8', newline='\n') as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + '\n')
      count += 1
  return count
