"""The Checkpointer's saves in one process, without a model: checksums recorded in the background as soon as a
save commits, and a failed save (RLIMIT_FSIZE: what a full disk looks like to the writer; a checksum file that
cannot be synced) reported once, naming its step, with nothing temporary left behind.

The same moments through real training processes: tests/test_checkpoint_disk_full.py and
tests/test_checkpoint_hashing.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import time

import jax.numpy as jnp
import ml_collections
import pytest

from train_process import temporaries  # pylint: disable=g-bad-import-order  (tests/ helper)
from samoe_jax.checkpointing import integrity
from samoe_jax.checkpointing.store import Checkpointer, CheckpointSaveError, describe_failure

STATE = {'w': jnp.arange(50_000, dtype=jnp.float32)}   # one 200 kB array
LIMIT = 100_000                                         # bytes: its file cannot be written


def _checkpointer(workdir, asynchronous: bool = True) -> Checkpointer:
  return Checkpointer(str(workdir), ml_collections.ConfigDict({'keep_checkpoints': 10,
                                                               'async_checkpoint': asynchronous}))


def _save(checkpointer: Checkpointer, step: int) -> bool:
  return checkpointer.save(step, STATE, {'position': step}, {'seed': 0})


@contextlib.contextmanager
def _file_size_limit(limit: int):
  """Lowers this process's soft RLIMIT_FSIZE (Python ignores SIGXFSZ: a larger write fails with EFBIG)."""
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def _until(condition, seconds: float = 60.0) -> None:
  deadline = time.time() + seconds
  while not condition():
    assert time.time() < deadline, 'timed out'
    time.sleep(0.01)


def _assert_failure_message(err: CheckpointSaveError, step: int, workdir, *, kept: list[int]) -> None:
  text = str(err)
  assert text.startswith(f'saving the checkpoint of step {step} in {workdir / "checkpoints"} failed'), text
  assert ' free on that disk' in text and f'Intact earlier checkpoints: steps {kept}' in text, text
  assert f'resume from step {kept[-1]}.' in text and '\n' not in text, text


def test_an_async_save_is_hashed_in_the_background_as_soon_as_it_commits(tmp_path):
  """No poll(), wait() or later save is needed: the checksum file appears by itself after the commit."""
  checkpointer = _checkpointer(tmp_path)
  assert _save(checkpointer, 1)
  step_dir = tmp_path / 'checkpoints' / '1'
  _until(lambda: integrity.has_checksums(str(step_dir)))
  assert integrity.problems(str(step_dir)) == []
  for step in (2, 3):
    assert _save(checkpointer, step)
    assert integrity.problems(str(tmp_path / 'checkpoints' / str(step - 1))) == []   # hashed before the next save
  checkpointer.close()
  assert integrity.problems(str(tmp_path / 'checkpoints' / '3')) == []
  assert not temporaries(tmp_path)


@pytest.mark.parametrize('asynchronous', [True, False], ids=['async', 'sync'])
def test_a_failed_save_stops_at_the_next_boundary_naming_its_step(tmp_path, asynchronous):
  checkpointer = _checkpointer(tmp_path, asynchronous)
  assert _save(checkpointer, 1)
  checkpointer.wait()
  with _file_size_limit(LIMIT), pytest.raises(CheckpointSaveError) as raised:
    _save(checkpointer, 2)   # a synchronous save fails here
    _until(lambda: not checkpointer.manager.is_saving_in_progress())
    checkpointer.poll(3)     # the first step boundary after an asynchronous save failed
  _assert_failure_message(raised.value, 2, tmp_path, kept=[1])
  assert 'File too large, errno 27' in str(raised.value)
  with pytest.raises(CheckpointSaveError) as again:   # nothing goes on after a failed save
    _save(checkpointer, 3)
  assert again.value is raised.value
  checkpointer.close()                                 # the error was raised once: close() only shuts down
  assert not temporaries(tmp_path)                    # the failed save's temporary folder is removed
  assert Checkpointer.steps_on_disk(str(tmp_path)) == [1]
  assert integrity.problems(str(tmp_path / 'checkpoints' / '1')) == []


def test_a_failure_found_at_close_is_raised_once_naming_its_step(tmp_path):
  checkpointer = _checkpointer(tmp_path)
  assert _save(checkpointer, 1)
  checkpointer.wait()
  with _file_size_limit(LIMIT):
    assert _save(checkpointer, 2)
    with pytest.raises(CheckpointSaveError) as raised:
      checkpointer.close()
  _assert_failure_message(raised.value, 2, tmp_path, kept=[1])
  assert not temporaries(tmp_path)


def test_a_checksum_file_that_cannot_be_written_fails_that_save(tmp_path, monkeypatch):
  """A full disk can first show when the checksum file is synced: the save of that step fails, its
  samoe_checksums.json.tmp is removed, and the checkpoint (complete, but unverifiable) is not listed as intact."""
  def disk_full(f):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  checkpointer = _checkpointer(tmp_path)
  assert _save(checkpointer, 1)
  checkpointer.wait()
  monkeypatch.setattr(integrity, '_sync', disk_full)
  assert _save(checkpointer, 2)
  with pytest.raises(CheckpointSaveError) as raised:
    checkpointer.wait()
  _assert_failure_message(raised.value, 2, tmp_path, kept=[1])
  assert 'while writing its checksums (No space left on device, errno 28' in str(raised.value)
  checkpointer.close()
  assert not temporaries(tmp_path)
  assert not integrity.has_checksums(str(tmp_path / 'checkpoints' / '2'))


def test_a_checksum_file_left_by_a_killed_process_is_removed_at_start(tmp_path):
  checkpointer = _checkpointer(tmp_path)
  assert _save(checkpointer, 1)
  checkpointer.close()
  leftover = tmp_path / 'checkpoints' / '1' / integrity.TEMPORARY_FILE
  leftover.write_text('{"files": {"state/')
  _checkpointer(tmp_path).close()
  assert not leftover.exists() and integrity.problems(str(tmp_path / 'checkpoints' / '1')) == []


def test_describe_failure_puts_the_operating_systems_reason_first():
  buried = ValueError('OUT_OF_RANGE: Error writing "a/0" in OCDBT database at local file "/x/": Failed writing: '
                      '"/x/d/1": Failed to write 168931 bytes to file 7: No space left on device '
                      "[os_error_code='28']")
  assert describe_failure(buried).startswith('No space left on device, errno 28: ValueError: OUT_OF_RANGE')
  assert describe_failure(OSError(errno.EACCES, 'Permission denied')).startswith('Permission denied, errno 13')
  assert describe_failure(RuntimeError('boom')) == 'RuntimeError: boom'
