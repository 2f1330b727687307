"""Orbax checkpoints of the train state, the data iterator position and the run's resume metadata.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta}:
  state  the TrainState (StandardSave; sharded arrays written by every process).
  data   the training iterator's get_state() dict (JsonSave).
  meta   {'step', 'seed', 'resume_keys': {config key: value}, 'param_shapes': {path: [shape, dtype]}} (JsonSave).
A run that finds a checkpoint resumes from the latest one; `check_compatible` first compares its meta with the
current run's and refuses (IncompatibleCheckpointError naming every difference) instead of overwriting a run
with different model shapes, seed or data order. Restoring goes into abstract arrays that carry the *current*
mesh's shardings, so a checkpoint written on one mesh restores onto another.

Integrity (training/checkpoint_integrity.py): a finished save is hashed; a checkpoint is verified, and its
restored values checked to be finite, before it is used; a damaged one is moved aside and the newest intact one
is used instead. A save that fails (disk full, a directory made unwritable) is noticed at the next step boundary
and stops the run with CheckpointSaveError; leftover temporary folders of unfinished saves are removed at start.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from samoe_jax.training import checkpoint_integrity as integrity
from samoe_jax.training.state import TrainState

# Config keys whose change makes "continue exactly where the checkpoint left off" meaningless.
RESUME_KEYS = ('train.seed', 'data.task', 'data.vocabulary', 'data.seq_len', 'data.batch_size',
               'data.shuffle_seed')
ITEMS = ('state', 'data', 'meta')


class IncompatibleCheckpointError(ValueError):
  """The workdir holds a checkpoint that the current config cannot continue."""


class NoIntactCheckpointError(ValueError):
  """Every checkpoint in the workdir is damaged (they were moved aside, not deleted)."""


class CheckpointSaveError(OSError):
  """A checkpoint could not be written (disk full, directory not writable)."""


def free_space(path: str) -> str:
  """Free bytes on the disk holding `path`, human-readable ('?' when unknown)."""
  while path and not os.path.exists(path):
    path = os.path.dirname(path)
  try:
    return f'{shutil.disk_usage(path or ".").free / 2**30:.2f} GiB'
  except OSError:
    return '?'


def all_finite(tree: Any) -> bool:
  """True when every float array in `tree` holds only finite values (one jitted reduction, no host copy)."""
  floats = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  if not floats:
    return True
  return bool(jax.jit(lambda xs: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs])))(floats))


def _config_value(config: ml_collections.ConfigDict, dotted: str) -> Any:
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node


def run_meta(config: ml_collections.ConfigDict, abstract_params: Any) -> dict[str, Any]:
  """The resume metadata of this run (without 'step'): seed, RESUME_KEYS values and parameter shapes."""
  shapes = {jax.tree_util.keystr(path): [list(leaf.shape), str(leaf.dtype)]
            for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}
  return {'seed': int(config.train.seed),
          'resume_keys': {k: _config_value(config, k) for k in RESUME_KEYS},
          'param_shapes': shapes}


def meta_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """Human-readable differences between a checkpoint's meta and this run's (empty when compatible)."""
  diffs = []
  for key, value in current['resume_keys'].items():
    old = saved.get('resume_keys', {}).get(key)
    if old != value:
      diffs.append(f'{key}: checkpoint {old!r}, config {value!r}')
  old_shapes, new_shapes = saved.get('param_shapes', {}), current['param_shapes']
  for path in sorted(set(old_shapes) | set(new_shapes)):
    old, new = old_shapes.get(path), new_shapes.get(path)
    if old != new:
      diffs.append(f'parameter {path}: checkpoint {old or "absent"}, config {new or "absent"}')
  return diffs


class Checkpointer:
  """ocp.CheckpointManager over WORKDIR/checkpoints: keep-N, optional async saves, restore with shardings."""

  def __init__(self, workdir: str, train_cfg: ml_collections.ConfigDict):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.workdir = os.path.abspath(workdir)
    leftovers = integrity.leftover_temporaries(self.directory)
    if leftovers and jax.process_index() == 0:
      logging.warning('removing %d unfinished save(s) left in %s by a crash or a failed save: %s', len(leftovers),
                      self.directory, ', '.join(leftovers))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(train_cfg.keep_checkpoints), create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=bool(train_cfg.async_checkpoint))
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
    self._unhashed: dict[int, float] = {}   # step -> when its save started (hashed once it has finished)
    self._hash = jax.process_index() == 0 and integrity.is_local(self.directory)

  @staticmethod
  def steps_on_disk(workdir: str) -> list[int]:
    """The finished checkpoint steps in WORKDIR/checkpoints, read from the directory names (no manager made)."""
    directory = os.path.join(workdir, 'checkpoints')
    if not os.path.isdir(directory):
      return []
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def read_meta(self, step: int) -> dict[str, Any]:
    """The meta item of checkpoint `step` (cheap: no arrays are read)."""
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as err:  # pylint: disable=broad-except
      raise IncompatibleCheckpointError(
          f'{self.directory} holds checkpoint step {step} without readable samoe_jax metadata ({err}); '
          f'it was not written by this trainer. Use a new --workdir.') from err
    return dict(restored.meta)

  def check_compatible(self, step: int, current_meta: dict[str, Any]) -> None:
    """Raises IncompatibleCheckpointError (listing every difference) if this run cannot continue `step`."""
    diffs = meta_differences(self.read_meta(step), current_meta)
    if diffs:
      shown = '\n  '.join(diffs[:20]) + (f'\n  ... and {len(diffs) - 20} more' if len(diffs) > 20 else '')
      raise IncompatibleCheckpointError(
          f'{self.directory} holds a checkpoint (step {step}) from an incompatible config; refusing to '
          f'overwrite it:\n  {shown}\nUse a new --workdir, or set these config values back to the checkpoint\'s.')

  def save(self, step: int, state: TrainState, data_state: dict[str, Any], meta: dict[str, Any]) -> bool:
    """Starts saving (async when configured; the device-to-host copy happens before this returns).

    Returns False when a checkpoint of this step already exists.
    """
    if step in self.manager.all_steps():
      return False
    self.poll(step)
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                              meta=ocp.args.JsonSave(dict(meta, step=int(step))))
    started = time.time()
    try:
      saved = self.manager.save(step, args=args, force=True)
      if not self.manager.is_saving_in_progress():   # a synchronous save has finished (or failed) here
        self.manager.check_for_errors()
    except Exception as err:  # pylint: disable=broad-except  (orbax/tensorstore raise many types)
      raise self._save_error(min(self._unhashed, default=step), err) from None   # an earlier async save, if any
    if saved:
      self._unhashed[int(step)] = started
      self.poll(step)
    return saved

  def _save_error(self, step: int, err: Exception) -> CheckpointSaveError:
    first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
    kept = [s for s in self.all_steps() if s not in self._unhashed]
    return CheckpointSaveError(
        f'saving the checkpoint of step {step} in {self.directory} failed ({type(err).__name__}: {first}); '
        f'{free_space(self.directory)} free on that disk. Intact earlier checkpoints: steps {kept or "none"}. '
        f'Free some space (or make {self.workdir} writable) and rerun the same command to resume.')

  def poll(self, step: int) -> None:
    """At a step boundary: raises CheckpointSaveError if an asynchronous save failed; hashes finished saves."""
    if not self._unhashed or self.manager.is_saving_in_progress():
      return
    try:
      self.manager.check_for_errors()
    except Exception as err:  # pylint: disable=broad-except
      raise self._save_error(min(self._unhashed), err) from None
    self._record_finished()

  def _record_finished(self) -> None:
    for saved_step, started in sorted(self._unhashed.items()):
      step_dir = os.path.join(self.directory, str(saved_step))
      if self._hash and os.path.isdir(step_dir):
        integrity.log_recorded(saved_step, integrity.record(step_dir), time.time() - started)
    self._unhashed = {}

  def restore(self, step: int, target: TrainState) -> tuple[TrainState, dict[str, Any], dict[str, Any]]:
    """(state, data iterator state, meta) of checkpoint `step`; target: ShapeDtypeStructs with shardings."""
    args = ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
                              meta=ocp.args.JsonRestore())
    restored = self.manager.restore(step, args=args)
    return restored.state, dict(restored.data), dict(restored.meta)

  def set_aside(self, step: int, reasons: list[str]) -> None:
    """Moves damaged checkpoint `step` to WORKDIR/checkpoints_damaged/ (process 0), never deleting it. Every
    process reads the same files and reaches the same verdict; the barriers keep the move after all have read."""
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'samoe_before_set_aside_{step}')
    if jax.process_index() == 0:
      target = integrity.move_aside(self.directory, os.path.join(self.directory, str(step)), reasons)
      logging.warning('checkpoint step %d in %s is damaged (%s): moved it to %s; using an older one', step,
                      self.directory, '; '.join(reasons), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'samoe_set_aside_{step}')
    self.manager.reload()

  def verified_latest(self) -> int | None:
    """The newest checkpoint whose files match their checksums and whose meta reads; damaged newer ones are set
    aside. Raises NoIntactCheckpointError when checkpoints exist but none is intact, IncompatibleCheckpointError
    (not written by this trainer) when none has readable metadata and none has checksums."""
    steps = sorted(self.all_steps(), reverse=True)
    set_aside, unreadable = [], []
    for step in steps:
      start = time.time()
      found = integrity.problems(os.path.join(self.directory, str(step)))
      if found is None or not found:
        try:
          self.read_meta(step)
        except IncompatibleCheckpointError as err:
          if found is None:        # no checksums either: maybe not ours; decided below
            unreadable.append((step, err))
            continue
          found = [f'meta unreadable: {err}']
      if found:
        self.set_aside(step, found)
        set_aside.append(step)
        continue
      logging.info('checkpoint step %d %s in %.2fs', step,
                   'verified against its checksums' if found is not None else 'has no checksums (unverified)',
                   time.time() - start)
      for bad, err in unreadable:   # newer, unreadable, unchecksummed checkpoints beside an intact one
        self.set_aside(bad, [f'meta unreadable: {err.__cause__ or err}'])
      return step
    if unreadable and not set_aside:
      raise unreadable[0][1]
    for bad, err in unreadable:
      self.set_aside(bad, [f'meta unreadable: {err.__cause__ or err}'])
    if steps:
      raise NoIntactCheckpointError(
          f'no intact checkpoint in {self.directory}: steps {steps} are damaged and were moved to '
          f'{os.path.join(self.workdir, integrity.DAMAGED_DIR)} (nothing was deleted). Rerunning the same command '
          'starts this run again from step 0.')
    return None

  def restore_intact(self, target: TrainState, current_meta: dict[str, Any]
                     ) -> tuple[TrainState, dict[str, Any], int] | None:
    """(state, data state, step) of the newest checkpoint that restores with finite values; damaged ones are set
    aside on the way. None when the directory holds no checkpoint."""
    while (step := self.verified_latest()) is not None:
      self.check_compatible(step, current_meta)
      try:
        state, data_state, _ = self.restore(step, target)
      except Exception as err:  # pylint: disable=broad-except  (tensorstore/orbax errors of a damaged file)
        self.set_aside(step, [f'restore failed: {type(err).__name__}: {str(err).strip().splitlines()[0][:300]}'])
        continue
      if not all_finite(state):
        self.set_aside(step, ['restored values are not all finite (NaN/Inf in the parameters or optimizer state)'])
        continue
      step_dir = os.path.join(self.directory, str(step))
      if self._hash and integrity.problems(step_dir) is None:   # restored fine: its checksums are recorded now
        integrity.log_recorded(step, integrity.record(step_dir), None)
      return state, data_state, step
    return None

  def wait(self) -> None:
    """Blocks until pending async saves are on disk (CheckpointSaveError if one failed); hashes them."""
    try:
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as err:  # pylint: disable=broad-except
      raise self._save_error(min(self._unhashed, default=-1), err) from None
    self._record_finished()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self.manager.close()
      logging.info('checkpoints in %s: steps %s', self.directory, self.all_steps())
