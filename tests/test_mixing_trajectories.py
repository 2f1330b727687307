"""Mixing trajectories in the run and suite reports (samoe_jax/analysis/mixing_trajectories.py): the values read
from metrics.jsonl records (logged per-layer scalars, or computed from the logged weights for older runs), the
final summary, the figure and the suite table rows."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from samoe_jax.analysis import run_report
from samoe_jax.analysis import mixing_trajectories as mt
from samoe_jax.experiments import results
from samoe_jax.experiments.suites import ConfigSpec

# two MoE layers (blocks 1 and 3), P = 2: block 1 moves from uniform to (0.9, 0.1), block 3 stays uniform
WEIGHTS = [[[0.5, 0.5], [0.5, 0.5]], [[0.7, 0.3], [0.5, 0.5]], [[0.9, 0.1], [0.5, 0.5]]]


def _h(w):
  return -sum(p * math.log(p) for p in w if p > 0)


def _records(with_scalars: bool):
  out = []
  for step, w in zip((10, 20, 30), WEIGHTS):
    r = {'kind': 'train', 'step': step, 'loss': 3.0, 'pool/mixing_weights': w,
         'moe/layer1/expert_load': [0.5, 0.5], 'moe/layer3/expert_load': [0.5, 0.5]}
    if with_scalars:   # logged values win over the recomputation: make them recognisably different
      r.update({'pool/layer1/mixing_entropy': 0.123, 'pool/layer1/mixing_max': 0.456,
                'pool/layer3/mixing_entropy': 0.5, 'pool/layer3/mixing_max': 0.5})
    out.append(r)
  return out


def test_trajectories_from_older_records_recompute_entropy_and_max():
  t = mt.trajectories(_records(with_scalars=False) + [{'kind': 'train', 'step': 40, 'loss': 1.0}])
  assert t['pool_size'] == 2 and t['steps'] == [10, 20, 30] and sorted(t['layers']) == [1, 3]
  np.testing.assert_allclose(t['layers'][1]['entropy'], [_h(w[0]) for w in WEIGHTS], rtol=1e-12)
  np.testing.assert_allclose(t['layers'][1]['max'], [0.5, 0.7, 0.9])
  np.testing.assert_allclose(t['layers'][3]['entropy'], [math.log(2)] * 3)
  summary = mt.final_summary(t)
  assert summary['entropy_fraction'] == pytest.approx((_h([0.9, 0.1]) + math.log(2)) / 2 / math.log(2))
  assert summary['max_weight_mean'] == pytest.approx(0.7) and summary['max_weight_largest'] == pytest.approx(0.9)


def test_logged_scalars_are_read_as_logged_and_fixed_mixing_has_none():
  t = mt.trajectories(_records(with_scalars=True))
  assert t['layers'][1]['entropy'] == [0.123] * 3 and t['layers'][1]['max'] == [0.456] * 3
  assert mt.trajectories([{'kind': 'train', 'step': 1, 'loss': 2.0}]) is None


def test_figure_and_run_report(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  with open(workdir / 'metrics.jsonl', 'w') as f:
    for r in _records(with_scalars=False):
      f.write(json.dumps(r) + '\n')
  path = run_report.write_report(str(workdir))
  assert os.path.getsize(workdir / 'mixing_trajectories.png') > 10_000
  assert '![mixing_trajectories.png](mixing_trajectories.png)' in open(path).read()
  # P = 1 (tied experts) or no learned mixing: no figure
  assert mt.plot_trajectories([('tied', {'pool_size': 1, 'steps': [1], 'layers': {}})], str(tmp_path / 'x.png')) is None


def test_suite_rows_give_the_mean_over_seeds():
  spec = ConfigSpec('samoe_p2', 'SaMoE P=2', 'samoe', {})
  seeds = [mt.trajectories(_records(False)), mt.trajectories(_records(False)[:2])]
  r = results.ConfigResult(spec, ['a', 'b'], {}, 0, [], [], 0)
  r.mixing_trajectories = seeds
  r.mixing = [mt.final_summary(t) for t in seeds]
  lines = results.mixing_lines([r])
  expected_entropy = np.mean([(_h([0.9, 0.1]) + math.log(2)) / 2, (_h([0.7, 0.3]) + math.log(2)) / 2]) / math.log(2)
  assert lines[2] == (f'| SaMoE P=2 (`samoe_p2`) | 2 | {expected_entropy:.3f} | {np.mean([0.7, 0.6]):.3f} | '
                      f'{np.mean([0.9, 0.7]):.3f} |')
  assert results.mixing_lines([results.ConfigResult(spec, [], {}, 0, [], [], 0)]) == []
