"""Which checkpoints of a run to evaluate, and restoring only their parameters onto the evaluation mesh.

`select_steps(workdir, 'latest' | 'all' | '<step>[,<step>...]')` names the checkpoints; `restore_params` reads the
'params' subtree of a checkpoint's train state (the Adam moments are never read, so evaluation needs a third of
training's memory) into arrays carrying the current mesh's shardings, so a run trained on one mesh is
evaluated on another.

Damaged checkpoints (checkpointing/integrity.py: files that no longer match the checksums recorded when
they were written) are never evaluated and never moved by evaluation: 'latest' falls back to the newest intact
checkpoint and 'all' skips the damaged ones, each with a warning; a damaged step named explicitly is an error.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from samoe_jax.config.sections import complete_config
from samoe_jax.models.model import LanguageModel
from samoe_jax.sharding.partitioner import Partitioner
from samoe_jax.checkpointing import integrity
from samoe_jax.checkpointing.store import all_finite


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def available_steps(workdir: str) -> list[int]:
  """Steps of the finished checkpoints in WORKDIR/checkpoints (ascending); [] when there are none."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory)
                if name.isdigit() and os.path.isdir(os.path.join(directory, name, 'state')))


def select_steps(workdir: str, which: str, flag: str = '--checkpoint') -> list[int]:
  """'latest' -> [last step]; 'all' -> every step; '500' or '500,1000' -> those steps (each must exist). Errors
  about `which` name it as the command-line flag `flag`."""
  steps = available_steps(workdir)
  if not steps:
    raise ValueError(f'{checkpoint_dir(workdir)} holds no checkpoint: train first (python -m samoe_jax.train '
                     f'--workdir={workdir} ...) or point --workdir at a trained run')
  damage = {}
  def intact(step: int) -> bool:
    found = integrity.problems(os.path.join(checkpoint_dir(workdir), str(step)))
    if found:
      damage[step] = found
    return not found
  if which in ('latest', 'all'):
    chosen = [s for s in (reversed(steps) if which == 'latest' else steps) if intact(s)]
    for step, found in sorted(damage.items()):
      if which == 'all' or not chosen or step > chosen[0]:
        logging.warning('checkpoint step %d in %s is damaged (%s): not evaluated', step, checkpoint_dir(workdir),
                        '; '.join(found))
    if not chosen:
      raise ValueError(f'every checkpoint in {checkpoint_dir(workdir)} is damaged: '
                       + '; '.join(f'step {s}: {", ".join(f)}' for s, f in sorted(damage.items())))
    return chosen[:1] if which == 'latest' else chosen
  try:
    wanted = [int(part) for part in which.split(',') if part.strip()]
  except ValueError:
    wanted = []
  if not wanted:
    raise ValueError(f'{flag}={which!r}: use latest, all, or step numbers such as 1000 or 500,1000')
  missing = [s for s in wanted if s not in steps]
  if missing:
    raise ValueError(f'{flag}={which!r}: no checkpoint of step(s) {missing} in {checkpoint_dir(workdir)}; '
                     f'available: {steps}')
  bad = [s for s in wanted if not intact(s)]
  if bad:
    raise ValueError(f'{flag}={which!r}: damaged checkpoint(s) in {checkpoint_dir(workdir)}: '
                     + '; '.join(f'step {s}: {", ".join(damage[s])}' for s in bad)
                     + f'; the other steps: {[s for s in steps if s not in bad]}')
  return wanted


def run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with (WORKDIR/config.json, written by the trainer)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise ValueError(f'{path} does not exist: give --config=FILE, or a --workdir written by samoe_jax.train')
  with open(path) as f:
    return complete_config(json.load(f))


def param_shardings(model: LanguageModel, partitioner: Partitioner) -> Any:
  return partitioner.logical_to_mesh(model.param_logical_axes())


def restore_params(model: LanguageModel, partitioner: Partitioner, workdir: str, step: int) -> Any:
  """The parameters of checkpoint `step`, placed with the model's shardings on the partitioner's mesh."""
  shardings = param_shardings(model, partitioner)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), model.abstract_params(),
                        shardings)
  path = os.path.join(checkpoint_dir(workdir), str(step), 'state')
  restore_args = jax.tree.map(lambda t: ocp.ArrayRestoreArgs(sharding=t.sharding, global_shape=t.shape,
                                                             dtype=t.dtype), target)
  with ocp.PyTreeCheckpointer() as checkpointer:
    try:
      restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
          item={'params': target}, restore_args={'params': restore_args}, partial_restore=True))
    except (ValueError, KeyError) as err:
      raise ValueError(f'checkpoint {path} does not hold parameters of this model config ({err}); evaluate '
                       'with the config the run was trained with (its config.json)') from err
  if not all_finite(restored['params']):
    raise ValueError(f'checkpoint {path} holds non-finite parameters (NaN or Inf): it cannot be evaluated')
  return restored['params']
