"""The MoE speedup factor of Artetxe et al. (2021, "Efficient Large Scale Language Modeling with Mixtures of
Experts", arXiv 2112.10684): how much less training compute a run needs than the dense family to reach the same
validation metric (docs/analysis.md).

  python -m samoe_jax.analysis.speedup --dense=runs/dense_s,runs/dense_m,runs/dense_l \
      --runs=runs/samoe_seed0,runs/samoe_seed1 --out=runs/speedup [--metric=eval/cross_entropy] \
      [--tasks=auto | none | tasks/piqa/acc,...]

speedup(t) = c_dense(t) / c_run(t), c_m(t) the training compute family m needs to reach metric t. The dense
frontier and the interpolation are in samoe_jax/analysis/frontier.py. Per workdir:

  compute   cumulative training model FLOPs after step s: s * accounting.flops_per_step(config)['train']
            (3 x forward matmul FLOPs, top-k active experts, no capacity padding, SaMoE mixing included). For
            SMoE-Dropout's k schedule (moe.smoe_dropout.kind != 'constant') the per-step FLOPs are summed exactly over
            k(0), ..., k(s-1) (the update that ends at step s runs with state.step = s-1), not taken at the mean
            k of accounting.k_schedule_summary. Evaluation, a distillation teacher's forward passes and the
            training of an init.from_workdir source run are not counted (a warning says so).
  metric    'eval' records of metrics.jsonl (eval/cross_entropy, eval/loss, eval/perplexity, eval/accuracy) and
            task metrics 'tasks/<task>/<metric>' from 'tasks' records and WORKDIR/eval/summary.json (the latter
            wins at a step both have). Lower is better for losses / perplexities, higher for acc, acc_norm,
            exact_match, accuracy. Step-0 records (no compute) are skipped.
  seeds     workdirs whose config.json differ only in train.seed, data.shuffle_seed and bookkeeping
            (train.log_every, checkpoint_every, keep_checkpoints, async_checkpoint) form one group: their curves
            are averaged at the steps all of them evaluated (std: sample std over the seeds, 0 for one seed).
            A group's label is the workdir basename without a seed suffix ('_seed1', '-s2'); repeats get ' #2'.
  data      every workdir must share data.task, data.vocabulary, data.tfds_name, data.text_key and
            data.eval_split (metrics on other data or in other token units are not comparable): ValueError
            otherwise. Differing data.seq_len or train.eval_batches only warn.

Writes OUTDIR/{speedup.json, speedup.md, speedup.png} and speedup_<task metric>.png per task metric.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from typing import Any, Sequence

import numpy as np
from absl import app, flags, logging

from samoe_jax import cli
from samoe_jax.analysis import frontier as frontier_lib
from samoe_jax.config.layer_plan import moe_layer_indices
from samoe_jax.config.sections import MoeSection
from samoe_jax.evaluation.checkpoints import run_config
from samoe_jax.layers.k_schedule import KSchedule
from samoe_jax.models import accounting
from samoe_jax.training.metrics_writer import read_metrics

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

CITATION = ('Artetxe et al. 2021, "Efficient Large Scale Language Modeling with Mixtures of Experts", '
            'arXiv 2112.10684')
SEED_KEYS = ('train.seed', 'data.shuffle_seed')
BOOKKEEPING_KEYS = ('train.log_every', 'train.checkpoint_every', 'train.keep_checkpoints', 'train.async_checkpoint')
DATA_KEYS = ('data.task', 'data.vocabulary', 'data.tfds_name', 'data.text_key', 'data.eval_split')
WARN_KEYS = ('data.seq_len', 'train.eval_batches')
SEED_SUFFIX = re.compile(r'(?:[_.-]?seed[_=-]?\d+|[_.-]s\d+)$', re.IGNORECASE)


# ---------------------------------------------------------------------------------------------- reading runs
@dataclasses.dataclass
class RunData:
  """One workdir: its config and curves {metric: {step: value}} (step >= 1)."""
  path: str
  config: Any
  curves: dict[str, dict[int, float]]
  has_eval: bool


def flat_config(config: Any) -> dict[str, Any]:
  """{'model.d_model': 32, ...}: the config's leaves under dotted keys."""
  out: dict[str, Any] = {}
  def walk(prefix: str, node: Any) -> None:
    for key, value in node.items():
      if isinstance(value, dict):
        walk(f'{prefix}{key}.', value)
      else:
        out[f'{prefix}{key}'] = value
  walk('', config.to_dict())
  return out


def _numeric(value: Any) -> float | None:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  return float(value) if math.isfinite(value) else None


def load_run(path: str) -> RunData:
  """Reads WORKDIR/config.json, metrics.jsonl ('eval' and 'tasks' records) and eval/summary.json."""
  if not os.path.isdir(path):
    raise ValueError(f'workdir {path} does not exist')
  if not os.path.isfile(os.path.join(path, 'config.json')):
    raise ValueError(f'{path} has no config.json: give workdirs written by samoe_jax.train')
  curves: dict[str, dict[int, float]] = {}
  try:
    config = run_config(path)
    evals = read_metrics(path, 'eval')
    for record in evals + read_metrics(path, 'tasks'):
      for key, value in record.items():
        if key.startswith(('eval/', 'tasks/')) and _numeric(value) is not None and record['step'] > 0:
          curves.setdefault(key, {})[int(record['step'])] = _numeric(value)
    summary = os.path.join(path, 'eval', 'summary.json')
    if os.path.isfile(summary):
      with open(summary) as f:
        by_step = json.load(f)
      for step, scores in by_step.items():   # {step: {task: {metric: value}}} (evaluation/outputs.py)
        for task, metrics in scores.items():
          for name, value in metrics.items():
            if _numeric(value) is not None and int(step) > 0:
              curves.setdefault(f'tasks/{task}/{name}', {})[int(step)] = _numeric(value)
  except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
    raise ValueError(f'{path}: config.json, metrics.jsonl or eval/summary.json is malformed ({err!r})') from err
  return RunData(path, config, curves, bool(evals))


def cumulative_train_flops(config: Any, steps: Sequence[int]) -> np.ndarray:
  """[S] float64: training model FLOPs after each of `steps` updates (module docstring; the k schedule is summed
  over k(0) .. k(s-1))."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  steps = np.asarray(steps, np.int64)
  if MoeSection.of(config).smoe_dropout.kind == 'constant' or not moe_layer_indices(config.model):
    return steps.astype(np.float64) * float(accounting.flops_per_step(config)['train'])
  k_N = KSchedule.from_config(config).numpy(np.arange(int(steps.max(initial=0))))   # k of each update
  flops_by_k = {}
  for k in np.unique(k_N).tolist():
    at_k = ml_collections.ConfigDict(config.to_dict())
    at_k.moe.top_k = int(k)
    flops_by_k[k] = float(accounting.flops_per_step(at_k)['train'])
  per_update_N = np.asarray([flops_by_k[k] for k in k_N.tolist()], np.float64)
  cumulative = np.concatenate([[0.0], np.cumsum(per_update_N)])
  return cumulative[steps]


# ------------------------------------------------------------------------------------------------- groups
@dataclasses.dataclass
class Group:
  """Seeds of one configuration. curves: metric -> (steps [S], mean [S], std [S]); compute/tokens per step."""
  label: str
  role: str
  runs: list[RunData]
  curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]

  @property
  def config(self) -> Any:
    return self.runs[0].config

  def tokens(self, steps: np.ndarray) -> np.ndarray:
    return steps * int(self.config.data.batch_size) * int(self.config.data.seq_len)

  def compute(self, steps: np.ndarray) -> np.ndarray:
    return cumulative_train_flops(self.config, steps)

  def describe(self) -> dict[str, Any]:
    c = self.config
    counts = accounting.param_counts(c)
    k_kind = MoeSection.of(c).smoe_dropout.kind if counts['num_moe_layers'] else 'constant'
    rule = ("step x accounting.flops_per_step(config)['train']" if k_kind == 'constant' else
            f'sum over updates of flops_per_step at k(step) (moe.smoe_dropout.kind={k_kind}; '
            'train_flops_per_step is at k_max = moe.top_k)')
    return {'role': self.role, 'workdirs': [r.path for r in self.runs], 'n_seeds': len(self.runs),
            'seeds': [[r.config.train.seed, r.config.data.shuffle_seed] for r in self.runs],
            'tokens_per_step': int(c.data.batch_size) * int(c.data.seq_len),
            'train_flops_per_step': float(accounting.flops_per_step(c)['train']), 'compute_rule': rule,
            'moe_layers': int(counts['num_moe_layers']), 'total_params': int(counts['total']),
            'active_params_per_token': int(counts['active_per_token'])}


def _identity(run: RunData) -> str:
  flat = flat_config(run.config)
  return json.dumps({k: v for k, v in flat.items() if k not in SEED_KEYS + BOOKKEEPING_KEYS}, sort_keys=True,
                    default=str)


def base_label(paths: Sequence[str]) -> str:
  """The workdirs' basename without a seed suffix ('runs/moe_seed1' -> 'moe'; 'runs/moe/seed1' -> 'moe')."""
  names = []
  for path in paths:
    path = os.path.normpath(path)
    name = SEED_SUFFIX.sub('', os.path.basename(path)).rstrip('_.-')
    names.append(name or os.path.basename(os.path.dirname(path)) or os.path.basename(path))
  if len(set(names)) == 1:
    return names[0]
  prefix = os.path.commonprefix(names).rstrip('_.-')
  return prefix or names[0]


def make_groups(runs: Sequence[RunData], role: str, taken: set[str], warnings: list[str]) -> list[Group]:
  """Groups `runs` by configuration (seeds together, in order of first appearance); averages their curves.
  `taken`: labels already used (updated); `warnings` gets a line per group that repeats a seed."""
  by_identity: dict[str, list[RunData]] = {}
  for run in runs:
    by_identity.setdefault(_identity(run), []).append(run)
  groups = []
  for members in by_identity.values():
    label = base_label([r.path for r in members])
    unique, n = label, 2
    while unique in taken:
      unique, n = f'{label} #{n}', n + 1
    taken.add(unique)
    seeds = [(r.config.train.seed, r.config.data.shuffle_seed) for r in members]
    if len(set(seeds)) < len(seeds):
      warnings.append(f'group {unique}: workdirs {[r.path for r in members]} repeat a seed {seeds}')
    curves = {}
    for metric in set.intersection(*(set(r.curves) for r in members)):
      steps, mean, std = frontier_lib.average_curves([r.curves[metric] for r in members])
      if len(steps):
        curves[metric] = (steps, mean, std)
    groups.append(Group(unique, role, list(members), curves))
  return groups


def check_comparable(groups: Sequence[Group]) -> list[str]:
  """ValueError when the groups' evaluation data differ (DATA_KEYS); returns warnings (WARN_KEYS, compute not
  counted)."""
  flats = {g.label: flat_config(g.config) for g in groups}
  for key in DATA_KEYS:
    values = {label: flat.get(key) for label, flat in flats.items()}
    if len(set(map(str, values.values()))) > 1:
      raise ValueError(f'the workdirs differ in {key} ({values}): their metrics are on different data or in '
                       'different token units, so compute-to-metric curves are not comparable')
  warnings = []
  for key in WARN_KEYS:
    values = {label: flat.get(key) for label, flat in flats.items()}
    if len(set(map(str, values.values()))) > 1:
      warnings.append(f'the workdirs differ in {key} ({values}); compared anyway')
  for label, flat in flats.items():
    if flat.get('distill.teacher_workdir'):
      warnings.append(f'{label}: compute does not include the distillation teacher\'s forward passes')
    if flat.get('init.from_workdir'):
      warnings.append(f'{label}: compute does not include the training of init.from_workdir '
                      f'{flat["init.from_workdir"]}')
  return warnings


# ---------------------------------------------------------------------------------------------------- metrics
def _metrics_in_all(groups: Sequence[Group]) -> set[str]:
  return set.intersection(*(set(g.curves) for g in groups)) if groups else set()


def check_metric(metric: str, runs: Sequence[RunData]) -> None:
  """ValueError unless `metric` has a known direction and a curve in every workdir."""
  known = sorted(m for m in set.intersection(*(set(r.curves) for r in runs))
                 if frontier_lib.metric_direction(m) is not None)
  for run in runs:
    if metric in run.curves:
      continue
    if metric.startswith('eval/') and not run.has_eval:
      ppl = f'tasks/ppl:{run.config.data.task}/{run.config.data.eval_split}/cross_entropy'
      raise ValueError(f'{run.path}: metrics.jsonl has no eval records, so there is no {metric} curve: train with '
                       f'train.eval_every > 0, or evaluate its checkpoints (python -m samoe_jax.evaluate '
                       f'--workdir={run.path} --checkpoint=all --validation_batches=all --tasks=) and pass '
                       f'--metric={ppl}')
    raise ValueError(f'--metric={metric!r} is not recorded in {run.path}; metrics found in every workdir: '
                     f'{", ".join(known) or "none"}')
  if frontier_lib.metric_direction(metric) is None:
    raise ValueError(f'--metric={metric!r}: unknown whether lower or higher is better (known last parts: '
                     f'{frontier_lib.LOWER_IS_BETTER + frontier_lib.HIGHER_IS_BETTER}); metrics found in every '
                     f'workdir: {", ".join(known)}')


def task_metrics(tasks: str, metric: str, dense: Sequence[Group], runs: Sequence[Group]) -> list[str]:
  """The task metrics to analyse: 'none' -> []; 'auto' -> every 'tasks/...' metric with a known direction in
  every dense group and some run group; else a comma list, each of which must be in every dense group."""
  if tasks == 'none' or not tasks.strip():
    return []
  in_dense = _metrics_in_all(dense)
  if tasks == 'auto':
    in_runs = set().union(*(g.curves for g in runs))
    return sorted(m for m in in_dense & in_runs if m.startswith('tasks/') and m != metric
                  and frontier_lib.metric_direction(m) is not None)
  wanted = [t.strip() for t in tasks.split(',') if t.strip()]
  available = sorted(m for m in in_dense if m.startswith('tasks/'))
  for name in wanted:
    if name not in in_dense or frontier_lib.metric_direction(name) is None:
      raise ValueError(f'--tasks: {name!r} is not a task metric (with a known direction) of every dense group; '
                       f'available: {", ".join(available) or "none"}')
  return [w for w in wanted if w != metric]


def _point(group: Group, metric: str) -> list[dict[str, Any]]:
  steps, mean, std = group.curves[metric]
  tokens, compute = group.tokens(steps), group.compute(steps)
  return [{'step': int(s), 'tokens': int(t), 'compute': float(f), 'metric': float(m), 'metric_std': float(d),
           'n_seeds': len(group.runs)} for s, t, f, m, d in zip(steps, tokens, compute, mean, std)]


def analyse_metric(metric: str, dense: Sequence[Group], runs: Sequence[Group]) -> dict[str, Any]:
  """The frontier of `metric` over the dense groups and every run group's speedup at every evaluated step."""
  lower = frontier_lib.metric_direction(metric)
  scale = frontier_lib.metric_scale(metric)
  dense_points = {g.label: _point(g, metric) for g in dense}
  flat = [(p, label) for label, points in dense_points.items() for p in points]
  frontier = frontier_lib.pareto_frontier([p['compute'] for p, _ in flat], [p['metric'] for p, _ in flat], lower,
                                          scale, sources=[{'group': label, 'step': p['step']} for p, label in flat])
  on_frontier = {(s['group'], s['step']) for s in frontier.sources}
  for label, points in dense_points.items():
    for p in points:
      p['on_frontier'] = (label, p['step']) in on_frontier
  run_out = {}
  for g in runs:
    if metric not in g.curves:
      continue
    points = [{**p, **frontier_lib.speedup_at(frontier, p['metric'], p['compute'])} for p in _point(g, metric)]
    for p in points:
      p['speedup_text'] = frontier_lib.format_speedup(p)
    in_range = [p for p in points if p['in_range']]
    above = [p for p in points if p['bound'] == '>=']
    # the largest (to 9 digits; ties: the latest step, not float noise) speedup and '>=' bound
    best = max(in_range, key=lambda p: (float(f'{p["speedup"]:.9g}'), p['step'])) if in_range else None
    best_bound = max(above, key=lambda p: (float(f'{p["bound_value"]:.9g}'), p['step'])) if above else None
    run_out[g.label] = {
        'points': points, 'final': points[-1],
        'max_speedup': best['speedup'] if best else None, 'max_speedup_step': best['step'] if best else None,
        'max_lower_bound': best_bound['bound_value'] if best_bound else None,
        'max_lower_bound_step': best_bound['step'] if best_bound else None}
  return {'metric': metric, 'lower_is_better': lower, 'interpolation_scale': scale,
          'frontier': frontier.to_json(), 'dense': dense_points, 'runs': run_out}


# -------------------------------------------------------------------------------------------------- analysis
def speedup_analysis(dense_workdirs: Sequence[str], run_workdirs: Sequence[str], out_dir: str | None,
                     metric: str = 'eval/cross_entropy', tasks: str = 'auto') -> dict[str, Any]:
  """The speedup of every run group over the dense family (module docstring); writes OUTDIR/speedup.{json, md,
  png} (+ a PNG per task metric) unless out_dir is None; returns what speedup.json holds."""
  dense_workdirs, run_workdirs = list(dense_workdirs), list(run_workdirs)
  if not dense_workdirs:
    raise ValueError('--dense: give at least one dense workdir (several sizes, to span a frontier)')
  if not run_workdirs:
    raise ValueError('--runs: give at least one workdir to compare with the dense family')
  for paths, flag in ((dense_workdirs, '--dense'), (run_workdirs, '--runs')):
    repeated = sorted({p for p in paths if paths.count(p) > 1})
    if repeated:
      raise ValueError(f'{flag} names {repeated} more than once')
  dense_runs = [load_run(p) for p in dense_workdirs]
  other_runs = [load_run(p) for p in run_workdirs]
  check_metric(metric, dense_runs + other_runs)
  taken: set[str] = set()
  warnings: list[str] = []
  dense = make_groups(dense_runs, 'dense', taken, warnings)
  runs = make_groups(other_runs, 'run', taken, warnings)
  for g in dense + runs:
    if metric not in g.curves:
      raise ValueError(f'group {g.label} ({[r.path for r in g.runs]}): its seeds share no evaluated step of '
                       f'{metric}, so they cannot be averaged')
  warnings += check_comparable(dense + runs)
  metrics = {metric: analyse_metric(metric, dense, runs)}
  chosen = task_metrics(tasks, metric, dense, runs)
  for name in chosen:
    try:
      metrics[name] = analyse_metric(name, dense, runs)
    except ValueError as err:
      if tasks != 'auto':
        raise ValueError(f'{name}: {err}') from err
      warnings.append(f'{name} skipped: {err}')
  for w in warnings:
    logging.warning('%s', w)
  report = {'definition': 'speedup(t) = c_dense(t) / c_run(t), c_m(t): training compute family m needs to reach '
                          'metric t', 'citation': CITATION, 'compute_unit': 'training model FLOPs',
            'primary_metric': metric, 'task_metrics': [m for m in chosen if m in metrics],
            'groups': {g.label: g.describe() for g in dense + runs}, 'metrics': metrics, 'warnings': warnings}
  if out_dir is not None:
    report['files'] = write_outputs(report, out_dir)
  return report


# --------------------------------------------------------------------------------------------------- outputs
def _fmt_value(value: float, std: float = 0.0, n: int = 1) -> str:
  """'3.2100' for one seed, '3.2100 ± 0.0123' (sample std over the seeds) for several."""
  return f'{value:.4f} ± {std:.4f}' if n > 1 else f'{value:.4f}'


def _fmt_max(run: dict[str, Any]) -> str:
  """Max speedup over the in-range steps, plus the largest '>=' bound when it exceeds that."""
  parts = []
  if run['max_speedup'] is not None:
    parts.append(f'{run["max_speedup"]:#.3g}x (step {run["max_speedup_step"]})')
  bound = run['max_lower_bound']
  if bound is not None and (run['max_speedup'] is None or bound > run['max_speedup']):
    parts.append(f'outside the dense range (>= {bound:#.3g}x) at step {run["max_lower_bound_step"]}')
  if not parts:   # every step worse than the dense range
    parts.append(f'outside the dense range (<= {max(p["bound_value"] for p in run["points"]):#.3g}x)')
  return '; '.join(parts)


def _run_rows(block: dict[str, Any], groups: dict[str, Any], with_metric: bool) -> list[str]:
  rows = []
  for label, run in block['runs'].items():
    p = run['final']
    cells = ([block['metric']] if with_metric else []) + [
        label, str(groups[label]['n_seeds']), str(p['step']), f'{p["compute"]:.3e}',
        _fmt_value(p['metric'], p['metric_std'], p['n_seeds']), frontier_lib.format_speedup(p),
        _fmt_max(run)]
    rows.append('| ' + ' | '.join(cells) + ' |')
  return rows


def markdown_report(report: dict[str, Any]) -> str:
  """speedup.md: the definition, a table of run groups per metric, the dense groups and the frontier."""
  metric = report['primary_metric']
  block, groups = report['metrics'][metric], report['groups']
  better = 'lower' if block['lower_is_better'] else 'higher'
  lines = ['# MoE speedup factor', '',
           f'speedup(t) = c_dense(t) / c_run(t) ({report["citation"]}): c_dense(t) is the training compute the '
           'dense family needs to reach metric t (log FLOPs interpolated piecewise-linearly in t along the dense '
           'frontier, never extrapolated), c_run the run\'s cumulative training model FLOPs '
           "(accounting.flops_per_step(config)['train'] per step).", '',
           f'## {metric} ({better} is better)', '',
           f'| run group | seeds | final step | compute (FLOPs) | {metric} | speedup at the final step | '
           'max over steps |', '|---|---:|---:|---:|---:|---|---|']
  lines += _run_rows(block, groups, with_metric=False)
  lines += ['', '![speedup](speedup.png)', '', '### Dense groups', '',
            '| dense group | seeds | active params / token | final step | compute (FLOPs) | '
            f'{metric} | points on the frontier |', '|---|---:|---:|---:|---:|---:|---:|']
  for label, points in block['dense'].items():
    p = points[-1]
    lines.append(f'| {label} | {groups[label]["n_seeds"]} | {groups[label]["active_params_per_token"]:,} | '
                 f'{p["step"]} | {p["compute"]:.3e} | {_fmt_value(p["metric"], p["metric_std"], p["n_seeds"])}'
                 f' | {sum(q["on_frontier"] for q in points)} / {len(points)} |')
  f = block['frontier']
  lines += ['', f'Dense frontier: {len(f)} points, compute {f[0]["compute"]:.3e} .. {f[-1]["compute"]:.3e} FLOPs, '
            f'{metric} {f[0]["metric"]:.4f} .. {f[-1]["metric"]:.4f}.']
  tasks = report['task_metrics']
  if tasks:
    lines += ['', '## Task metrics', '', '| metric | run group | seeds | final step | compute (FLOPs) | value | '
              'speedup at the final step | max over steps |', '|---|---|---:|---:|---:|---:|---|---|']
    for name in tasks:
      lines += _run_rows(report['metrics'][name], groups, with_metric=True)
    lines += [''] + [f'![{name}]({os.path.basename(plot_name(name))})' for name in tasks]
  if report['warnings']:
    lines += ['', '## Warnings', ''] + [f'- {w}' for w in report['warnings']]
  return '\n'.join(lines) + '\n'


def plot_name(metric: str) -> str:
  """The PNG of a task metric: 'tasks/piqa/acc' -> 'speedup_tasks_piqa_acc.png' (the primary metric's is
  speedup.png)."""
  return 'speedup_' + re.sub(r'[^A-Za-z0-9_.-]+', '_', metric).strip('_') + '.png'


def plot_metric(block: dict[str, Any], groups: dict[str, Any], path: str) -> None:
  """Metric against training FLOPs (log x): dense groups and run groups with ±std seed bands, the dense frontier
  as a thick black line, each run group's final speedup in its legend entry."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7.5, 5))
  def draw(points: list[dict[str, Any]], label: str, style: str, color: Any) -> None:
    x = np.asarray([p['compute'] for p in points])
    y = np.asarray([p['metric'] for p in points])
    d = np.asarray([p['metric_std'] for p in points])
    ax.plot(x, y, style, color=color, label=label, markersize=4, linewidth=1.2)
    if np.any(d > 0):
      ax.fill_between(x, y - d, y + d, color=color, alpha=0.2, linewidth=0)
  blues = plt.cm.Blues(np.linspace(0.4, 0.9, max(len(block['dense']), 1)))
  for color, (label, points) in zip(blues, block['dense'].items()):
    draw(points, f'{label} (dense, n={groups[label]["n_seeds"]})', 'o-', color)
  f = block['frontier']
  ax.plot([p['compute'] for p in f], [p['metric'] for p in f], '-', color='black', linewidth=3.5, alpha=0.6,
          label='dense frontier', zorder=1)
  others = plt.cm.tab10(np.arange(len(block['runs'])) % 10 + 1)
  for color, (label, run) in zip(others, block['runs'].items()):
    draw(run['points'], f'{label} (n={groups[label]["n_seeds"]}): speedup '
         f'{frontier_lib.format_speedup(run["final"])} at step {run["final"]["step"]}', 's--', color)
  ax.set_xscale('log')
  if block['interpolation_scale'] == 'log':   # perplexity: drawn on the scale it is interpolated in
    ax.set_yscale('log')
  ax.set_xlabel('training compute (model FLOPs)')
  ax.set_ylabel(f'{block["metric"]} ({"lower" if block["lower_is_better"] else "higher"} is better)')
  ax.set_title(f'MoE speedup over the dense frontier: {block["metric"]}', fontsize=10)
  ax.grid(alpha=0.3, which='both')
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_outputs(report: dict[str, Any], out_dir: str) -> dict[str, str]:
  """OUTDIR/{speedup.json, speedup.md, speedup.png} and a PNG per task metric; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {'json': os.path.join(out_dir, 'speedup.json'), 'md': os.path.join(out_dir, 'speedup.md'),
           'png': os.path.join(out_dir, 'speedup.png')}
  for name in report['task_metrics']:
    paths[name] = os.path.join(out_dir, plot_name(name))
  plot_metric(report['metrics'][report['primary_metric']], report['groups'], paths['png'])
  for name in report['task_metrics']:
    plot_metric(report['metrics'][name], report['groups'], paths[name])
  with open(paths['md'], 'w') as f:
    f.write(markdown_report(report))
  with open(paths['json'], 'w') as f:
    json.dump({**report, 'files': paths}, f, indent=2)
  return paths


# ------------------------------------------------------------------------------------------------------ CLI
def _split(text: str) -> list[str]:
  return [part.strip() for part in (text or '').split(',') if part.strip()]


def _main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  # The user's input raises ValueError or OSError: cli.run_app prints its message, exit code 1.
  report = speedup_analysis(_split(f.dense), _split(f.runs), f.out, metric=f.metric, tasks=f.tasks)
  print(markdown_report(report), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
  """The command (python -m, a console script): defines its flags here, not at import (every command module
  imports in one process), and runs through cli.run_app."""
  flags.DEFINE_string('dense', None, 'Comma-separated dense workdirs (several sizes; seeds are grouped).',
                      required=True)
  flags.DEFINE_string('runs', None, 'Comma-separated workdirs to compare (seeds are grouped).', required=True)
  flags.DEFINE_string('out', None, 'Output directory for speedup.{json,md,png}.', required=True)
  flags.DEFINE_string('metric', 'eval/cross_entropy', 'Validation metric of the frontier (eval/... or tasks/...).')
  flags.DEFINE_string('tasks', 'auto', 'auto (every task metric of all dense groups and the run), none, or a '
                      'comma list of tasks/<task>/<metric>.')
  cli.run_app('samoe_jax.analysis.speedup', _main, sys.argv if argv is None else list(argv))


if __name__ == '__main__':
  sys.exit(main())
