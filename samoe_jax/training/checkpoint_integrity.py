"""Checksums of finished checkpoints, their verification, and moving a damaged checkpoint aside.

When a save of step S is finalised, the files orbax wrote under CHECKPOINTS/S/ are hashed once (sha256, read back
from the page cache right after the write; the cost is logged against the save's) into CHECKPOINTS/S/
samoe_checksums.json. Before a checkpoint is used it is verified against that file: a missing, truncated or
changed file (a flipped byte of the same size included) makes it damaged. A damaged checkpoint is never deleted:
it is moved to WORKDIR/checkpoints_damaged/<S>_<time>/ with a reason.txt, and the run goes on from the newest
intact one. Checkpoints without a checksum file (written before this existed, or a process killed between the
end of a save and its hashing) are used unverified; their restored values are still checked to be finite.
Checksums are recorded for local directories; a remote path (gs://...) relies on the store's own integrity.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

from absl import logging

CHECKSUM_FILE = 'samoe_checksums.json'
DAMAGED_DIR = 'checkpoints_damaged'
_CHUNK = 1 << 22


def is_local(path: str) -> bool:
  return '://' not in path


def _files(step_dir: str) -> list[str]:
  out = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), step_dir)
      if rel != CHECKSUM_FILE:
        out.append(rel)
  return sorted(out)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def record(step_dir: str) -> dict[str, Any]:
  """Hashes every file under step_dir into step_dir/samoe_checksums.json (atomically); returns the record."""
  start = time.time()
  files = {rel: [os.path.getsize(os.path.join(step_dir, rel)), _sha256(os.path.join(step_dir, rel))]
           for rel in _files(step_dir)}
  total = sum(size for size, _ in files.values())
  out = {'files': files, 'bytes': total, 'seconds': round(time.time() - start, 4)}
  tmp = os.path.join(step_dir, CHECKSUM_FILE + '.tmp')
  with open(tmp, 'w') as f:
    json.dump(out, f, indent=1, sort_keys=True)
  os.replace(tmp, os.path.join(step_dir, CHECKSUM_FILE))
  return out


def problems(step_dir: str) -> list[str] | None:
  """What is wrong with the checkpoint in step_dir (empty: intact), or None when it has no checksum file."""
  path = os.path.join(step_dir, CHECKSUM_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      files = json.load(f)['files']
  except (OSError, ValueError, KeyError) as err:
    return [f'{CHECKSUM_FILE} is unreadable ({err})']
  found = []
  for rel, (size, digest) in sorted(files.items()):
    full = os.path.join(step_dir, rel)
    if not os.path.exists(full):
      found.append(f'{rel} is missing')
    elif os.path.getsize(full) != size:
      found.append(f'{rel} has {os.path.getsize(full)} bytes, {size} were written')
    elif _sha256(full) != digest:
      found.append(f'{rel} differs from what was written (sha256 mismatch)')
  return found


def move_aside(checkpoints_dir: str, step_dir: str, reasons: list[str]) -> str:
  """Moves a damaged step_dir to WORKDIR/checkpoints_damaged/<name>_<time>/ (with reason.txt); returns it."""
  target_root = os.path.join(os.path.dirname(checkpoints_dir.rstrip('/')), DAMAGED_DIR)
  os.makedirs(target_root, exist_ok=True)
  target = os.path.join(target_root, f'{os.path.basename(step_dir)}_{time.strftime("%Y%m%d_%H%M%S")}')
  suffix = 0
  while os.path.exists(target + (f'_{suffix}' if suffix else '')):
    suffix += 1
  target += f'_{suffix}' if suffix else ''
  os.rename(step_dir, target)
  with open(os.path.join(target, 'reason.txt'), 'w') as f:
    f.write('\n'.join(reasons) + '\n')
  return target


def leftover_temporaries(checkpoints_dir: str) -> list[str]:
  """Unfinished saves (orbax '<step>.orbax-checkpoint-tmp*' folders) left by a crash or a failed save."""
  if not is_local(checkpoints_dir) or not os.path.isdir(checkpoints_dir):
    return []
  return sorted(n for n in os.listdir(checkpoints_dir) if '.orbax-checkpoint-tmp' in n)


def log_recorded(step: int, rec: dict[str, Any], save_seconds: float | None) -> None:
  against = f' (the save took {save_seconds:.2f}s)' if save_seconds else ''
  logging.info('checkpoint %d: sha256 of %d files, %.1f MiB, in %.3fs%s', step, len(rec['files']),
               rec['bytes'] / 2**20, rec['seconds'], against)
