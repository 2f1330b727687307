"""One job per workdir: a lock file that process 0 of a training job takes before anything is written.

WORKDIR/samoe.lock holds who owns the workdir: {'host', 'pid', 'process_start', 'job_start', 'heartbeat',
'command'}. Taking it:
  1. open the file and take an exclusive, non-blocking fcntl.flock on it. The kernel drops that lock when the
     owning process dies in any way (SIGKILL included), so on one host two jobs can never both hold it and a
     dead owner never blocks. A flock held elsewhere refuses at once, naming the owner from the file.
  2. with the flock held, read the record. An owner on another host (a shared filesystem where flock is not
     shared between hosts) whose heartbeat is younger than STALE_AFTER_S still owns the workdir: refuse. An
     owner that is gone (same host and its pid no longer runs that process; or a heartbeat older than
     STALE_AFTER_S) left a stale lock: take it over with a warning that names it.
  3. write this job's record; a daemon thread refreshes 'heartbeat' every HEARTBEAT_S seconds; release() (and
     normal interpreter exit) removes the file.
Multi-host jobs: only process 0 takes the lock; the others learn the outcome from a broadcast (one job = one
owner). A remote workdir (gs://...) is not locked: object stores have no such primitive; a warning says so.
"""

from __future__ import annotations

import atexit
import dataclasses
import fcntl
import json
import os
import socket
import sys
import threading
import time
from typing import Any

from absl import logging

LOCK_FILE = 'samoe.lock'
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0   # another host's lock whose heartbeat is older than this is a dead job's


class WorkdirLockedError(ValueError):
  """Another live job owns the workdir."""


def _process_start(pid: int) -> str | None:
  """The kernel's start time of `pid` (field 22 of /proc/PID/stat), which tells a reused pid from the owner."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int, process_start: str | None) -> bool:
  """Whether process `pid` on this host still runs (and is the same process, when its start time is known)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  if process_start is None or not os.path.exists('/proc'):
    return True
  return _process_start(pid) == process_start


def describe_owner(record: dict[str, Any] | None) -> str:
  """'pid 123 on host h, started 2026-12-07 19:20:01 UTC, heartbeat 12 s ago (python -m samoe_jax.train ...)'."""
  if not record:
    return 'a process that has not yet written its details'
  started = time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(record.get('job_start', 0)))
  beat = time.time() - float(record.get('heartbeat', 0))
  command = record.get('command', '')
  return (f'pid {record.get("pid")} on host {record.get("host")}, started {started}, heartbeat {beat:.0f} s ago'
          + (f' ({command[:160]})' if command else ''))


def _read(fd: int) -> dict[str, Any] | None:
  os.lseek(fd, 0, os.SEEK_SET)
  data = b''
  while chunk := os.read(fd, 1 << 16):
    data += chunk
  try:
    record = json.loads(data.decode() or 'null')
  except (UnicodeDecodeError, ValueError):
    return None
  return record if isinstance(record, dict) else None


def stale_reason(record: dict[str, Any], host: str, now: float) -> str | None:
  """Why `record` (read while holding the flock) belongs to a job that is gone; None when it may be alive."""
  age = now - float(record.get('heartbeat', 0))
  if record.get('host') == host:
    pid = int(record.get('pid', -1))
    if pid == os.getpid():
      return 'it names this process'
    if pid <= 0 or not _alive(pid, record.get('process_start')):
      return f'its process {pid} no longer runs on this host'
    return None   # alive on this host but not holding the flock: a filesystem without flock; trust the record
  if age > STALE_AFTER_S:
    return f'its heartbeat is {age:.0f} s old (more than {STALE_AFTER_S:.0f} s)'
  return None


@dataclasses.dataclass
class WorkdirLock:
  """The held lock of one workdir (see the module docstring); release() gives it up."""
  path: str
  fd: int
  record: dict[str, Any]
  _stop: threading.Event = dataclasses.field(default_factory=threading.Event)
  _thread: threading.Thread | None = None

  def _write(self) -> None:
    data = json.dumps(self.record, indent=1).encode()
    os.ftruncate(self.fd, 0)
    os.pwrite(self.fd, data, 0)
    os.fsync(self.fd)

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      self.record['heartbeat'] = time.time()
      try:
        self._write()
      except OSError as err:   # a full disk must not kill training; the checkpoint path reports it
        logging.warning('could not refresh the workdir lock %s: %s', self.path, err)

  def start_heartbeat(self) -> None:
    self._thread = threading.Thread(target=self._beat, name='samoe-workdir-lock', daemon=True)
    self._thread.start()

  def release(self) -> None:
    """Stops the heartbeat, removes the lock file and drops the flock (idempotent)."""
    if self.fd < 0:
      return
    self._stop.set()
    try:
      if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
        os.unlink(self.path)
    finally:
      os.close(self.fd)
      self.fd = -1

  def __enter__(self) -> 'WorkdirLock':
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def acquire(workdir: str, command: str | None = None) -> WorkdirLock | None:
  """Takes WORKDIR/samoe.lock for this process; raises WorkdirLockedError naming a live owner. None for a
  remote workdir (not lockable)."""
  if '://' in workdir:
    logging.warning('workdir %s is remote: it is not locked; run one job per workdir', workdir)
    return None
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
  host = socket.gethostname()
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      record = None
      for _ in range(20):   # the owner may be between taking the flock and writing its record
        record = _read(fd)
        if record:
          break
        time.sleep(0.05)
      os.close(fd)
      raise WorkdirLockedError(f'--workdir={workdir} is in use by another job: {describe_owner(record)}. Wait for '
                               f'it to finish or stop it, or give a new --workdir ({path} is its lock).') from None
    try:   # the file we locked may have been removed by its owner's release meanwhile: lock the current one
      same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)
  now = time.time()
  record = _read(fd)
  if record:
    reason = stale_reason(record, host, now)
    if reason is None:
      os.close(fd)
      raise WorkdirLockedError(f'--workdir={workdir} is in use by another job: {describe_owner(record)}. Wait for '
                               f'it to finish or stop it, or give a new --workdir (if that job is gone, delete '
                               f'{path}).')
    logging.warning('taking over the lock of %s from a job that is gone (%s): %s', workdir, reason,
                    describe_owner(record))
  lock = WorkdirLock(path, fd, {'host': host, 'pid': os.getpid(), 'process_start': _process_start(os.getpid()),
                                'job_start': now, 'heartbeat': now,
                                'command': command if command is not None else ' '.join(sys.argv)})
  lock._write()   # pylint: disable=protected-access
  lock.start_heartbeat()
  atexit.register(lock.release)
  return lock
