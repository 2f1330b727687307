"""The MoE speedup factor (samoe_jax/analysis/frontier.py, speedup.py): frontier, interpolation, bounds, seeds,
task metrics, the k-schedule compute and the CLI on synthetic workdirs (no JAX compilation)."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import subprocess
import sys
from typing import Any

import ml_collections
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from samoe_jax.models import accounting  # noqa: E402
from samoe_jax.analysis import frontier as F  # noqa: E402
from samoe_jax.analysis import speedup  # noqa: E402

A, B = 6.0, 0.2   # the synthetic dense law t = A - B log F


def load_config(name: str) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location(f'configs_{name}', ROOT / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def tiny_config(**overrides: Any) -> ml_collections.ConfigDict:
  c = load_config('test_tiny')
  c.update_from_flattened_dict(overrides)
  return c


def dense_config(d_model: int, **overrides: Any) -> ml_collections.ConfigDict:
  return tiny_config(**{'model.layer_plan': 'none', 'model.d_model': d_model, 'model.d_ff': 2 * d_model,
                        **overrides})


def write_workdir(path: pathlib.Path, config: ml_collections.ConfigDict, ce_by_step: dict[int, float] | None,
                  tasks_by_step: dict[int, dict[str, float]] | None = None,
                  summary: dict[int, dict[str, dict[str, float]]] | None = None) -> str:
  """A workdir as the trainer leaves it: config.json and metrics.jsonl (train, eval and tasks records)."""
  path.mkdir(parents=True)
  (path / 'config.json').write_text(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
  lines = []
  for step, ce in sorted((ce_by_step or {}).items()):
    lines.append({'kind': 'train', 'step': step, 'time': 0.0, 'loss': ce + 0.1, 'cross_entropy': ce + 0.1})
    if ce_by_step is not None:
      lines.append({'kind': 'eval', 'step': step, 'time': 0.0, 'eval/loss': ce + 0.01, 'eval/cross_entropy': ce,
                    'eval/perplexity': math.exp(ce), 'eval/accuracy': 0.1, 'eval/num_tokens': 64.0})
  for step, scalars in sorted((tasks_by_step or {}).items()):
    lines.append({'kind': 'tasks', 'step': step, 'time': 0.0, **scalars})
  if ce_by_step is None:   # a run trained without validation: train records only
    lines = [{'kind': 'train', 'step': s, 'time': 0.0, 'loss': 5.0} for s in (1, 2)]
  (path / 'metrics.jsonl').write_text(''.join(json.dumps(line) + '\n' for line in lines))
  if summary is not None:
    (path / 'eval').mkdir()
    (path / 'eval' / 'summary.json').write_text(json.dumps({str(s): v for s, v in summary.items()}))
  return str(path)


def law_curve(config: ml_collections.ConfigDict, steps: range, factor: float = 1.0, a: float = A,
              b: float = B) -> dict[int, float]:
  """t(step) = a - b log(factor * compute(step)): a run `factor` times as compute-efficient as the law."""
  per_step = accounting.flops_per_step(config)['train']
  return {s: a - b * math.log(factor * s * per_step) for s in steps}


# ---------------------------------------------------------------------------------------- frontier and speedup
def test_exact_law_gives_the_compute_factor_at_every_step():
  compute = np.logspace(12, 16, 30)
  metric = A - B * np.log(compute)
  dominated_F = compute[::3] * 1.5   # a worse dense size: same metric at 1.5x the compute, never on the frontier
  frontier = F.pareto_frontier(np.concatenate([compute, dominated_F]),
                               np.concatenate([metric, A - B * np.log(compute[::3])]))
  np.testing.assert_allclose(frontier.compute, compute)
  for k in (1.0, 1.7, 3.0, 0.5):
    for f_run in np.logspace(12.5, 15.0, 7):
      r = F.speedup_at(frontier, A - B * math.log(k * f_run), f_run)
      assert r['in_range'] and r['bound'] is None
      assert r['speedup'] == pytest.approx(k, rel=1e-9)
      assert r['dense_compute'] == pytest.approx(k * f_run, rel=1e-9)


def test_noisy_dense_curves_give_a_strictly_monotone_frontier():
  rng = np.random.default_rng(0)
  compute = np.sort(rng.uniform(1e12, 1e16, 200))
  metric = A - B * np.log(compute) + rng.normal(0, 0.3, 200)   # far from monotone
  compute[50] = compute[49]                                        # a tie in compute
  frontier = F.pareto_frontier(compute, metric)
  assert len(frontier.compute) >= 2
  assert np.all(np.diff(frontier.compute) > 0) and np.all(np.diff(frontier.metric) < 0)
  running_min = np.minimum.accumulate(metric[np.lexsort((metric, compute))])
  assert frontier.metric[-1] == running_min[-1] == metric.min()
  for f, t in zip(compute, metric):   # every point is on the frontier or beaten at <= compute
    on = np.any((frontier.compute == f) & (frontier.metric == t))
    assert on or np.any((frontier.compute <= f) & (frontier.metric <= t))
  # c_dense is monotone in t: better metric, more compute
  ts = np.linspace(frontier.metric[-1], frontier.metric[0], 50)
  assert np.all(np.diff([frontier.dense_compute(t) for t in ts]) <= 0)


def test_out_of_range_bounds_on_both_sides():
  frontier = F.pareto_frontier([1e12, 1e13, 1e14], [5.0, 4.0, 3.0])
  better = F.speedup_at(frontier, 2.5, 1e13)
  assert better == {'speedup': None, 'bound': '>=', 'bound_value': pytest.approx(10.0), 'dense_compute': None,
                    'in_range': False}
  worse = F.speedup_at(frontier, 5.5, 1e13)
  assert worse['speedup'] is None and worse['bound'] == '<=' and worse['bound_value'] == pytest.approx(0.1)
  assert F.format_speedup(better) == 'outside the dense range (>= 10.0x)'
  assert F.format_speedup(worse) == 'outside the dense range (<= 0.100x)'
  assert F.format_speedup(F.speedup_at(frontier, 4.0, 1e12)) == '10.0x'
  edge = F.speedup_at(frontier, 3.0, 1e13)   # exactly at the best dense point: in range
  assert edge['speedup'] == pytest.approx(10.0)
  mid = F.speedup_at(frontier, 4.5, 1e12)     # halfway in t: log F halfway between 1e12 and 1e13
  assert mid['speedup'] == pytest.approx(math.sqrt(10.0))


def test_fewer_than_two_frontier_points_is_an_error():
  with pytest.raises(ValueError, match='at least 2'):
    F.pareto_frontier([1e12, 1e13], [3.0, 3.5])   # the larger point is worse: one frontier point
  with pytest.raises(ValueError, match='at least 2'):
    F.pareto_frontier([0.0, 1e13], [5.0, 3.0])    # step 0 (no compute) does not count


def test_higher_is_better_and_perplexity_scales():
  compute = np.logspace(12, 15, 10)
  acc = 0.1 + 0.02 * np.log(compute)
  frontier = F.pareto_frontier(compute, acc, lower_is_better=False)
  assert np.all(np.diff(frontier.metric) > 0)
  assert F.speedup_at(frontier, 0.1 + 0.02 * math.log(2.5 * 1e13), 1e13)['speedup'] == pytest.approx(2.5)
  assert F.speedup_at(frontier, 0.99, 1e13)['bound'] == '>='
  assert F.speedup_at(frontier, 0.01, 1e13)['bound_value'] == pytest.approx(1e12 / 1e13)
  ppl = np.exp(A - B * np.log(compute))   # perplexity is interpolated in log-perplexity: exact again
  frontier = F.pareto_frontier(compute, ppl, scale=F.metric_scale('eval/perplexity'))
  assert F.speedup_at(frontier, math.exp(A - B * math.log(3 * 1e13)), 1e13)['speedup'] == pytest.approx(3.0)
  assert F.metric_direction('eval/cross_entropy') is True and F.metric_direction('tasks/piqa/acc_norm') is False
  assert F.metric_direction('eval/num_tokens') is None


def test_average_curves_at_common_steps():
  steps, mean, std = F.average_curves([{1: 1.0, 2: 2.0, 3: 3.0}, {2: 4.0, 3: 5.0, 4: 9.0}])
  assert steps.tolist() == [2, 3] and mean.tolist() == [3.0, 4.0]
  np.testing.assert_allclose(std, [math.sqrt(2.0)] * 2)
  assert F.average_curves([{1: 2.0}])[2].tolist() == [0.0]


def test_k_schedule_compute_is_summed_over_the_updates():
  c = load_config('tiny_smoe_dropout')
  c.train.steps = 10
  flops = speedup.cumulative_train_flops(c, [0, 1, 5, 10, 12])
  ks = [8 + round(8 * min(s, 10) / 10) for s in range(12)]   # linear_increase 8 -> 16 (k held at 16 after step 10)
  def at_k(k: int) -> float:
    d = ml_collections.ConfigDict(c.to_dict())
    d.moe.top_k = k
    return accounting.flops_per_step(d)['train']
  expected = [sum(at_k(k) for k in ks[:s]) for s in (0, 1, 5, 10, 12)]
  np.testing.assert_allclose(flops, expected, rtol=1e-12)
  assert at_k(8) * 10 < flops[3] < at_k(16) * 10
  dense = dense_config(32)
  assert speedup.cumulative_train_flops(dense, [3]).tolist() == [3 * accounting.flops_per_step(dense)['train']]


# -------------------------------------------------------------------------------------- workdirs, seeds, tasks
def dense_family(root: pathlib.Path, seeds: int = 1) -> list[str]:
  """Dense sizes d_model 16, 32, 64 on the exact law, each over steps 10..100 (seeds +-0.01 around it)."""
  paths = []
  for d in (16, 32, 64):
    for seed in range(seeds):
      c = dense_config(d, **{'train.seed': seed, 'data.shuffle_seed': seed})
      offset = 0.01 * (2 * seed - (seeds - 1))   # symmetric around the law: the mean is on it
      curve = {s: v + offset for s, v in law_curve(c, range(10, 101, 10)).items()}
      paths.append(write_workdir(root / f'dense_d{d}_seed{seed}', c, curve))
  return paths


def test_shifted_run_gives_speedup_k_and_seeds_are_grouped(tmp_path):
  dense = dense_family(tmp_path, seeds=2)
  runs = []
  for seed in (0, 1):
    c = tiny_config(**{'train.seed': seed, 'data.shuffle_seed': 10 + seed})
    curve = law_curve(c, range(10, 101, 10), factor=2.0)
    curve = {s: v + (0.004 if seed else -0.004) for s, v in curve.items()}
    curve[110 + seed] = 0.0                       # a step only one seed evaluated: dropped by the averaging
    runs.append(write_workdir(tmp_path / f'samoe-s{seed}', c, curve))
  report = speedup.speedup_analysis(dense, runs, None)
  assert set(report['groups']) == {'dense_d16', 'dense_d32', 'dense_d64', 'samoe'}
  assert report['groups']['samoe']['n_seeds'] == 2 and report['groups']['samoe']['seeds'] == [[0, 10], [1, 11]]
  block = report['metrics']['eval/cross_entropy']
  run = block['runs']['samoe']
  assert [p['step'] for p in run['points']] == list(range(10, 101, 10))
  std = run['points'][0]['metric_std']
  assert std == pytest.approx(0.008 / math.sqrt(2))
  in_range = [p for p in run['points'] if p['in_range']]
  assert len(in_range) >= 5
  for p in in_range:
    assert p['speedup'] == pytest.approx(2.0, rel=1e-6)
  per_step = accounting.flops_per_step(tiny_config())['train']
  assert run['final']['compute'] == pytest.approx(100 * per_step)
  assert run['final']['tokens'] == 100 * 4 * 16
  for p in run['points']:
    if not p['in_range']:   # only possible beyond the largest dense model's best point
      assert p['bound'] == '>=' and p['bound_value'] == pytest.approx(block['frontier'][-1]['compute'] / p['compute'])
  assert report['groups']['dense_d16']['n_seeds'] == 2
  assert block['dense']['dense_d16'][0]['metric'] == pytest.approx(law_curve(dense_config(16), [10])[10])


def test_task_metrics_higher_is_better_and_summary_json(tmp_path):
  def acc(c: ml_collections.ConfigDict, steps: Any, factor: float = 1.0) -> dict[int, float]:
    per_step = accounting.flops_per_step(c)['train']
    return {s: 0.02 * math.log(factor * s * per_step) - 0.4 for s in steps}
  dense = []
  for d in (16, 32, 64):
    c = dense_config(d)
    tasks = {s: {'tasks/piqa/acc': v, 'tasks/piqa/num_docs_like': 3.0} for s, v in acc(c, (50, 100)).items()}
    dense.append(write_workdir(tmp_path / f'dense{d}', c, law_curve(c, range(10, 101, 10)), tasks))
  c = tiny_config()
  summary = {s: {'piqa': {'acc': v}} for s, v in acc(c, (50, 100), factor=1.5).items()}
  stale = {100: {'tasks/piqa/acc': 0.0}}   # the trainer's value at step 100, overridden by summary.json
  run = write_workdir(tmp_path / 'moe', c, law_curve(c, range(10, 101, 10), factor=2.0), stale, summary)
  report = speedup.speedup_analysis(dense, [run], None)
  assert report['task_metrics'] == ['tasks/piqa/acc']
  block = report['metrics']['tasks/piqa/acc']
  assert block['lower_is_better'] is False
  assert block['runs']['moe']['final']['speedup'] == pytest.approx(1.5, rel=1e-6)
  assert speedup.speedup_analysis(dense, [run], None, tasks='none')['task_metrics'] == []
  with pytest.raises(ValueError, match='tasks/boolq/acc'):
    speedup.speedup_analysis(dense, [run], None, tasks='tasks/boolq/acc')


def test_errors_in_process(tmp_path):
  dense = dense_family(tmp_path)
  c = tiny_config()
  run = write_workdir(tmp_path / 'moe', c, law_curve(c, range(10, 101, 10)))
  with pytest.raises(ValueError, match='no config.json'):
    (tmp_path / 'empty').mkdir()
    speedup.speedup_analysis(dense, [str(tmp_path / 'empty')], None)
  other = write_workdir(tmp_path / 'gpt2', tiny_config(**{'data.vocabulary': 'gpt2'}), law_curve(c, range(10, 30, 10)))
  with pytest.raises(ValueError, match='data.vocabulary'):
    speedup.speedup_analysis(dense, [other], None)
  single = write_workdir(tmp_path / 'dense_once', dense_config(16), {100: 5.0})   # evaluated once
  with pytest.raises(ValueError, match='at least 2'):
    speedup.speedup_analysis([single], [run], None)
  with pytest.raises(ValueError, match='more than once'):
    speedup.speedup_analysis(dense + dense[:1], [run], None)


# ---------------------------------------------------------------------------------------------------------- CLI
def cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'samoe_jax.analysis.speedup', *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)


def test_cli_end_to_end(tmp_path):
  dense = dense_family(tmp_path / 'runs')
  c = tiny_config()
  tasks = {100: {'tasks/piqa/acc': 0.6}}
  for path in dense:   # a task metric every dense run and the run have: its own PNG and table row
    with open(pathlib.Path(path) / 'metrics.jsonl', 'a') as f:
      f.write(json.dumps({'kind': 'tasks', 'step': 50, 'time': 0.0, 'tasks/piqa/acc': 0.5}) + '\n')
      f.write(json.dumps({'kind': 'tasks', 'step': 100, 'time': 0.0, 'tasks/piqa/acc': 0.55}) + '\n')
  run = write_workdir(tmp_path / 'runs' / 'moe', c, law_curve(c, range(10, 101, 10), factor=2.0), tasks)
  out = tmp_path / 'out'
  result = cli(f'--dense={",".join(dense)}', f'--runs={run}', f'--out={out}')
  assert result.returncode == 0, result.stderr
  assert 'MoE speedup factor' in result.stdout
  report = json.loads((out / 'speedup.json').read_text())
  assert report['primary_metric'] == 'eval/cross_entropy' and report['task_metrics'] == ['tasks/piqa/acc']
  final = report['metrics']['eval/cross_entropy']['runs']['moe']['final']
  assert final['speedup'] == pytest.approx(2.0, rel=1e-6) and final['bound'] is None
  assert report['metrics']['tasks/piqa/acc']['runs']['moe']['final']['bound'] == '>='
  md = (out / 'speedup.md').read_text()
  assert '| moe | 1 | 100 |' in md and '| 2.00x |' in md
  assert 'tasks/piqa/acc' in md and 'outside the dense range (>=' in md
  for name in ('speedup.png', 'speedup_tasks_piqa_acc.png'):
    assert (out / name).read_bytes()[:4] == b'\x89PNG'


def test_cli_errors(tmp_path):
  dense = dense_family(tmp_path)
  no_eval = write_workdir(tmp_path / 'no_eval', tiny_config(), None)
  cases = [((f'--runs={no_eval}',), ['no_eval', 'no eval records', 'train.eval_every > 0', 'samoe_jax.evaluate']),
           ((f'--runs={tmp_path / "missing"}',), ['missing does not exist']),
           ((f'--runs={dense[0]}', '--metric=eval/bleu'), ["--metric='eval/bleu'", 'eval/cross_entropy']),]
  for args, needles in cases:
    result = cli(f'--dense={",".join(dense)}', f'--out={tmp_path / "out"}', *args)
    assert result.returncode == 1, result.stderr
    assert 'Traceback' not in result.stderr
    assert 'samoe_jax.analysis.speedup: ' in result.stderr
    for needle in needles:
      assert needle in result.stderr, (needle, result.stderr)
