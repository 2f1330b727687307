"""Checksums of finished checkpoints, their verification, and moving a damaged checkpoint aside.

When the save of step S has committed (orbax renamed its temporary folder to CHECKPOINTS/S), the files it wrote
are hashed once (sha256, read back from the page cache right after the write; the cost is logged against the
save's) into CHECKPOINTS/S/samoe_checksums.json, written to a temporary file, synced and renamed, so the file is
either complete or absent; a temporary file left by a failure is removed at once, one left by a killed process
at the next start. The Checkpointer (checkpointing/store.py) does this in a background thread on process 0 as
soon as each save commits, so at most the newest checkpoint of a run lacks checksums, and only when the process
was killed between a save's commit and its hashing (milliseconds) or the checksum file could not be written.

Before a checkpoint is used it is verified against that file: a missing, truncated or changed file (a flipped
byte of the same size included) makes it damaged. A damaged checkpoint is never deleted: it is moved to
WORKDIR/checkpoints_damaged/<S>_<time>/ with a reason.txt, and the run goes on from the newest intact one. A
checkpoint without checksums is never trusted silently: when an older checkpoint has checksums that verify, the
unverified newer one is moved aside too (the steps after the verified one are trained again, to the same bits);
when none has checksums (written by a version before checksums existed) the newest is used with a warning naming
it, its restored values checked finite and its checksums recorded from then on. Checksums are recorded for local
directories only; a remote path (gs://...) relies on the store's own integrity.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

from absl import logging

CHECKSUM_FILE = 'samoe_checksums.json'
TEMPORARY_FILE = CHECKSUM_FILE + '.tmp'
DAMAGED_DIR = 'checkpoints_damaged'
_CHUNK = 1 << 22


def is_local(path: str) -> bool:
  return '://' not in path


def _files(step_dir: str) -> list[str]:
  out = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), step_dir)
      if rel not in (CHECKSUM_FILE, TEMPORARY_FILE):
        out.append(rel)
  return sorted(out)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def _sync(f: Any) -> None:
  """Flushes a written file to the disk (a full disk can first show here, with delayed allocation)."""
  f.flush()
  os.fsync(f.fileno())


def record(step_dir: str) -> dict[str, Any]:
  """Hashes every file under step_dir into step_dir/samoe_checksums.json (atomically: a temporary file, synced,
  then renamed; removed again if writing it fails); returns the record."""
  start = time.time()
  files = {rel: [os.path.getsize(os.path.join(step_dir, rel)), _sha256(os.path.join(step_dir, rel))]
           for rel in _files(step_dir)}
  total = sum(size for size, _ in files.values())
  out = {'files': files, 'bytes': total, 'seconds': round(time.time() - start, 4)}
  tmp = os.path.join(step_dir, TEMPORARY_FILE)
  try:
    with open(tmp, 'w') as f:
      json.dump(out, f, indent=1, sort_keys=True)
      _sync(f)
    os.replace(tmp, os.path.join(step_dir, CHECKSUM_FILE))
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return out


def has_checksums(step_dir: str) -> bool:
  return os.path.exists(os.path.join(step_dir, CHECKSUM_FILE))


def remove_temporary_files(checkpoints_dir: str) -> list[str]:
  """Removes the samoe_checksums.json.tmp files a killed process left in finished checkpoints; returns their
  paths (relative to checkpoints_dir)."""
  if not is_local(checkpoints_dir) or not os.path.isdir(checkpoints_dir):
    return []
  removed = []
  for name in sorted(os.listdir(checkpoints_dir)):
    path = os.path.join(checkpoints_dir, name, TEMPORARY_FILE)
    if name.isdigit() and os.path.exists(path):
      os.remove(path)
      removed.append(os.path.join(name, TEMPORARY_FILE))
  return removed


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
