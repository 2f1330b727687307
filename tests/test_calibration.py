"""The calibration suite's conditions, trend fit, configs and report (samoe_jax/experiments/calibration.py).

No training: the report is checked on a fake runs directory of metrics.jsonl files.
"""

import json
import math
import os

import numpy as np
import pytest

from samoe_jax.models import accounting
from samoe_jax.analysis.drop_floor import config_drop_floors
from samoe_jax.config.layer_plan import moe_layer_indices
from samoe_jax.experiments import calibration as cal
from samoe_jax.experiments.calibration_design import (CALIBRATION, CALIBRATION_EVERY_OTHER, DESIGN, DESIGN_EVERY_OTHER,
                                                      Design)
from samoe_jax.experiments import registry, suites


# ----------------------------------------------------------------------------------------------- conditions
def test_gap_fails_exactly_at_two_pooled_std_and_passes_just_above():
  # sample std 1 on both sides (three seeds x-1, x, x+1): pooled std 1, gap 2 = the line -> fail
  at_line = cal.gap('b', [0.0, 1.0, 2.0], 'w', [2.0, 3.0, 4.0])
  assert (at_line.gap, at_line.pooled, at_line.units, at_line.passed) == (2.0, 1.0, 2.0, False)
  above = cal.gap('b', [0.0, 1.0, 2.0], 'w', [2.001, 3.001, 4.001])
  assert above.passed and above.units == pytest.approx(2.001)


def test_gap_negative_and_one_seed_cases():
  worse = cal.gap('b', [3.0, 3.2], 'w', [1.0, 1.2])   # the 'better' config is worse: negative gap, fail
  assert worse.gap == pytest.approx(-2.0) and worse.units < 0 and not worse.passed
  one = cal.gap('b', [1.0], 'w', [2.0])                # no seed spread: no units, never a pass
  assert one.units is None and not one.passed and one.gap == 1.0
  empty = cal.gap('b', [], 'w', [2.0])
  assert math.isnan(empty.gap) and not empty.passed


def test_condition_pairs_cover_a_b_c():
  pairs = cal.condition_pairs(Design(d_model=64, wide=128, experts=(4, 8, 16)))
  assert pairs == {'a': [('dense_d128', 'dense')], 'b': [('moe_e8', 'moe_e4'), ('moe_e16', 'moe_e8')],
                   'c': [('moe_e16', 'dense')]}


# ------------------------------------------------------------------------------------------- trend and fit
def test_fit_crossing_recovers_a_known_crossing():
  tokens = np.geomspace(1e5, 3e6, 6)
  gaps = 0.01 * np.log(tokens) - 0.1            # reaches 0.08 at ln t = 18
  fit = cal.fit_crossing(tokens, gaps, 0.08)
  assert fit['status'] == 'crosses'
  assert fit['slope_per_e'] == pytest.approx(0.01) and fit['intercept'] == pytest.approx(-0.1)
  assert fit['crossing_tokens'] == pytest.approx(math.exp(18.0), rel=1e-6)


def test_fit_crossing_passes_no_crossing_and_too_few():
  tokens = [1e5, 1e6, 2e6]
  assert cal.fit_crossing(tokens, [0.1, 0.2, 0.3], 0.25)['status'] == 'passes'
  falling = cal.fit_crossing(tokens, [0.1, 0.05, 0.0], 0.2)
  assert falling['status'] == 'no crossing' and falling['crossing_tokens'] is None
  assert cal.fit_crossing([1e6], [0.1], 0.2)['status'] == 'too few points'


def test_gap_curve_uses_steps_every_seed_reached():
  better = [{100: 4.0, 200: 3.0}, {100: 4.2, 200: 3.2}]
  worse = [{100: 4.5, 200: 3.6}, {100: 4.5, 200: 3.4, 300: 3.3}]
  curve = cal.gap_curve(better, worse, tokens_per_step=10)
  assert [p['tokens'] for p in curve] == [1000, 2000]
  assert [p['gap'] for p in curve] == pytest.approx([0.4, 0.4])


# -------------------------------------------------------------------------------------------- the configs
def _configs(suite=CALIBRATION):
  return {spec.name: suite.config(spec, 0, '/corpus', '') for spec in suite.configs}


def test_registered_and_equal_tokens():
  assert registry.get_suite('calibration') is CALIBRATION and 'calibration' in suites.SUITES
  configs = _configs()
  assert set(configs) == {'dense', 'dense_d128', 'moe_e4', 'moe_e8', 'moe_e16'}
  tokens = {c.data.batch_size * c.data.seq_len * c.train.steps for c in configs.values()}
  assert tokens == {DESIGN.tokens}
  assert all(c.data.vocabulary == '/corpus/sp1k.model' and c.model.vocab_size >= 1024 for c in configs.values())
  for c in configs.values():   # the final validation covers >= 64k tokens
    assert c.train.eval_batches * c.data.batch_size * c.data.seq_len >= 65536


def test_moe_active_params_equal_the_base_dense_model_but_the_router():
  configs = _configs()
  dense = accounting.param_counts(configs['dense'])
  for name in ('moe_e4', 'moe_e8', 'moe_e16'):
    moe = accounting.param_counts(configs[name])
    assert moe['num_moe_layers'] == DESIGN.num_layers
    assert moe['active_per_token'] - moe['routers'] == dense['active_per_token']
    assert moe['total'] > dense['total']


def test_every_other_design_differs_only_in_moe_placement():
  """calibration_every_other: the same dense runs; each MoE on blocks 1 and 3 (one pool entry per MoE layer),
  active parameters per token those of the base dense model but the routers."""
  assert registry.get_suite('calibration_every_other') is CALIBRATION_EVERY_OTHER
  assert 'calibration_every_other' in suites.SUITES
  base, every_other = _configs(), _configs(CALIBRATION_EVERY_OTHER)
  assert set(base) == set(every_other)
  for name in ('dense', 'dense_d128'):
    assert accounting.param_counts(every_other[name]) == accounting.param_counts(base[name])
  dense = accounting.param_counts(base['dense'])
  for name in ('moe_e4', 'moe_e8', 'moe_e16'):
    c = every_other[name]
    assert moe_layer_indices(c.model) == [1, 3] and c.pool.size == 2 and c.pool.mixing == 'fixed'
    moe = accounting.param_counts(c)
    assert moe['num_moe_layers'] == 2 and moe['active_per_token'] - moe['routers'] == dense['active_per_token']
    assert c.moe.num_experts == int(name[len('moe_e'):])


def test_drop_floor_below_one_percent():
  for name, c in _configs().items():
    if name.startswith('moe'):
      for train in (True, False):
        assert max(config_drop_floors(c, train=train).values()) < 0.01, (name, train)


# ------------------------------------------------------------------------------------------------- report
def _fake_runs(out_dir: str, seeds: int, missing: str) -> None:
  """metrics.jsonl with 5 validations per run: dense_d128 and moe_e16 clearly better, E=4/8 tied."""
  suite, steps = CALIBRATION, DESIGN.steps
  offset = {'dense': 0.0, 'dense_d128': -0.3, 'moe_e4': -0.05, 'moe_e8': -0.05, 'moe_e16': -0.2}
  for spec in suite.configs:
    for seed in range(seeds):
      workdir = os.path.join(out_dir, 'runs', f'{spec.name}_seed{seed}')
      os.makedirs(os.path.join(workdir, 'checkpoints', str(steps)))
      with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
        for step in range(steps // 5, steps + 1, steps // 5):
          if workdir.endswith(missing) and step == steps:
            break
          ce = 4.0 - 0.2 * math.log(step) + offset[spec.name] * step / steps + 0.01 * seed
          f.write(json.dumps({'kind': 'eval', 'step': step, 'eval/cross_entropy': ce}) + '\n')
      if not workdir.endswith(missing):
        with open(os.path.join(workdir, 'final_metrics.json'), 'w') as f:
          json.dump({'step': steps}, f)


def test_report_from_a_fake_runs_directory(tmp_path):
  _fake_runs(str(tmp_path), seeds=3, missing='moe_e8_seed2')
  bench = tmp_path / 'bench.json'
  bench.write_text(json.dumps([{'config': 'b32:dense', 'tokens_per_step': 4096, 'step_s': 0.25,
                                'tokens_per_s': 16384.0, 'achieved_flops_per_s': 29e9, 'matmul_flops_per_s': 150e9,
                                'ratio_to_matmul': 29 / 150}]))
  path = cal.write_report(str(tmp_path), command='calibration --out=X', bench_json=str(bench))
  out = tmp_path / 'report'
  assert path == str(out / 'calibration.md') and (out / 'calibration_gaps.png').stat().st_size > 0
  analysis = json.loads((out / 'calibration.json').read_text())
  cond = analysis['conditions']
  assert cond['a']['passed'] and cond['c']['passed'] and not cond['b']['passed']
  assert analysis['missing_runs'] == ['moe_e8_seed2'] and analysis['runs_finished'] == 14
  assert analysis['configs']['moe_e8']['seeds'] == 2
  assert cond['a']['pairs'][0]['fit']['status'] == 'passes'
  assert [p['tokens'] for p in cond['a']['pairs'][0]['curve']] == [
      s * DESIGN.batch * DESIGN.seq_len for s in range(DESIGN.steps // 5, DESIGN.steps + 1, DESIGN.steps // 5)]
  text = (out / 'calibration.md').read_text()
  assert '(a) capacity' in text and '**FAIL**' in text and 'moe_e8_seed2' in text
  assert '| b32:dense | 4096 | 250 ms | 16384 | 29.0 | 150 | 0.19 |' in text


def test_fit_crossing_far_away_is_not_a_number():
  fit = cal.fit_crossing([1e5, 1e6, 1e7], [0.0, 1e-12, 2e-12], 0.5)
  assert fit['status'] == 'beyond 1e12 tokens' and fit['crossing_tokens'] > cal.FAR_TOKENS


def test_dropped_by_quarter(tmp_path):
  for seed, base in ((0, 0.4), (1, 0.2)):
    workdir = tmp_path / f'r{seed}'
    workdir.mkdir()
    with open(workdir / 'metrics.jsonl', 'w') as f:
      for step in range(10, 101, 10):
        f.write(json.dumps({'step': step, 'moe/dropped_fraction': base if step <= 60 else 0.0}) + '\n')
  quarters = cal.dropped_by_quarter([str(tmp_path / 'r0'), str(tmp_path / 'r1')], steps=100)
  assert quarters == pytest.approx([0.3, 0.3, 0.15, 0.0])   # quarters: steps 10-20, 30-50, 60-70, 80-100


@pytest.mark.parametrize('first', ['calibration', 'cpu_comparison', 'suites'])
def test_any_suite_module_imports_first_and_registers_every_suite(first):
  """calibration, calibration_design and cpu_comparison import one another's names at module level: every import
  order must work."""
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  code = (f'from samoe_jax.experiments import {first}\n'
          'from samoe_jax.experiments import calibration, registry\n'
          'print(sorted(registry.REGISTRY), sorted(calibration.DESIGNS))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, timeout=120,
                       env=dict(os.environ, JAX_PLATFORMS='cpu')).stdout
  assert "'cpu'" in out and "'calibration_every_other'" in out and "'h100'" in out, out


def test_cpu_suite_is_the_every_other_design_with_the_comparison_configs():
  cpu, design = cal.DESIGNS['cpu']
  assert cpu is registry.get_suite('cpu') and design == DESIGN_EVERY_OTHER
  names = [s.name for s in cpu.configs]
  for pairs in cal.condition_pairs(design).values():   # the regime conditions are checkable on its runs
    assert all(a in names and b in names for a, b in pairs)
  base = CALIBRATION_EVERY_OTHER
  for name in ('dense', 'dense_d128', 'moe_e4', 'moe_e8', 'moe_e16'):   # the calibration's runs, bit for bit
    a, b = cpu.config(cpu.spec(name), 1).to_dict(), base.config(base.spec(name), 1).to_dict()
    a['train'].pop('grad_stats_every'), b['train'].pop('grad_stats_every')
    assert a == b, name
  samoe = {s.name: s for s in cpu.configs if s.role == 'samoe'}
  assert sorted(samoe) == ['samoe_p1', 'samoe_p2', 'samoe_p2_reach1']
  assert samoe['samoe_p2'].overrides['pool.target_reach'] == suites.MIXING_REACH
  assert samoe['samoe_p2_reach1'].overrides['pool.target_reach'] == 0.0
  assert cpu.seeds == 3 and cpu.steps == design.steps
