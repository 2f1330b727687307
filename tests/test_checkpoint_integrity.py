"""Damaged checkpoints are found by their checksums, set aside (never deleted) and the newest intact one is used;
evaluation skips them; a run with no intact checkpoint says so.

One module fixture trains the tiny config for 6 steps (checkpoints at 2, 4 and 6, asynchronous saves); every test
damages a copy of that workdir the way a disk or a user would.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from samoe_jax.evaluation import checkpoints as eval_checkpoints
from samoe_jax.checkpointing import integrity
from samoe_jax.training import loop
from samoe_jax.checkpointing.store import NoIntactCheckpointError
from samoe_jax.checkpointing.store import Checkpointer
from test_trainer import tiny_config  # pylint: disable=g-bad-import-order  (tests/ helper; compilation_cache is in conftest.py)

OVERRIDES = {'train.keep_checkpoints': 3, 'train.log_every': 2}


@pytest.fixture(scope='module')
def trained(tmp_path_factory, compilation_cache):  # pylint: disable=redefined-outer-name,unused-argument
  workdir = str(tmp_path_factory.mktemp('integrity') / 'run')
  result = loop.train(tiny_config(**OVERRIDES), workdir)
  return workdir, result


def _copy(trained, tmp_path) -> str:
  target = str(tmp_path / 'run')
  shutil.copytree(trained[0], target)
  return target


def _largest_state_file(step_dir: str) -> str:
  files = [p for p in glob.glob(os.path.join(step_dir, 'state', '**'), recursive=True) if os.path.isfile(p)]
  return max(files, key=os.path.getsize)


def test_every_finished_checkpoint_has_checksums_of_its_files(trained):
  workdir, _ = trained
  for step in (2, 4, 6):
    step_dir = os.path.join(workdir, 'checkpoints', str(step))
    with open(os.path.join(step_dir, integrity.CHECKSUM_FILE)) as f:
      record = json.load(f)
    on_disk = {os.path.relpath(p, step_dir) for p in glob.glob(os.path.join(step_dir, '**'), recursive=True)
               if os.path.isfile(p)} - {integrity.CHECKSUM_FILE}
    assert set(record['files']) == on_disk
    assert record['bytes'] == sum(os.path.getsize(os.path.join(step_dir, p)) for p in on_disk)
    assert integrity.problems(step_dir) == []


def test_flipped_bytes_are_found_and_the_run_resumes_from_the_previous_checkpoint(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  victim = _largest_state_file(os.path.join(workdir, 'checkpoints', '6'))
  data = bytearray(open(victim, 'rb').read())
  middle = len(data) // 2
  data[middle:middle + 16] = bytes(255 - b for b in data[middle:middle + 16])   # same size, 16 bytes changed
  open(victim, 'wb').write(bytes(data))
  result = loop.train(tiny_config(**OVERRIDES, **{'train.steps': 8}), workdir)
  assert result['resumed_from_step'] == 4 and result['step'] == 8
  moved = glob.glob(os.path.join(workdir, integrity.DAMAGED_DIR, '6_*'))
  assert len(moved) == 1
  reason = open(os.path.join(moved[0], 'reason.txt')).read()
  assert 'sha256 mismatch' in reason and os.path.relpath(victim, os.path.join(workdir, 'checkpoints', '6')) in reason
  assert open(os.path.join(moved[0], os.path.relpath(victim, os.path.join(workdir, 'checkpoints', '6'))),
              'rb').read() == bytes(data)   # kept exactly as found
  assert np.isfinite(result['eval/loss'])


@pytest.mark.parametrize('damage', ['truncate', 'delete_metadata', 'delete_meta_item'])
def test_truncated_or_missing_files_fall_back(trained, tmp_path, damage):
  workdir = _copy(trained, tmp_path)
  step_dir = os.path.join(workdir, 'checkpoints', '6')
  if damage == 'truncate':
    victim = _largest_state_file(step_dir)
    with open(victim, 'r+b') as f:
      f.truncate(os.path.getsize(victim) // 2)
  elif damage == 'delete_metadata':
    os.remove(os.path.join(step_dir, 'state', '_METADATA'))
  else:
    shutil.rmtree(os.path.join(step_dir, 'meta'))
  assert eval_checkpoints.select_steps(workdir, 'latest') == [4]          # evaluation: newest intact, nothing moved
  assert eval_checkpoints.select_steps(workdir, 'all') == [2, 4]
  with pytest.raises(ValueError, match=r"--checkpoint='6': damaged checkpoint\(s\) .* step 6: "):
    eval_checkpoints.select_steps(workdir, '6')
  assert os.path.isdir(step_dir)
  if damage == 'truncate':
    assert loop.train(tiny_config(**OVERRIDES, **{'train.steps': 8}), workdir)['resumed_from_step'] == 4
  else:   # the trainer's choice without training again (the flipped-bytes test resumes for real)
    assert Checkpointer(workdir, tiny_config(**OVERRIDES).train).verified_latest() == 4
    assert not os.path.exists(step_dir)
  assert len(glob.glob(os.path.join(workdir, integrity.DAMAGED_DIR, '6_*'))) == 1


def test_no_intact_checkpoint_is_a_clear_error_and_nothing_is_deleted(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  for step in (2, 4, 6):
    os.remove(os.path.join(workdir, 'checkpoints', str(step), 'state', '_METADATA'))
  with pytest.raises(NoIntactCheckpointError, match=r'no intact checkpoint in .*steps \[6, 4, 2\] are damaged'):
    loop.train(tiny_config(**OVERRIDES, **{'train.steps': 8}), workdir)
  assert sorted(os.path.basename(p).split('_')[0] for p in
                glob.glob(os.path.join(workdir, integrity.DAMAGED_DIR, '*'))) == ['2', '4', '6']
  with pytest.raises(ValueError, match='holds no checkpoint'):
    eval_checkpoints.select_steps(workdir, 'latest')


def test_newer_checkpoint_without_checksums_is_set_aside_for_a_verified_one(trained, tmp_path):
  """A process killed between a save's commit and its hashing leaves the newest checkpoint without checksums: it
  cannot be verified, so the run resumes from the newest one that verifies and trains the steps after it again."""
  workdir = _copy(trained, tmp_path)
  os.remove(os.path.join(workdir, 'checkpoints', '6', integrity.CHECKSUM_FILE))
  assert integrity.problems(os.path.join(workdir, 'checkpoints', '6')) is None
  result = loop.train(tiny_config(**OVERRIDES, **{'train.steps': 8}), workdir)
  assert result['resumed_from_step'] == 4 and result['step'] == 8
  moved = glob.glob(os.path.join(workdir, integrity.DAMAGED_DIR, '6_*'))
  assert len(moved) == 1 and 'no samoe_checksums.json' in open(os.path.join(moved[0], 'reason.txt')).read()
  for step in (6, 8):   # saved again, with checksums
    assert integrity.problems(os.path.join(workdir, 'checkpoints', str(step))) == []


def test_without_any_checksums_the_newest_is_used_with_a_warning(trained, tmp_path, caplog):
  """Checkpoints of a trainer from before checksums: the newest is used, and the log says it is unverified."""
  workdir = _copy(trained, tmp_path)
  for step in (2, 4, 6):
    os.remove(os.path.join(workdir, 'checkpoints', str(step), integrity.CHECKSUM_FILE))
  checkpointer = Checkpointer(workdir, tiny_config(**OVERRIDES).train)
  with caplog.at_level('WARNING'):
    assert checkpointer.verified_latest() == 6
  checkpointer.close()
  warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
  assert any('checkpoint step 6 in' in w and 'UNVERIFIED' in w for w in warnings), warnings
  assert not os.path.exists(os.path.join(workdir, integrity.DAMAGED_DIR))


def test_leftover_temporary_folders_are_removed_at_start(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  leftover = os.path.join(workdir, 'checkpoints', '8.orbax-checkpoint-tmp-1234')
  os.makedirs(os.path.join(leftover, 'state'))
  assert integrity.leftover_temporaries(os.path.join(workdir, 'checkpoints')) == ['8.orbax-checkpoint-tmp-1234']
  result = loop.train(tiny_config(**OVERRIDES, **{'train.steps': 8}), workdir)
  assert result['resumed_from_step'] == 6 and not os.path.exists(leftover)


def _moment_dtypes(step_dir: str) -> set[str]:
  """dtypes of the Adam moments (mu, nu) as orbax recorded them in a checkpoint's state item."""
  tree = ocp.StandardCheckpointer().metadata(os.path.join(step_dir, 'state')).item_metadata.tree
  leaves = jax.tree_util.tree_flatten_with_path(tree['opt_state'])[0]
  return {str(leaf.dtype) for path, leaf in leaves if any(getattr(k, 'key', None) in ('mu', 'nu') or
                                                          getattr(k, 'name', None) in ('mu', 'nu') for k in path)}


def test_a_run_resumes_with_another_moment_dtype(trained, tmp_path):
  """train.moment_dtype may change on resume (e.g. to fit memory): the float32 moments of step 6 are restored
  into bfloat16 ones, training continues, and the next checkpoint stores bfloat16 moments."""
  workdir = _copy(trained, tmp_path)
  assert _moment_dtypes(os.path.join(workdir, 'checkpoints', '6')) == {'float32'}
  result = loop.train(tiny_config(**OVERRIDES, **{'train.steps': 8, 'train.moment_dtype': 'bfloat16'}), workdir)
  assert result['resumed_from_step'] == 6 and np.isfinite(result['train/loss'])
  assert _moment_dtypes(os.path.join(workdir, 'checkpoints', '8')) == {'bfloat16'}
