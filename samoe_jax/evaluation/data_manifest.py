"""`<eval_data_dir>/manifest.json`: what the fetch command wrote, and from which bytes.

    {"written_by": "samoe_jax.evaluation.fetch_data", "version": 1,
     "files": {"piqa/validation.jsonl": {"task": "piqa", "split": "validation", "rows": 1838,
                                         "sha256": "...", "bytes": 123,
                                         "source": {"repo": "baber/piqa", "revision": "...", "path": "...",
                                                    "url": "https://...", "sha256": "...", "bytes": 456}}}}

`sha256` / `bytes` are those of the converted file, `source.sha256` / `source.bytes` those of the file as
downloaded. A later run checks the files against it; `--expect_manifest` compares with another run's manifest.
"""

from __future__ import annotations

import json
import os
from typing import Any

MANIFEST_NAME = 'manifest.json'
WRITTEN_BY = 'samoe_jax.evaluation.fetch_data'
VERSION = 1
PIN_KEYS = ('repo', 'revision', 'path')

Entry = dict[str, Any]


def load(path: str, *, must_exist: bool = False) -> dict[str, Entry]:
  """{relative file: entry} of the manifest at `path`; {} when absent (FileNotFoundError if `must_exist`)."""
  if not os.path.exists(path):
    if must_exist:
      raise FileNotFoundError(f'manifest {path!r} does not exist')
    return {}
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
  except (ValueError, UnicodeDecodeError) as err:
    raise ValueError(f'{path}: not a JSON manifest ({err})') from None
  if not (isinstance(data, dict) and data.get('written_by') == WRITTEN_BY and isinstance(data.get('files'), dict)):
    raise ValueError(f'{path} is not a manifest written by {WRITTEN_BY} (expected {{"written_by": "{WRITTEN_BY}", '
                     '"files": {...}}); give --out a directory of its own')
  if data.get('version') != VERSION:
    raise ValueError(f'{path}: manifest version {data.get("version")!r}, this samoe-jax reads version {VERSION}')
  return data['files']


def save(path: str, files: dict[str, Entry]) -> None:
  """Writes the manifest atomically (a temporary file renamed over the old one), files sorted by name."""
  data = {'written_by': WRITTEN_BY, 'version': VERSION, 'files': dict(sorted(files.items()))}
  part = path + '.part'
  with open(part, 'w', encoding='utf-8') as f:
    json.dump(data, f, indent=2, ensure_ascii=False)
    f.write('\n')
  os.replace(part, path)


def same_pin(entry: Entry, pin: dict[str, str]) -> bool:
  """True when `entry` was fetched from the repository, revision and path `pin` names."""
  source = entry.get('source') or {}
  return all(source.get(k) == pin[k] for k in PIN_KEYS)


def pin_text(pin: dict[str, Any]) -> str:
  return f'{pin.get("repo")}@{pin.get("revision")}:{pin.get("path")}'


def mismatch(name: str, entry: Entry, expected: Entry, where: str) -> str | None:
  """Why `entry` (file `name`) differs from `expected` (from `where`), or None when source and output agree."""
  if not same_pin(entry, {k: (expected.get('source') or {}).get(k) for k in PIN_KEYS}):
    return (f'{name} comes from {pin_text(entry["source"])}, {where} has it from '
            f'{pin_text(expected.get("source") or {})}')
  if entry['source'].get('sha256') != (expected.get('source') or {}).get('sha256'):
    return (f'{name}: the downloaded file has SHA-256 {entry["source"].get("sha256")}, {where} records '
            f'{(expected.get("source") or {}).get("sha256")}')
  if entry.get('sha256') != expected.get('sha256'):
    return f'{name} has SHA-256 {entry.get("sha256")}, {where} records {expected.get("sha256")}'
  return None
