"""Dropped assignments: the uniform-routing drop floor (samoe_jax/analysis/drop_floor.py), the suites' routing
groups chosen by it (experiments/suites.py), and the dropped fractions of the suite table, results.json and the
single-run report, checked on synthetic metrics.jsonl files (no training)."""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest

from samoe_jax.analysis import run_report
from samoe_jax.analysis import drop_floor
from samoe_jax.experiments import registry, results, runner, suites
from samoe_jax.layers.capacity import expert_capacity


# ---------------------------------------------------------------------------------------------- the floor
@pytest.mark.parametrize('num_experts, slots, expected', [(8, 20, 0.019), (16, 10, 0.049), (32, 5, 0.099)])
def test_floor_of_one_sequence_matches_the_review(num_experts, slots, expected):
  """One sequence of 128 tokens, top-1, capacity factor 1.25, 'deepspeed' capacity: the review's 1.9 / 4.9 / 9.9 %."""
  assert expert_capacity(128, num_experts, 1, 1.25, 4, 'deepspeed') == slots
  assert drop_floor.uniform_drop_fraction(128, num_experts, 1, slots) == pytest.approx(expected, abs=0.0005)


def test_floor_equals_exhaustive_enumeration():
  """T = 5 tokens, E = 3 experts, top-2, C = 3: the mean over all 3^5 equally likely choice sets, exactly."""
  t, e, k, c = 5, 3, 2, 3
  pairs = list(itertools.combinations(range(e), k))
  dropped = []
  for choice in itertools.product(pairs, repeat=t):
    load = np.bincount(np.array(choice).reshape(-1), minlength=e)
    dropped.append(np.maximum(load - c, 0).sum() / (t * k))
  assert drop_floor.uniform_drop_fraction(t, e, k, c) == pytest.approx(np.mean(dropped), rel=1e-12)


@pytest.mark.parametrize('tokens, num_experts, top_k, capacity', [(128, 16, 1, 10), (128, 32, 1, 5), (64, 8, 2, 20)])
def test_floor_matches_monte_carlo(tokens, num_experts, top_k, capacity):
  """20000 simulated groups (seed 0): the estimate is a mean of iid group fractions, so it lies within 4 standard
  errors of the exact floor (a 6e-5 chance of failing for a random seed; the seed is fixed)."""
  rng = np.random.default_rng(0)
  groups = 20000
  if top_k == 1:
    expert = rng.integers(num_experts, size=(groups, tokens, 1))
  else:   # k distinct experts per token, every k-set equally likely
    expert = np.argsort(rng.random((groups, tokens, num_experts)), axis=-1)[..., :top_k]
  flat = (np.arange(groups)[:, None, None] * num_experts + expert).reshape(-1)
  load = np.bincount(flat, minlength=groups * num_experts).reshape(groups, num_experts)
  fraction = np.maximum(load - capacity, 0).sum(-1) / (tokens * top_k)
  stderr = fraction.std(ddof=1) / np.sqrt(groups)
  exact = drop_floor.uniform_drop_fraction(tokens, num_experts, top_k, capacity)
  assert abs(fraction.mean() - exact) < 4 * stderr, (fraction.mean(), exact, stderr)


def test_floor_edge_cases():
  assert drop_floor.uniform_drop_fraction(16, 4, 1, 16) == 0.0      # every load fits
  assert drop_floor.uniform_drop_fraction(8, 1, 1, 3) == pytest.approx(5 / 8)   # one expert takes all 8
  with pytest.raises(ValueError, match='top_k'):
    drop_floor.uniform_drop_fraction(8, 2, 3, 4)


def test_config_floors_dense_dropless_and_pyramid():
  base = suites.GPU.config(suites.GPU.spec('prmoe'), 0)
  floors = drop_floor.config_drop_floors(base)
  assert sorted(floors) == [8, 16]
  assert floors[16] == pytest.approx(drop_floor.uniform_drop_fraction(1024, 16, 1, 80))
  ragged = base.copy_and_resolve_references()
  ragged.moe.dispatch = 'ragged'
  assert drop_floor.config_drop_floors(ragged) == {8: 0.0, 16: 0.0}
  assert drop_floor.config_drop_floors(suites.GPU.config(suites.GPU.spec('dense'), 0)) == {}


# -------------------------------------------------------------------------------------- the suites' groups
@pytest.mark.parametrize('name', ['cpu', 'gpu'])
def test_every_suite_config_has_a_floor_below_one_percent(name):
  """Every MoE config, at its own E, top-k, capacity factors, formula and group size, training and validation;
  for the gpu suite (E up to 32) 1024 tokens is also the smallest group that keeps every floor below 1 %."""
  suite = registry.get_suite(name)
  from samoe_jax.training.config_checks import config_errors  # pylint: disable=g-import-not-at-top
  configs = [suite.config(spec, 0) for spec in suite.configs]
  moe = [c for c in configs if drop_floor.config_drop_floors(c)]
  assert len(moe) == len(configs) - 4   # all but the 4 dense widths
  for spec, config in zip(suite.configs, configs):
    assert config_errors(config) == [], spec.name
    assert drop_floor.max_floor(config) < 0.01, spec.name
  assert {c.moe.group_size for c in configs} == {suites.GROUP_SIZE}
  if name == 'cpu':   # E <= 16 on blocks 1 and 3: the calibration's groups, 0.11 % at E = 16
    assert max(max(drop_floor.config_drop_floors(c).values()) for c in moe) == pytest.approx(
        drop_floor.uniform_drop_fraction(1024, 16, 1, 80))
    return
  assert max(max(drop_floor.config_drop_floors(c).values()) for c in moe) > 0.005   # E = 32 is near the bound
  assert drop_floor.smallest_group_size(moe) == suites.GROUP_SIZE   # and no smaller group would do
  smaller = drop_floor.whole_sequence_group_sizes(configs[0].data.seq_len, configs[0].data.batch_size)
  smaller = [g for g in smaller if g < suites.GROUP_SIZE]
  assert smaller and all(max(drop_floor.max_floor(c, g) for c in moe) >= 0.01 for g in smaller)


# ------------------------------------------------------------------------------------- report tables
def _write_metrics(workdir: str, records: list[dict]) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    for r in records:
      f.write(json.dumps(r) + '\n')


def _records(steps: int, train: float | None, valid: float | None, ce: float = 2.0) -> list[dict]:
  """An earlier log (values that must not be picked) and the last step's train and eval records."""
  early = [{'kind': 'train', 'step': steps // 2, 'loss': 3.0, 'moe/dropped_fraction': 0.5},
           {'kind': 'eval', 'step': steps // 2, 'eval/cross_entropy': 3.0, 'eval/moe/dropped_fraction': 0.5}]
  last_train = {'kind': 'train', 'step': steps, 'loss': ce}
  last_eval = {'kind': 'eval', 'step': steps, 'eval/cross_entropy': ce}
  if train is not None:
    last_train['moe/dropped_fraction'] = train
  if valid is not None:
    last_eval['eval/moe/dropped_fraction'] = valid
  return early + [last_train, last_eval]


TRAIN = {'moe_e4': [0.031, 0.017], 'samoe_p1': [0.0125, 0.0025]}
VALID = {'moe_e4': [0.004, 0.0016], 'samoe_p1': [0.0, 0.001]}


@pytest.fixture(scope='module')
def synthetic_runs(tmp_path_factory):
  """The smoke suite's dense, moe_e4 and samoe_p1 configs with 2 seeds, plus moe_e8 made dropless and logging
  no validation drops: runs with hand-written metrics.jsonl files."""
  out = str(tmp_path_factory.mktemp('drops'))
  specs = [suites.SMOKE.spec(n) for n in ('dense', 'moe_e4', 'samoe_p1')]
  ragged = suites.SMOKE.spec('moe_e8')
  ragged = suites.ConfigSpec(ragged.name, ragged.label, ragged.role, {**ragged.overrides, 'moe.dispatch': 'ragged'})
  runs = []
  for seed in (0, 1):
    for spec in specs + [ragged]:
      config = suites.SMOKE.config(spec, seed)
      run = runner.Run(spec, seed, os.path.join(out, suites.run_name(spec, seed)), config)
      train = TRAIN.get(spec.name, [None, None])[seed] if spec.role != 'dense' else None
      valid = VALID.get(spec.name, [None, None])[seed] if spec.role != 'dense' else None
      train = 0.0 if spec is ragged else train
      _write_metrics(run.workdir, _records(config.train.steps, train, valid))
      runs.append(run)
  return runs


def _row(lines: list[str], name: str) -> list[str]:
  row = next(line for line in lines if f'(`{name}`)' in line)
  return [c.strip() for c in row.strip('|').split('|')]


def test_suite_table_shows_the_mean_dropped_fractions(synthetic_runs):
  rows = results.collect(synthetic_runs)
  lines = results.table(rows, None)
  header = [c.strip() for c in lines[0].strip('|').split('|')]
  train_col, valid_col = header.index('dropped, train (last step)'), header.index('dropped, validation')
  for name in TRAIN:
    cells = _row(lines, name)
    assert cells[train_col] == f'{100 * np.mean(TRAIN[name]):.2f} %', cells
    assert cells[valid_col] == f'{100 * np.mean(VALID[name]):.2f} %', cells
  assert _row(lines, 'moe_e4')[train_col] == '2.40 %' and _row(lines, 'moe_e4')[valid_col] == '0.28 %'
  assert _row(lines, 'dense')[train_col] == _row(lines, 'dense')[valid_col] == '—'
  assert _row(lines, 'moe_e8')[train_col] == _row(lines, 'moe_e8')[valid_col] == 'dropless'


def test_results_json_carries_the_dropped_fractions(synthetic_runs):
  rows = results.collect(synthetic_runs)
  configs = {c['name']: c for c in results.to_json(rows)}
  for name in TRAIN:
    assert configs[name]['train_dropped_fraction'] == TRAIN[name]
    assert configs[name]['eval_dropped_fraction'] == VALID[name]
    assert configs[name]['train_dropped_fraction_mean'] == pytest.approx(np.mean(TRAIN[name]))
    assert configs[name]['eval_dropped_fraction_mean'] == pytest.approx(np.mean(VALID[name]))
    assert configs[name]['drop_mode'] == 'capacity' and 0 < configs[name]['drop_floor_uniform'] < 1
  assert configs['dense']['drop_mode'] == 'dense' and configs['dense']['drop_floor_uniform'] is None
  assert configs['dense']['train_dropped_fraction_mean'] is None
  assert configs['moe_e8']['drop_mode'] == 'dropless' and configs['moe_e8']['drop_floor_uniform'] == 0.0


def test_not_logged_is_na():
  spec = suites.SMOKE.spec('moe_e4')
  result = results.ConfigResult(spec, [], {}, 0, [], [], 0)
  assert result.dropped_cell('train') == result.dropped_cell('eval') == 'n/a'


def test_single_run_report_shows_the_dropped_fractions(tmp_path):
  config = suites.SMOKE.config(suites.SMOKE.spec('moe_e4'), 0)
  steps = config.train.steps
  workdir = str(tmp_path)
  _write_metrics(workdir, _records(steps, 0.0234, 0.0056))
  with open(os.path.join(workdir, 'final_metrics.json'), 'w') as f:
    json.dump({'step': steps, 'eval/cross_entropy': 2.0, 'eval/moe/dropped_fraction': 0.0056}, f)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(config.to_dict(), f)
  text = open(run_report.write_report(workdir)).read()
  assert f'- dropped assignments, last logged train interval: 2.34 % (step {steps})' in text
  assert '- dropped assignments, final validation: 0.56 %' in text
  floor = drop_floor.config_drop_floors(config)[4]
  assert f'{100 * floor:.2f} % at E=4' in text
  dense = run_report.drop_lines({'eval/cross_entropy': 2.0}, {'step': 1, 'loss': 2.0}, {})
  ragged = run_report.drop_lines({}, {'step': 1, 'moe/dropped_fraction': 0.0}, {'moe': {'dispatch': 'ragged'}})
  assert dense == [] and ragged == ["- dropped assignments: none (dropless: moe.dispatch='ragged')"]
