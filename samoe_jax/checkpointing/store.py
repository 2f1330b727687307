"""Orbax checkpoints of the train state, the data iterator position and the run's resume metadata.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta}:
  state  the train state (StandardSave; sharded arrays written by every process).
  data   the training iterator's get_state() dict (JsonSave).
  meta   {'step', 'seed', 'resume_keys': {config key: value}, 'param_shapes': {path: [shape, dtype]}} (JsonSave).
A run that finds a checkpoint resumes from the latest one; `check_compatible` first compares its meta with the
current run's and refuses (IncompatibleCheckpointError naming every difference) instead of overwriting a run
with different model shapes, seed or data order. Restoring goes into abstract arrays that carry the *current*
mesh's shardings, so a checkpoint written on one mesh restores onto another.

Integrity (checkpointing/integrity.py). Every finished save is hashed by a background thread of process 0
(`_Hasher`) as soon as orbax commits it: the thread waits, off the training step's path, for CHECKPOINTS/<S> to
appear under its final name and hashes it then; the next save first waits for that hashing (so orbax never
deletes a checkpoint being hashed; in practice it finished long before). So while a run goes on every finished
checkpoint but the newest has checksums, and the newest has them milliseconds after its commit. A checkpoint is
verified, and its restored values checked to be finite, before it is used; a damaged one is moved aside and the
newest intact one is used instead. A checkpoint without checksums is never trusted silently: if an older one
verifies, the unverified newer ones are moved aside and the run resumes from the verified one (the steps after it
are trained again, to the same bits); if none has checksums (an older version of the trainer wrote them) the
newest is used with a warning naming its step, and its checksums are recorded once it restored.

Failed saves (disk full, a directory made unwritable) raise CheckpointSaveError naming the step whose save failed,
the directory, the free space and the checkpoints kept: a synchronous save at once; an asynchronous one at the
first step boundary after it failed (at the latest when the next save starts, so no later checkpoint or step is
written); a failure to write the checksum file in the same way, as a failure of that step's save; one noticed at
shutdown by close(), once. The failed save's temporary folder is removed at once (the earlier checkpoints are
never touched); leftovers of a killed process are removed at the next start.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import threading
import time
from typing import Any, Callable, TypeVar

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from samoe_jax.checkpointing import integrity
from samoe_jax.checkpointing import resume_config

# Config keys whose change makes "continue exactly where the checkpoint left off" meaningless.
RESUME_KEYS = ('train.seed', 'data.task', 'data.vocabulary', 'data.seq_len', 'data.batch_size',
               'data.shuffle_seed')
ITEMS = ('state', 'data', 'meta')
State = TypeVar('State')   # the trainer's TrainState (training/state.py): a pytree of arrays


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


def describe_failure(err: BaseException) -> str:
  """One line on a failed write: the operating system's reason first when the error names one (orbax and
  TensorStore bury it at the end of a long message), then the start of the message itself."""
  text = ' '.join(str(err).split())
  code = getattr(err, 'errno', None)
  if not code and (found := re.search(r"os_error_code='?(\d+)", text)):
    code = int(found.group(1))
  reason = f'{os.strerror(code)}, errno {code}: ' if code else ''
  if code == errno.EFBIG:
    reason += 'a file-size limit (ulimit -f) or the file system\'s largest file; '
  first = text[:160] + ('...' if len(text) > 160 else '')
  return f'{reason}{type(err).__name__}: {first}' if first else f'{reason}{type(err).__name__}'


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


class _Hasher:
  """Process 0's background thread that records the checksums of each save as soon as orbax commits it.

  `add(step)` after a save started; the thread polls (every POLL_SECONDS, a stat) until CHECKPOINTS/<step>
  exists under its final name, then hashes it; if the save ends without that directory (it failed) it drops the
  step (the main thread reports the manager's error). `drain()` waits until every added step is done; `error` is
  (step, exception) of a checksum file that could not be written."""

  POLL_SECONDS = 0.02

  def __init__(self, directory: str, saving: Callable[[], bool]):
    self.directory, self._saving = directory, saving
    self._queue: list[tuple[int, float]] = []   # (step, when its save started), oldest first
    self._closed = False
    self.error: tuple[int, Exception] | None = None
    self._cond = threading.Condition()
    self._thread = threading.Thread(target=self._run, name='samoe_checksums', daemon=True)
    self._thread.start()

  def add(self, step: int, started: float) -> None:
    with self._cond:
      self._queue.append((int(step), started))
      self._cond.notify_all()

  def drain(self) -> None:
    with self._cond:
      self._cond.wait_for(lambda: not self._queue)

  def close(self) -> None:
    with self._cond:
      self._closed = True
      self._cond.notify_all()
    self._thread.join()

  def _run(self) -> None:
    while True:
      with self._cond:
        self._cond.wait_for(lambda: self._queue or self._closed)
        if not self._queue:
          return
        step, started = self._queue[0]
      try:
        self._hash_when_committed(step, started)
      except Exception as err:  # pylint: disable=broad-except  (reported by the main thread)
        self.error = self.error or (step, err)
      finally:
        with self._cond:
          self._queue.pop(0)
          self._cond.notify_all()

  def _hash_when_committed(self, step: int, started: float) -> None:
    step_dir = os.path.join(self.directory, str(step))
    while True:
      ended = not self._saving()    # read first: orbax renames the step directory before it clears this flag
      if os.path.isdir(step_dir):
        committed = time.time()
        integrity.log_recorded(step, integrity.record(step_dir), committed - started)
        return
      if ended:
        return
      time.sleep(self.POLL_SECONDS)


class Checkpointer:
  """ocp.CheckpointManager over WORKDIR/checkpoints: keep-N, optional async saves, restore with shardings."""

  def __init__(self, workdir: str, train_cfg: ml_collections.ConfigDict):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.workdir = os.path.abspath(workdir)
    primary = jax.process_index() == 0
    leftovers = integrity.leftover_temporaries(self.directory)
    if leftovers and primary:
      logging.warning('removing %d unfinished save(s) left in %s by a crash or a failed save: %s', len(leftovers),
                      self.directory, ', '.join(leftovers))
    removed = integrity.remove_temporary_files(self.directory) if primary else []
    if removed:
      logging.warning('removed %d unfinished checksum file(s) left in %s by a killed process: %s', len(removed),
                      self.directory, ', '.join(removed))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(train_cfg.keep_checkpoints), create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=bool(train_cfg.async_checkpoint))
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
    self._saving: int | None = None                 # the newest save not yet known to have finished
    self._error: CheckpointSaveError | None = None  # the failure this checkpointer stopped the run with
    self._warned: set[int] = set()
    self._hasher = (_Hasher(self.directory, self.manager.is_saving_in_progress)
                    if primary and integrity.is_local(self.directory) else None)

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

  def check_compatible(self, step: int, current_meta: dict[str, Any], config_lines: list[str] = ()) -> None:
    """Raises IncompatibleCheckpointError if this run cannot continue `step`: the config keys that differ
    (config_lines, from checkpointing/resume_config.config_changes), then every difference of the checkpoint's meta."""
    diffs = meta_differences(self.read_meta(step), current_meta)
    if diffs:
      raise IncompatibleCheckpointError(
          resume_config.refusal_message(self.directory, step, list(config_lines), diffs))

  def save(self, step: int, state: State, data_state: dict[str, Any], meta: dict[str, Any]) -> bool:
    """Starts saving (async when configured; the device-to-host copy happens before this returns); the background
    hasher records its checksums once it has committed.

    First waits for the previous save and its checksums (as orbax would): a failure of either raises
    CheckpointSaveError naming that step before anything of this one is written. Returns False when a checkpoint
    of this step already exists.
    """
    if step in self.manager.all_steps():
      return False
    self._finish_previous()
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                              meta=ocp.args.JsonSave(dict(meta, step=int(step))))
    started = time.time()
    self._saving = int(step)
    try:
      saved = self.manager.save(step, args=args, force=True)
      if not self.manager.is_saving_in_progress():   # a synchronous save has finished (or failed) here
        self._confirm_saved()
    except Exception as err:  # pylint: disable=broad-except  (orbax/tensorstore raise many types)
      raise self._failed(step, err) from None
    if saved and self._hasher is not None:
      self._hasher.add(step, started)
    return saved

  def poll(self, step: int) -> None:
    """At a step boundary: raises CheckpointSaveError, naming the step whose save failed, if an asynchronous save
    or the writing of its checksums has failed by now. Cheap: a flag read while a save is in progress."""
    del step   # the error names the failed save's step, not this one
    if self._error is not None:
      raise self._error
    if self._hasher is not None and self._hasher.error is not None:
      raise self._failed(*self._hasher.error, what='while writing its checksums ')
    if self._saving is not None and not self.manager.is_saving_in_progress():
      self._confirm_saved()   # never waits for the hashing: that goes on in the background

  def _confirm_saved(self) -> None:
    """Waits for the pending save (orbax raises a failed asynchronous save's error from this wait, once)."""
    if self._saving is not None:
      try:
        self.manager.wait_until_finished()
        self.manager.check_for_errors()
      except Exception as err:  # pylint: disable=broad-except
        raise self._failed(self._saving, err) from None
      self._saving = None

  def _finish_previous(self) -> None:
    """Waits for the pending save and its checksums; CheckpointSaveError naming its step if either failed."""
    if self._error is not None:
      raise self._error
    self._confirm_saved()
    if self._hasher is not None:
      self._hasher.drain()
      if self._hasher.error is not None:
        raise self._failed(*self._hasher.error, what='while writing its checksums ')

  def _failed(self, step: int | None, err: Exception, what: str = '') -> CheckpointSaveError:
    """The CheckpointSaveError of the failed save of `step` (made once: later calls return the same error), after
    removing that save's temporary folder (process 0; earlier checkpoints are never touched)."""
    if self._error is None:
      self._remove_unfinished(step)
      kept = self._kept(step)
      which = f'the checkpoint of step {step}' if step is not None else 'a checkpoint'
      self._error = CheckpointSaveError(
          f'saving {which} in {self.directory} failed {what}({describe_failure(err)}); '
          f'{free_space(self.directory)} free on that disk. Intact earlier checkpoints: steps {kept or "none"}. '
          f'Free some space (or make {self.workdir} writable) and rerun the same command to resume'
          + (f' from step {kept[-1]}.' if kept else ' (from step 0).'))
    return self._error

  def _remove_unfinished(self, step: int | None) -> None:
    if step is None or jax.process_index() != 0 or not integrity.is_local(self.directory):
      return
    for name in integrity.leftover_temporaries(self.directory):
      if name.split('.', 1)[0] == str(step):
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        logging.info('removed the unfinished save %s', os.path.join(self.directory, name))

  def _kept(self, failed: int | None) -> list[int]:
    """The checkpoints a rerun can resume from after the save of `failed` failed: those with checksums (all, when
    none has them: an older trainer's, or a remote directory)."""
    if not integrity.is_local(self.directory):
      return [s for s in self.all_steps() if s != failed]
    steps = [s for s in self._steps_on_disk() if s != failed]
    hashed = [s for s in steps if integrity.has_checksums(os.path.join(self.directory, str(s)))]
    return hashed or steps

  def restore(self, step: int, target: State) -> tuple[State, dict[str, Any], dict[str, Any]]:
    """(state, data iterator state, meta) of checkpoint `step`; target: ShapeDtypeStructs with shardings."""
    args = ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
                              meta=ocp.args.JsonRestore())
    restored = self.manager.restore(step, args=args)
    return restored.state, dict(restored.data), dict(restored.meta)

  def set_aside(self, step: int, reasons: list[str], verdict: str = 'is damaged',
                then: str = 'using an older one') -> None:
    """Moves checkpoint `step` (damaged, or unverifiable beside a verified one) to WORKDIR/checkpoints_damaged/
    with its reasons (process 0), never deleting it. Every process reads the same files and reaches the same
    verdict; the barriers keep the move after all have read."""
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'samoe_before_set_aside_{step}')
    if jax.process_index() == 0:
      target = integrity.move_aside(self.directory, os.path.join(self.directory, str(step)), reasons)
      logging.warning('checkpoint step %d in %s %s (%s): moved it to %s; %s', step, self.directory, verdict,
                      '; '.join(reasons), target, then)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'samoe_set_aside_{step}')
    self.manager.reload()

  def verified_latest(self) -> int | None:
    """The newest checkpoint whose files match their checksums and whose meta reads; damaged newer ones are set
    aside, and so are newer ones without checksums (they cannot be verified; the run trains their steps again).
    When no checkpoint has checksums, the newest readable one, with a warning that it is unverified (a remote
    directory: without one; it relies on the store). Raises NoIntactCheckpointError when checkpoints exist but
    none is intact, IncompatibleCheckpointError (not written by this trainer) when none has readable metadata and
    none has checksums."""
    steps = sorted(self.all_steps(), reverse=True)
    local = integrity.is_local(self.directory)
    set_aside, unreadable, unverified = [], [], []
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
      if found is None and local:  # used only if no older checkpoint verifies
        unverified.append(step)
        continue
      logging.info('checkpoint step %d %s in %.2fs', step, 'verified against its checksums' if local else
                   'is in a remote directory (no checksums: it relies on the store)', time.time() - start)
      self._set_aside_unusable(unreadable, unverified, step)
      return step
    if unverified:
      step = unverified[0]
      self._set_aside_unusable([(s, e) for s, e in unreadable if s > step], [], step)
      if step not in self._warned:
        self._warned.add(step)
        logging.warning(
            'checkpoint step %d in %s has no checksums and no other checkpoint has them (they were written by a '
            'trainer before checksums existed, or the run was killed between the save and its hashing): resuming '
            'from it UNVERIFIED; a damaged file that still reads would go unnoticed (its restored values are '
            'checked to be finite, and its checksums are recorded now)', step, self.directory)
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

  def _set_aside_unusable(self, unreadable: list[tuple[int, Exception]], unverified: list[int], used: int) -> None:
    """Sets aside the checkpoints newer than `used` that are not used: unreadable ones without checksums, and
    unverifiable ones beside the verified `used`."""
    for bad, err in unreadable:
      self.set_aside(bad, [f'meta unreadable: {err.__cause__ or err}'])
    for step in unverified:
      self.set_aside(step, ['no samoe_checksums.json: its process ended between the save and its hashing, or '
                            'writing them failed'], verdict='has no checksums, so it cannot be verified',
                     then=f'resuming from step {used}, which verifies (the steps after it are trained again)')

  def restore_intact(self, target: State, current_meta: dict[str, Any]
                     ) -> tuple[State, dict[str, Any], int] | None:
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
      if self._hasher is not None and integrity.problems(step_dir) is None:   # restored fine: record them now
        try:
          integrity.log_recorded(step, integrity.record(step_dir), None)
        except OSError as err:   # a full disk: the next save reports it, naming its step
          logging.warning('could not record the checksums of checkpoint step %d in %s (%s); it stays unverified',
                          step, self.directory, describe_failure(err))
      return state, data_state, step
    return None

  def wait(self) -> None:
    """Blocks until the pending save is on disk and its checksums are recorded (CheckpointSaveError naming its step
    if either failed)."""
    self._finish_previous()

  def close(self) -> None:
    """wait(), then closes the manager. A failure raises CheckpointSaveError once: after one was raised (the run
    stopped on it), close() only shuts down."""
    try:
      if self._error is None:
        self.wait()
    finally:
      if self._hasher is not None:
        self._hasher.close()
      try:
        self.manager.close()
      except Exception as err:  # pylint: disable=broad-except
        if self._error is None:
          raise self._failed(self._saving, err) from None
      logging.info('checkpoints in %s: steps %s', self.directory, self._steps_on_disk())

  def _steps_on_disk(self) -> list[int]:
    """The finished checkpoints as the directory lists them (orbax's own list drops a step it is about to delete
    as soon as the save that deletes it starts, even if that save then fails)."""
    return self.steps_on_disk(self.workdir) if integrity.is_local(self.directory) else self.all_steps()
