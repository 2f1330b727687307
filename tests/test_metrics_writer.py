"""TensorBoard tags of the metrics writer: train scalars under 'train/', metrics.jsonl keys unchanged."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from samoe_jax.training.metrics_writer import MetricsWriter, read_metrics, tensorboard_name


def _event_scalars(workdir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} of the scalar summaries in WORKDIR/tensorboard, read back with TensorFlow."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out: dict[str, list[tuple[int, float]]] = {}
  for path in glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == 'scalars':
          out.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
  return out


@pytest.mark.parametrize('kind, name, tag', [
    ('train', 'loss', 'train/loss'), ('train', 'learning_rate', 'train/learning_rate'),
    ('train', 'moe/layer1/expert_load', 'moe/layer1/expert_load'), ('train', 'perf/tokens_per_sec',
                                                                    'perf/tokens_per_sec'),
    ('eval', 'eval/loss', 'eval/loss'), ('tasks', 'tasks/piqa/acc', 'tasks/piqa/acc'),
    ('grad_stats', 'grad/embed/rms', 'grad/embed/rms')])
def test_tensorboard_name(kind, name, tag):
  assert tensorboard_name(kind, name) == tag


def test_train_scalars_under_train_in_tensorboard_only(tmp_path):
  workdir = str(tmp_path)
  writer = MetricsWriter(workdir, total_steps=4)
  writer.write_train(2, {'loss': 3.5, 'cross_entropy': 3.25, 'learning_rate': 1e-3,
                         'moe/layer1/expert_load': np.array([0.25, 0.75]), 'pool/mixing_weights': np.eye(2)})
  writer.write_eval(2, {'eval/loss': 3.75, 'eval/perplexity': 42.0})
  writer.write_tasks(2, {'tasks/piqa/acc': 0.5})
  writer.close()
  tags = _event_scalars(workdir)
  assert set(tags) == {'train/loss', 'train/cross_entropy', 'train/learning_rate', 'moe/layer1/expert_load/0',
                       'moe/layer1/expert_load/1', 'pool/mixing_weights/0/0', 'pool/mixing_weights/0/1',
                       'pool/mixing_weights/1/0', 'pool/mixing_weights/1/1', 'eval/loss', 'eval/perplexity',
                       'tasks/piqa/acc'}
  assert tags['train/loss'] == [(2, 3.5)] and tags['train/cross_entropy'] == [(2, 3.25)]
  assert tags['moe/layer1/expert_load/1'] == [(2, 0.75)] and tags['pool/mixing_weights/1/0'] == [(2, 0.0)]
  assert tags['eval/perplexity'] == [(2, 42.0)] and tags['tasks/piqa/acc'] == [(2, 0.5)]
  train, = read_metrics(workdir, 'train')   # the JSON keys are the metric names, never the TensorBoard tags
  assert {k for k in train if k not in ('kind', 'step', 'time')} == {
      'loss', 'cross_entropy', 'learning_rate', 'moe/layer1/expert_load', 'pool/mixing_weights'}
  assert train['loss'] == 3.5 and train['moe/layer1/expert_load'] == [0.25, 0.75]
  assert read_metrics(workdir, 'eval')[0]['eval/loss'] == 3.75
