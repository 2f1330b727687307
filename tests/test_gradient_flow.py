"""samoe_jax.analysis.gradient_flow on synthetic workdirs: config.json from the real presets, metrics.jsonl with
grad_stats records of known numbers (no model, no JAX compilation)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from samoe_jax.analysis import gradient_flow as gf
from samoe_jax.config.layer_plan import moe_layer_indices
from samoe_jax.config.presets import tiny
from samoe_jax.config.pyramid import groups_of_config, set_pr_moe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UR = 10.0          # update_ratio = UR * rms everywhere
NORM = 100.0       # norm = NORM * rms everywhere


def attention_rms(b: int) -> float:
  return 1e-3 * (b + 1)


def ffn_rms(b: int) -> float:
  return 2e-3 * (b + 1)


def expert_rms(num_experts: int, b: int) -> float:
  """Every expert of MoE block b: 0.01 / E * (1 + b / 10)."""
  return 0.01 / num_experts * (1 + b / 10)


def pool_entry_rms(num_experts: int, j: int) -> float:
  """Shared-pool entry j: 0.02 / E * (j + 1)."""
  return 0.02 / num_experts * (j + 1)


def token_shares(num_experts: int) -> list[float]:
  total = num_experts * (num_experts + 1) / 2
  return [(e + 1) / total for e in range(num_experts)]


def _put(record: dict, part: str, rms: float | list, mult: float) -> None:
  if isinstance(rms, list):
    record[f'grad/{part}/rms'] = [x * mult for x in rms]
    record[f'grad/{part}/norm'] = [x * mult * NORM for x in rms]
    record[f'grad/{part}/update_ratio'] = [x * mult * UR for x in rms]
  else:
    record[f'grad/{part}/rms'] = rms * mult
    record[f'grad/{part}/norm'] = rms * mult * NORM
    record[f'grad/{part}/update_ratio'] = rms * mult * UR


def grad_record(config, step: int, mult: float) -> dict:
  """A grad_stats record in the trainer's format; every value scales with `mult`."""
  record = {'kind': 'grad_stats', 'step': step, 'time': 1000.0 + step}
  moe = moe_layer_indices(config.model)
  counts = [g.num_experts for g in groups_of_config(config) for _ in g.layers]
  _put(record, 'total', 5e-3, mult)
  _put(record, 'embedding', 4e-3, mult)
  _put(record, 'norms', 3e-3, mult)
  for b in range(config.model.num_layers):
    _put(record, f'block{b}/attention', attention_rms(b), mult)
    if b in moe:
      _put(record, f'block{b}/router', 5e-4, mult)
    else:
      _put(record, f'block{b}/ffn', ffn_rms(b), mult)
  standard = config.pool.mixing == 'fixed' and config.pool.size == len(moe)
  for i, b in enumerate(moe):
    e = counts[i]
    rms = expert_rms(e, b)
    _put(record, f'block{b}/experts', [rms] * e, mult)
    for m, factor in (('rms', 1.0), ('norm', NORM), ('update_ratio', UR)):
      record[f'grad/block{b}/experts/mean_{m}'] = rms * mult * factor
    shares = token_shares(e)
    record[f'grad/block{b}/experts/token_share'] = shares
    record[f'grad/block{b}/experts/norm'] = [2.0 * s * mult for s in shares]
  if moe:
    e, p = counts[0], config.pool.size
    entries = [expert_rms(e, moe[j]) for j in range(p)] if standard else [pool_entry_rms(e, j) for j in range(p)]
    for m, factor in (('rms', 1.0), ('norm', NORM), ('update_ratio', UR)):
      record[f'grad/pool/entry_{m}'] = [x * mult * factor for x in entries]
      record[f'grad/pool/{m}'] = [[x * mult * factor] * e for x in entries]
  if len(set(counts)) > 1:
    record['grad/pool_e16/entry_rms'] = [1e-4 * mult]
  if config.pool.mixing == 'learned' and moe:
    _put(record, 'mixing', 7e-3, mult)
    if step == 10:   # the trainer writes NaN while ||w|| = 0 (mixing logits before their first update)
      record['grad/mixing/update_ratio'] = math.nan
  return record


def make_run(root, name: str, config, steps=(10, 20, 30), mult: float = 1.0, seed: int = 0) -> str:
  """WORKDIR with config.json and metrics.jsonl (train + eval records and grad_stats records; the value at step
  s is mult * s / 10 times the base numbers)."""
  workdir = os.path.join(str(root), name)
  os.makedirs(workdir)
  config.train.seed = seed
  config.data.shuffle_seed = seed
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json())
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    for s in steps:
      f.write(json.dumps({'kind': 'train', 'step': s, 'time': 1.0, 'loss': 5.0, 'cross_entropy': 4.9}) + '\n')
      f.write(json.dumps(grad_record(config, s, mult * s / 10)) + '\n')
    f.write(json.dumps({'kind': 'eval', 'step': steps[-1], 'time': 2.0, 'eval/cross_entropy': 4.8}) + '\n')
  return workdir


def moe_config(num_experts: int = 8, top_k: int = 2):
  c = tiny('moe')
  c.moe.num_experts, c.moe.top_k = num_experts, top_k
  return c


def group(report: dict, label: str) -> dict:
  return next(g for g in report['groups'] if g['label'] == label)


def test_config_kind_and_label():
  assert gf.config_label(tiny('dense')) == 'dense'
  assert gf.config_label(moe_config(32)) == 'MoE E=32'
  assert gf.config_label(tiny('samoe')) == 'SaMoE P=2 E=8'
  assert gf.config_label(tiny('tied')) == 'tied E=8'
  manual = tiny('moe')
  manual.model.layer_plan, manual.pool.size, manual.pool.assignment = 'all', 2, 'block'
  assert (gf.config_kind(manual), gf.config_label(manual)) == ('manual', 'manual P=2 E=8')
  pr = tiny('moe')
  set_pr_moe(pr, '8,16')
  assert gf.config_label(pr) == 'PR-MoE E=8,16'
  widenet = tiny('tied')
  widenet.model.layer_plan, widenet.pool.share_router = 'all', True
  assert gf.config_label(widenet) == 'WideNet E=8'
  assert gf.disambiguate_labels(['MoE E=8', 'MoE E=8', 'dense'], ['a', 'b', 'c']) == [
      'MoE E=8 (a)', 'MoE E=8 (b)', 'dense']
  a, b, c = moe_config(), moe_config(), moe_config(top_k=1)
  b.train.seed, b.data.shuffle_seed = 3, 4
  assert gf.seed_group_key(a) == gf.seed_group_key(b) != gf.seed_group_key(c)


def test_seed_groups_default_step_and_means(tmp_path):
  s0 = make_run(tmp_path, 'moe_s0', moe_config(), mult=1.0, seed=0)
  s1 = make_run(tmp_path, 'moe_s1', moe_config(), steps=(10, 20), mult=1.5, seed=1)
  report = gf.build_report([s0, s1])
  assert report['step'] == 20 and report['step_source'] == gf.DEFAULT_STEP_SOURCE
  assert [g['label'] for g in report['groups']] == ['MoE E=8']
  g = report['groups'][0]
  assert g['num_seeds'] == 2 and g['steps_used'] == [20, 20] and g['seeds'] == [[0, 0], [1, 1]]
  # step 20: factor 2; seeds x1 and x1.5
  experts = 2 * (expert_rms(8, 1) + expert_rms(8, 3)) / 2
  rms = g['layer_types']['experts']['rms']
  assert rms['values'] == pytest.approx([experts, 1.5 * experts])
  assert rms['mean'] == pytest.approx(1.25 * experts)
  assert rms['std'] == pytest.approx(0.5 * experts / math.sqrt(2))
  assert g['layer_types']['experts']['update_ratio']['mean'] == pytest.approx(1.25 * experts * UR)
  attention = 2 * sum(attention_rms(b) for b in range(4)) / 4
  assert g['layer_types']['attention']['rms']['mean'] == pytest.approx(1.25 * attention)
  assert g['layer_types']['ffn']['rms']['mean'] == pytest.approx(1.25 * 2 * (ffn_rms(0) + ffn_rms(2)) / 2)
  assert g['layer_types']['pool']['rms']['mean'] == pytest.approx(1.25 * experts)   # standard MoE: entry = layer
  assert 'mixing' not in g['layer_types']
  assert g['moe_layers']['3']['mean_rms']['mean'] == pytest.approx(1.25 * 2 * expert_rms(8, 3))
  assert g['moe_layers']['1']['token_share']['mean'] == pytest.approx(token_shares(8))
  # the series: union of steps, mean over the runs that have a step
  assert g['series']['steps'] == [10, 20, 30]
  assert g['series']['rms']['experts'][0] == pytest.approx(1.25 * experts / 2)
  assert g['series']['rms']['experts'][2] == pytest.approx(3 * experts / 2)
  assert any(f'step {report["step"]} ({gf.DEFAULT_STEP_SOURCE})' in s for s in report['sentences'])


def test_step_and_window(tmp_path):
  run = make_run(tmp_path, 'moe', moe_config())
  experts = (expert_rms(8, 1) + expert_rms(8, 3)) / 2
  report = gf.build_report([run], step=30, window=2)
  assert report['runs'][0]['window_steps'] == [20, 30] and report['step_source'] == 'given (--step)'
  assert report['groups'][0]['layer_types']['experts']['rms']['mean'] == pytest.approx(2.5 * experts)
  report = gf.build_report([run], step=25, window=5)
  assert report['runs'][0]['step_used'] == 20 and report['runs'][0]['window_steps'] == [10, 20]
  assert report['groups'][0]['layer_types']['experts']['rms']['mean'] == pytest.approx(1.5 * experts)
  assert any('its last grad_stats record at or before step 25 is at step 20' in s for s in report['sentences'])
  assert any('only 2 grad_stats record(s) at or before step 25 (window 5)' in s for s in report['sentences'])


def test_comparisons_sentences_and_files(tmp_path):
  dense = make_run(tmp_path, 'dense', tiny('dense'))
  moe4 = make_run(tmp_path, 'moe4', moe_config(4))
  moe8a = make_run(tmp_path, 'moe8a', moe_config(8), seed=0)
  moe8b = make_run(tmp_path, 'moe8b', moe_config(8), mult=3.0, seed=1)
  moe32 = make_run(tmp_path, 'moe32', moe_config(32))
  samoe = make_run(tmp_path, 'samoe', tiny('samoe'))
  pr = tiny('moe')
  set_pr_moe(pr, '8,16')
  prmoe = make_run(tmp_path, 'prmoe', pr)
  out = str(tmp_path / 'out')
  report = gf.gradient_flow_analysis([dense, moe4, moe8a, moe8b, moe32, samoe, prmoe], out)
  assert report['step'] == 30
  labels = [g['label'] for g in report['groups']]
  assert labels == ['dense', 'MoE E=4', 'MoE E=8', 'MoE E=32', 'SaMoE P=2 E=8', 'PR-MoE E=8,16']
  # figure 2: expert rms against E (factor 3 at step 30), PR-MoE left out
  series = report['expert_vs_num_experts']['series']
  assert len(series) == 1 and [p['num_experts'] for p in series[0]['points']] == [4, 8, 32]
  layer = lambda e: 3 * (expert_rms(e, 1) + expert_rms(e, 3)) / 2
  by_e = series[0]['by_num_experts']
  assert by_e['4']['rms'] == pytest.approx(layer(4)) and by_e['32']['rms'] == pytest.approx(layer(32))
  assert by_e['8']['rms'] == pytest.approx(2 * layer(8))   # seeds x1 and x3
  assert series[0]['points'][1]['rms']['std'] == pytest.approx(2 * layer(8) / math.sqrt(2))
  dense_rms = 3 * (ffn_rms(0) + ffn_rms(1) + ffn_rms(2) + ffn_rms(3)) / 4
  assert report['expert_vs_num_experts']['dense_reference'][0]['rms']['mean'] == pytest.approx(dense_rms)
  text = '\n'.join(report['sentences'])
  assert (f'expert gradient per parameter falls from {gf.fmt(layer(4))} at E=4 to {gf.fmt(layer(32))} at E=32 '
          f'({gf.fmt(layer(4) / layer(32))}-fold)') in text
  assert f'{gf.fmt(layer(4) / dense_rms)}x at E=4, {gf.fmt(layer(32) / dense_rms)}x at E=32' in text
  # pool entries of SaMoE against the standard MoE's layer experts at E=8
  ratio = report['pool_vs_layer']['ratios']
  assert [r['label'] for r in ratio] == ['SaMoE P=2 E=8']
  pool = 3 * (pool_entry_rms(8, 0) + pool_entry_rms(8, 1)) / 2
  assert ratio[0]['pool_entry_rms'] == pytest.approx(pool) and ratio[0]['reference'] == 'MoE E=8'
  assert ratio[0]['rms_ratio'] == pytest.approx(pool / (2 * layer(8)))
  assert ratio[0]['update_ratio_ratio'] == pytest.approx(pool / (2 * layer(8)))
  assert ratio[0]['pool_vs_mixed_rms_ratio'] == pytest.approx(pool / layer(8))
  assert (f'SaMoE P=2 E=8 pool entries receive {gf.fmt(pool / (2 * layer(8)))}x the gradient per parameter of the '
          "standard MoE's layer experts") in text
  bars = report['pool_vs_layer']['bars']
  assert [b['item'] for b in bars if b['group'] == 'SaMoE P=2 E=8'] == ['pool 0', 'pool 1', 'block 1', 'block 3']
  assert {b['type'] for b in bars} == {'pool entry', 'layer experts', 'mixed experts'}
  samoe_group = group(report, 'SaMoE P=2 E=8')
  assert samoe_group['layer_types']['mixing']['rms']['mean'] == pytest.approx(3 * 7e-3)
  windowed = gf.build_report([samoe], step=20, window=2)['groups'][0]['layer_types']['mixing']
  assert windowed['rms']['mean'] == pytest.approx(1.5 * 7e-3)
  assert windowed['update_ratio']['mean'] == pytest.approx(2 * 7e-3 * UR)   # the NaN of step 10 left out
  assert gf.build_report([samoe], step=10)['groups'][0]['layer_types']['mixing']['update_ratio']['mean'] is None
  assert group(report, 'PR-MoE E=8,16')['pool']['pool_e16']['entry_rms']['mean'] == pytest.approx([3e-4])
  # token share vs gradient norm: norm = 2 * 3 * share in one-seed groups
  t = group(report, 'MoE E=4')['token_share_vs_grad']
  assert t['num_points'] == 8 and t['spearman'] == pytest.approx(1.0) and t['slope'] == pytest.approx(6.0)
  assert 'No dense group' not in text and 'No standard-MoE group' not in text
  # files
  names = set(os.listdir(out))
  assert names == {'gradient_flow.json', 'gradient_flow.md', *report['figures'].values()}
  assert all(os.path.getsize(os.path.join(out, f)) > 1000 for f in report['figures'].values())
  stored = json.load(open(os.path.join(out, 'gradient_flow.json')))
  assert stored['sentences'] == report['sentences'] and stored['figures'] == report['figures']
  md = open(os.path.join(out, 'gradient_flow.md')).read()
  assert '## SaMoE P=2 E=8' in md and '![token_share_vs_grad](token_share_vs_grad.png)' in md


def test_missing_comparisons_are_said(tmp_path):
  samoe = make_run(tmp_path, 'samoe', tiny('samoe'))
  report = gf.gradient_flow_analysis([samoe], str(tmp_path / 'out'))
  text = '\n'.join(report['sentences'])
  assert 'No standard-MoE group (' in text and 'No dense group' in text
  assert 'No standard-MoE group with E=8 to compare the pool entries of SaMoE P=2 E=8' in text
  report = gf.build_report([make_run(tmp_path, 'moe', moe_config())])
  text = '\n'.join(report['sentences'])
  assert 'a single expert count (E=8)' in text and 'No SaMoE' in text


def test_errors(tmp_path):
  with pytest.raises(ValueError, match='does not exist'):
    gf.build_report([str(tmp_path / 'nope')])
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(ValueError, match='config.json does not exist'):
    gf.build_report([str(tmp_path / 'empty')])
  run = make_run(tmp_path, 'moe', moe_config(), steps=(10, 20))
  with pytest.raises(ValueError, match='before the first grad_stats record'):
    gf.build_report([run], step=5)
  with pytest.raises(ValueError, match='--window=0'):
    gf.build_report([run], window=0)
  late = make_run(tmp_path, 'late', moe_config(), steps=(40, 50))
  with pytest.raises(ValueError, match='no step has a grad_stats record at or before it in every run'):
    gf.build_report([run, late])


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'samoe_jax.analysis.gradient_flow', *args], capture_output=True,
                        text=True, cwd=ROOT, timeout=120)


def test_cli(tmp_path):
  run = make_run(tmp_path, 'moe', moe_config())
  out = str(tmp_path / 'out')
  ok = _cli(f'--workdirs={run}', f'--out={out}', '--window=2')
  assert ok.returncode == 0, ok.stderr
  assert 'gradient_flow.md' in ok.stdout and os.path.exists(os.path.join(out, 'gradient_flow.json'))
  bare = str(tmp_path / 'bare')
  os.makedirs(bare)
  with open(os.path.join(bare, 'config.json'), 'w') as f:
    f.write(moe_config().to_json())
  with open(os.path.join(bare, 'metrics.jsonl'), 'w') as f:
    f.write(json.dumps({'kind': 'train', 'step': 10, 'time': 1.0, 'loss': 5.0}) + '\n')
  for args, messages in (([f'--workdirs={run},{bare}'], [f'{bare} has no grad_stats records',
                                                         'train with --config.train.grad_stats_every=N']),
                         ([f'--workdirs={run}', '--window=0'], ['--window=0'])):
    bad = _cli(*args, f'--out={out}')
    assert bad.returncode == 1
    assert bad.stderr.startswith('samoe_jax.analysis.gradient_flow: ') or (
        '\nsamoe_jax.analysis.gradient_flow: ' in bad.stderr), bad.stderr
    assert all(m in bad.stderr for m in messages) and 'Traceback' not in bad.stderr
