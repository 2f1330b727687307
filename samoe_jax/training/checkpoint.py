"""Orbax checkpoints of the train state, the data iterator position and the run's resume metadata.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta}:
  state  the TrainState (StandardSave; sharded arrays written by every process).
  data   the training iterator's get_state() dict (JsonSave).
  meta   {'step', 'seed', 'resume_keys': {config key: value}, 'param_shapes': {path: [shape, dtype]}} (JsonSave).
A run that finds a checkpoint resumes from the latest one; `check_compatible` first compares its meta with the
current run's and refuses (IncompatibleCheckpointError naming every difference) instead of overwriting a run
with different model shapes, seed or data order. Restoring goes into abstract arrays that carry the *current*
mesh's shardings, so a checkpoint written on one mesh restores onto another.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from samoe_jax.training.state import TrainState

# Config keys whose change makes "continue exactly where the checkpoint left off" meaningless.
RESUME_KEYS = ('train.seed', 'data.task', 'data.vocabulary', 'data.seq_len', 'data.batch_size',
               'data.shuffle_seed')
ITEMS = ('state', 'data', 'meta')


class IncompatibleCheckpointError(ValueError):
  """The workdir holds a checkpoint that the current config cannot continue."""


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
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(train_cfg.keep_checkpoints), create=True,
        enable_async_checkpointing=bool(train_cfg.async_checkpoint))
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

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
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                              meta=ocp.args.JsonSave(dict(meta, step=int(step))))
    return self.manager.save(step, args=args, force=True)

  def restore(self, step: int, target: TrainState) -> tuple[TrainState, dict[str, Any], dict[str, Any]]:
    """(state, data iterator state, meta) of checkpoint `step`; target: ShapeDtypeStructs with shardings."""
    args = ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
                              meta=ocp.args.JsonRestore())
    restored = self.manager.restore(step, args=args)
    return restored.state, dict(restored.data), dict(restored.meta)

  def wait(self) -> None:
    """Blocks until pending async saves are on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
    logging.info('checkpoints in %s: steps %s', self.directory, self.all_steps())
