"""The data.task names and the data checks a run makes before it writes anything.

Plain Python: only data.task='tfds_lm' (a prepared TFDS corpus, streamed through seqio) imports TensorFlow, and
where TensorFlow, TFDS or seqio is not installed it is refused in one line naming the missing packages.
"""

from __future__ import annotations

from typing import Any

from samoe_jax import deps
from samoe_jax.data import finetune_rows
from samoe_jax.data import in_memory
from samoe_jax.data import text_files
from samoe_jax.data import vocabularies

STREAMED = ('tfds_lm',)   # through seqio and tf.data (data/sequences.py, data/tasks.py)
TASKS = (*in_memory.EMBEDDED, *STREAMED, text_files.TASK, finetune_rows.TASK)
STREAMED_PACKAGES = ('tensorflow', 'tensorflow_datasets', 'seqio')


def check_task(task: str) -> None:
  """ValueError naming data.task and the known tasks when `task` is not one of them."""
  if task not in TASKS:
    raise ValueError(f'data.task={task!r} is not a known task: use one of {", ".join(map(repr, TASKS))}.')


def require_streaming(task: str) -> None:
  """MissingPackageError when the streamed data.task `task` cannot be read here (TensorFlow, TFDS, seqio)."""
  deps.require(f'data.task={task!r} (a TFDS corpus streamed through seqio)', *STREAMED_PACKAGES)


def check_data_source(data_cfg: Any) -> None:
  """The data checks run before a run writes anything (no corpus is tokenized): the task name, the vocabulary
  (loaded: a file that is not a SentencePiece model is named) and for 'tfds_lm' the packages and the prepared
  dataset ('task_finetune' reads its evaluation task's files: evaluation/task_finetune.check_data)."""
  check_task(data_cfg.task)
  vocabularies.get_vocabulary(data_cfg.vocabulary)
  if data_cfg.task in STREAMED:
    require_streaming(data_cfg.task)
    from samoe_jax.data import tfds_dataset  # local import: imports TensorFlow; only data.task='tfds_lm' needs it
    tfds_dataset.check_tfds_dataset(data_cfg.tfds_name, data_cfg.tfds_data_dir, data_cfg.text_key)
