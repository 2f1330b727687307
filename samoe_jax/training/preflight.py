"""The checks a training run makes before it writes anything into its workdir.

Bad input found here never leaves a half-made workdir behind: the config (validate_config: every problem at
once, non-finite numbers and the trainer's own keys included), the evaluation tasks' data, the corpus files, the
vocabulary (loaded), a prepared TFDS dataset, the distillation teacher, the run to initialise from (config.init),
and the workdir itself (a directory, or creatable, and writable). Checks that need the device mesh run in the trainer right after, still before writing.
"""

from __future__ import annotations

import os
import tempfile

import ml_collections

from samoe_jax.checkpointing.store import Checkpointer
from samoe_jax.data.sources import check_data_source
from samoe_jax.data.text_files import check_text_files
from samoe_jax.evaluation import task_finetune
from samoe_jax.training import distill, init_from
from samoe_jax.training.config_checks import validate_config
from samoe_jax.training.task_eval import check_task_data


def check_workdir(workdir: str) -> None:
  """Raises ValueError naming `workdir` when it is a file, cannot be created, or is not writable."""
  if not workdir:
    raise ValueError('--workdir is empty: give the run directory, e.g. --workdir=runs/my_run')
  if '://' in workdir:   # gs:// and similar: the store is checked when the first file is written
    return
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f'--workdir={workdir!r} is a file, not a directory: give a directory for the run')
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ValueError(f'--workdir={workdir!r} cannot be created: {parent} is a file')
  try:
    with tempfile.TemporaryFile(dir=parent):
      pass
  except OSError as err:
    what = 'is not writable' if parent == path else f'cannot be created ({parent} is not writable)'
    raise ValueError(f'--workdir={workdir!r} {what}: {err.strerror or err}') from err


def check_before_writing(config: ml_collections.ConfigDict, workdir: str) -> None:
  """All checks that need neither devices nor the workdir's contents; raises ValueError/OSError."""
  validate_config(config)   # the one config pass of a training start (the trainer's keys included)
  check_workdir(workdir)
  check_data_source(config.data)
  task_finetune.check_data(config.data)   # data.task='task_finetune': both splits read and tokenized
  check_task_data(config)
  check_text_files(config.data, eval_batches=config.train.eval_batches)  # data.task='text_files': read only
  if distill.enabled(config):     # missing teacher / vocabulary mismatch
    distill.teacher_config(config)
  if init_from.enabled(config) and not Checkpointer.steps_on_disk(workdir):   # a fresh run starts from it
    init_from.check_source(config)   # its checkpoint, vocabulary and (init.mode='same') parameter shapes
