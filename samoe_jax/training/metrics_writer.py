"""Where metrics go: console progress lines, TensorBoard event files and WORKDIR/metrics.jsonl.

metrics.jsonl holds one JSON object per logged step: {'kind': 'train' | 'eval', 'step': int, 'time': unix
seconds, <metric>: float or nested list, ...}; kind 'tasks' records carry zero/few-shot scores
('tasks/<task>/<metric>') of the trainer's periodic task evaluation. Train records carry the model's metrics averaged over the steps
since the previous log (loss, cross_entropy, aux_loss, accuracy, moe/..., pool/...), learning_rate, grad_norm
and perf/...; eval records carry eval/loss, eval/cross_entropy, eval/perplexity, eval/accuracy (and for an
MoE model eval/moe/dropped_fraction, evaluation/validation.py); 'grad_stats' records
(train.grad_stats_every) the gradient-flow statistics 'grad/...' of one step (training/grad_stats.py). A resumed run
appends; readers take the last record of a (kind, step) pair (see `read_metrics`).

TensorBoard gets every scalar and every array element as a scalar with its index appended
('moe/layer1/expert_load/3', 'pool/mixing_weights/0/1'). A train record's top-level names go under 'train/'
there ('train/loss', 'train/learning_rate'; see `tensorboard_name`), so that TensorBoard puts them in one section
beside 'eval/'; names that already carry a section ('moe/', 'pool/', 'perf/', 'grad/', 'tasks/') and every
metrics.jsonl key stay as they are. Only process 0 writes.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging

from samoe_jax.training.event_file import EventFileWriter as EventWriter  # TensorBoard files, no TensorFlow


def flatten_arrays(metrics: Mapping[str, Any]) -> dict[str, float]:
  """{'a': [E] array} -> {'a/0': float, ..., 'a/E-1': float}; scalars keep their names."""
  out = {}
  for name, value in metrics.items():
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
      out[name] = float(arr)
      continue
    for index in np.ndindex(arr.shape):
      out[name + '/' + '/'.join(map(str, index))] = float(arr[index])
  return out


def tensorboard_name(kind: str, name: str) -> str:
  """The TensorBoard tag of metric `name` of a `kind` record: 'train/<name>' for a train metric without a section
  ('loss' -> 'train/loss'); every other name unchanged ('eval/loss', 'moe/layer1/expert_load/3')."""
  return f'train/{name}' if kind == 'train' and '/' not in name else name


def to_json_value(value: Any) -> float | list:
  arr = np.asarray(value)
  return float(arr) if arr.ndim == 0 else arr.astype(np.float64).tolist()


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else (f'{m}m{s:02d}s' if m else f'{s}s')


def progress_line(step: int, total: int, scalars: Mapping[str, float], eta_s: float | None) -> str:
  """'step 20/600 (3%) | loss 5.1234 | ce 5.1000 | lr 1.20e-03 | 5.3k tok/s | ETA 1m23s'."""
  parts = [f'step {step}/{total} ({100 * step // max(total, 1)}%)']
  for key, label in (('loss', 'loss'), ('cross_entropy', 'ce'), ('aux_loss', 'aux'), ('grad_norm', 'gnorm')):
    if key in scalars:
      parts.append(f'{label} {scalars[key]:.4f}')
  if 'learning_rate' in scalars:
    parts.append(f'lr {scalars["learning_rate"]:.2e}')
  if 'perf/tokens_per_sec' in scalars:
    parts.append(f'{scalars["perf/tokens_per_sec"] / 1e3:.1f}k tok/s')
  if eta_s is not None:
    parts.append(f'ETA {format_duration(eta_s)}')
  return ' | '.join(parts)


def read_metrics(workdir: str, kind: str | None = None) -> list[dict[str, Any]]:
  """Records of metrics.jsonl sorted by step, the last one winning for a repeated (kind, step)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  latest: dict[tuple[str, int], dict[str, Any]] = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        record = json.loads(line)
        latest[(record.get('kind', 'train'), record['step'])] = record
  records = [r for (k, _), r in latest.items() if kind is None or k == kind]
  return sorted(records, key=lambda r: (r['step'], r.get('kind', 'train')))


EVAL_LABELS = (('eval/loss', 'loss'), ('eval/cross_entropy', 'ce'), ('eval/perplexity', 'ppl'),
               ('eval/accuracy', 'acc'), ('eval/moe/dropped_fraction', 'dropped'))


def eval_line(step: int, metrics: Mapping[str, Any]) -> str:
  """'eval at step 200: loss 4.1267 | ce 4.1023 | ppl 60.47 | acc 0.2710 | dropped 0.0012 | 32768 tokens'; other
  scalars follow under their last name part."""
  values = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
  parts = []
  for key, label in EVAL_LABELS:
    if key in values:
      value = values.pop(key)
      parts.append(f'{label} {value:.2f}' if label == 'ppl' and value < 1e6 else
                   f'{label} {value:.3e}' if label == 'ppl' else f'{label} {value:.4f}')
  if 'eval/num_tokens' in values:
    parts.append(f'{values.pop("eval/num_tokens"):.0f} tokens')
  parts += [f'{k.split("/", 1)[-1]} {v:.4f}' for k, v in sorted(values.items())]
  return f'eval at step {step}: ' + ' | '.join(parts)


class MetricsWriter:
  """Writes train/eval metrics of logged steps to the console, TensorBoard and metrics.jsonl."""

  def __init__(self, workdir: str, total_steps: int):
    self.total_steps = total_steps
    self.primary = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if self.primary:
      self._tb = EventWriter(os.path.join(workdir, 'tensorboard'))
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')  # pylint: disable=consider-using-with

  def _write(self, kind: str, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.primary:
      return
    record = {'kind': kind, 'step': int(step), 'time': time.time()}
    record.update({k: to_json_value(v) for k, v in sorted(metrics.items())})
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    self._tb.scalars(flatten_arrays({tensorboard_name(kind, k): v for k, v in metrics.items()}), step)

  def write_train(self, step: int, metrics: Mapping[str, Any], eta_s: float | None = None) -> None:
    """metrics: host values (floats / numpy arrays) of train step `step` (1-based, after the update)."""
    self._write('train', step, metrics)
    scalars = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
    logging.info('%s', progress_line(step, self.total_steps, scalars, eta_s))

  def write_eval(self, step: int, metrics: Mapping[str, Any]) -> None:
    self._write('eval', step, metrics)
    logging.info('%s', eval_line(step, metrics))

  def write_tasks(self, step: int, scalars: Mapping[str, float]) -> None:
    """Zero/few-shot task scores {'tasks/<task>/<metric>': value} of step `step` (kind 'tasks' in the JSONL)."""
    self._write('tasks', step, scalars)
    logging.info('tasks at step %d: %s', step, ' | '.join(f'{k[len("tasks/"):]} {v:.4f}' for k, v in
                                                           sorted(scalars.items())))

  def write_grad_stats(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Gradient-flow statistics 'grad/...' of update `step` (kind 'grad_stats'; training/grad_stats.py)."""
    self._write('grad_stats', step, metrics)
    parts = [f'{k[len("grad/"):-len("/rms")]} {float(v):.2e}' for k, v in sorted(metrics.items())
             if k.endswith('/rms') and np.ndim(v) == 0 and k.count('/') == 2]
    logging.info('gradient per parameter (rms) at step %d: %s', step, ' | '.join(parts))

  def write_text(self, tag: str, text: str) -> None:
    """A text summary (e.g. the resolved config) at step 0."""
    if self.primary:
      self._tb.text(tag, text, 0)

  def close(self) -> None:
    if self.primary:
      self._jsonl.close()
      self._tb.close()
