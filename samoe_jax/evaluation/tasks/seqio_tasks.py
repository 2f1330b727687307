"""The evaluation tasks as seqio tasks over the same local JSONL files (imports seqio and TensorFlow: ~8 s).

register_seqio_task(name, data_dir) registers (once per task and data directory) a seqio.Task named
`eval_<name>_<hash of data_dir>` whose source is a seqio.FunctionDataSource reading `<data_dir>/<name>/<split>.jsonl`
through the same checked reader as the plain task (readers.read_jsonl) and yielding each row's schema fields, with
the nesting of the row ({'choices': {'text': [...], 'label': [...]}, ...}): strings as tf.string, integers as
tf.int64, lists of strings as tf.string [n]. The rows are the raw ones: apply the task's `process_doc` (HellaSwag)
after `to_python`. No preprocessors and no output features: scoring stays in the plain task code.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterator
from typing import Any

from samoe_jax.data import tf_setup  # pylint: disable=unused-import  # before seqio: quiet TF, no GPU

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-order
import seqio  # pylint: disable=g-import-not-at-top,wrong-import-order
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-order

from samoe_jax.evaluation.tasks import readers  # pylint: disable=g-import-not-at-top,wrong-import-order
from samoe_jax.evaluation.tasks.base import Doc, Task  # pylint: disable=g-import-not-at-top,wrong-import-order
from samoe_jax.evaluation.tasks.registry import get_task  # pylint: disable=g-import-not-at-top,wrong-import-order

_SPECS = {readers.STR: tf.TensorSpec([], tf.string), readers.INT: tf.TensorSpec([], tf.int64),
          readers.STR_LIST: tf.TensorSpec([None], tf.string)}


def _nest(schema: readers.Schema, leaf: Any) -> dict[str, Any]:
  """{'a.b': kind} -> {'a': {'b': leaf(path, kind)}}."""
  out: dict[str, Any] = {}
  for path, kind in schema.items():
    *parents, last = path.split('.')
    node = out
    for part in parents:
      node = node.setdefault(part, {})
    node[last] = leaf(path, kind)
  return out


def output_signature(task: Task) -> dict[str, Any]:
  """The nested tf.TensorSpec of one row of `task`."""
  return _nest(task.schema, lambda path, kind: _SPECS[kind])


def schema_fields(task: Task, doc: Doc) -> dict[str, Any]:
  """The schema fields of a raw row, nested as in the row (what the seqio source yields, as Python values)."""
  return _nest(task.schema, lambda path, kind: readers.lookup(doc, path))


def _rows(task: Task, split: str) -> Iterator[dict[str, Any]]:
  for doc in task.raw_docs(split):
    yield _nest(task.schema, lambda path, kind, doc=doc: (np.asarray(readers.lookup(doc, path), dtype=object)
                                                          if kind == readers.STR_LIST else readers.lookup(doc, path)))


def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *, task: Task) -> tf.data.Dataset:
  """seqio dataset_fn: the rows of `split` in file order (one file per split, so nothing to shuffle)."""
  del shuffle_files, seed
  if split not in task.splits:
    raise ValueError(f'split {split!r} is not read by task {task.name!r}: use one of {task.splits}')
  task.raw_docs(split)  # read and check now, so a missing or malformed file fails here with its path and line
  return tf.data.Dataset.from_generator(functools.partial(_rows, task, split), output_signature=output_signature(task))


def seqio_task_name(name: str, data_dir: str) -> str:
  digest = hashlib.sha256(os.path.abspath(data_dir).encode()).hexdigest()[:12]
  return f'eval_{name}_{digest}'


def register_seqio_task(name: str, data_dir: str | os.PathLike) -> seqio.Task:
  """The seqio task of evaluation task `name` over `data_dir`, registered on the first call (idempotent)."""
  task = get_task(name, data_dir)
  seqio_name = seqio_task_name(name, task.data_dir)
  if seqio_name not in seqio.TaskRegistry.names():
    source = seqio.FunctionDataSource(dataset_fn=functools.partial(dataset_fn, task=task), splits=task.splits)
    seqio.TaskRegistry.add(seqio_name, source=source, preprocessors=[], output_features={}, metric_fns=[])
  return seqio.get_mixture_or_task(seqio_name)


def to_python(example: Any) -> Any:
  """A row from the seqio dataset (numpy, via as_numpy_iterator) as JSON-like Python values."""
  if isinstance(example, dict):
    return {k: to_python(v) for k, v in example.items()}
  if isinstance(example, bytes):
    return example.decode('utf-8')
  if isinstance(example, np.ndarray):
    return [to_python(v) for v in example.tolist()]
  if isinstance(example, np.integer):
    return int(example)
  return example


def seqio_docs(name: str, data_dir: str | os.PathLike, split: str | None = None) -> list[dict[str, Any]]:
  """The raw rows of `split` (default: the evaluated split) read through the seqio task."""
  task = register_seqio_task(name, data_dir)
  split = get_task(name, data_dir).eval_split if split is None else split
  return [to_python(x) for x in task.get_dataset(split=split, shuffle=False).as_numpy_iterator()]
