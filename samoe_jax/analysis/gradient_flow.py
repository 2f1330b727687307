"""Gradient flow into dense, MoE and SaMoE layers, from the trainer's grad_stats records (docs/analysis.md).

  python -m samoe_jax.analysis.gradient_flow --workdirs=A,B,... --out=OUTDIR [--step=N] [--window=K]

SaMoE (Zhang et al. 2022) argues that the experts of a standard MoE are under-trained because each receives a
small share of the gradient, and that a global pool shared by every MoE layer gives each stored expert more.
This reads the records a run trained with `--config.train.grad_stats_every=N` writes (kind 'grad_stats' in
WORKDIR/metrics.jsonl: per part of the model the gradient norm, the gradient per parameter `rms` and the update
ratio ||dw|| / ||w||) and compares them across runs: workdirs whose configs differ only in train.seed and
data.shuffle_seed form one group (mean and sample std over the seeds). The fixed-step comparisons use --step
(default: the largest step every run has a grad_stats record at or before), averaging each run's last --window
records ending there.

Writes OUTDIR/gradient_flow.json, gradient_flow.md and the figures (samoe_jax.analysis.gradient_flow_outputs).
No model or checkpoint is loaded. `gradient_flow_analysis` is the library entry point.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from typing import Any, Iterable, Sequence

import ml_collections
import numpy as np

from samoe_jax import cli
from samoe_jax.analysis import gradient_flow_outputs
from samoe_jax.analysis.gradient_flow_outputs import fmt
from samoe_jax.config.layer_plan import moe_layer_indices
from samoe_jax.config.pyramid import format_counts, groups_of_config
from samoe_jax.config.sections import complete_config
from samoe_jax.layers.mixing import mixing_for
from samoe_jax.training.metrics_writer import read_metrics

PROG = 'samoe_jax.analysis.gradient_flow'
# Layer types of the per-type tables and of grad_norm_vs_step.png, in display order.
LAYER_TYPES = ('total', 'embedding', 'norms', 'attention', 'ffn', 'router', 'residual', 'experts', 'pool',
               'mixing', 'shared', 'other')
METRICS = ('norm', 'rms', 'update_ratio')
SIMPLE_PARTS = ('total', 'embedding', 'norms', 'mixing', 'shared', 'other')
SHARED_POOL_KINDS = ('samoe', 'tied', 'manual', 'widenet')   # kinds whose pool entries serve several MoE layers
SEED_KEYS = (('train', 'seed'), ('data', 'shuffle_seed'))
DEFAULT_STEP_SOURCE = 'default: the largest step every run has a grad_stats record at or before'

_BLOCK_PART = re.compile(r'^grad/block(\d+)/(attention|ffn|router|residual)/(norm|rms|update_ratio)$')
_BLOCK_EXPERTS = re.compile(r'^grad/block(\d+)/experts/(\w+)$')
_POOL = re.compile(r'^grad/(pool(?:_e\d+)?)/(\w+)$')


# ------------------------------------------------------------------------------------------ config -> label
def config_kind(config: ml_collections.ConfigDict) -> str:
  """'dense' | 'moe' (standard) | 'samoe' | 'tied' | 'manual' | 'pr_moe' | 'widenet' from the config keys."""
  moe_layers = moe_layer_indices(config.model)
  if not moe_layers:
    return 'dense'
  if config.pool.share_router or config.model.share_attention:
    return 'widenet'
  if len(groups_of_config(config)) > 1 or config.moe.residual != 'none':
    return 'pr_moe'
  if mixing_for(config.pool).learned:
    return 'samoe'
  if int(config.pool.size) == len(moe_layers):
    return 'moe'
  return 'tied' if int(config.pool.size) == 1 else 'manual'


def config_label(config: ml_collections.ConfigDict) -> str:
  """A short description: 'dense', 'MoE E=8', 'SaMoE P=2 E=8', 'tied E=8', 'manual P=2 E=8', 'PR-MoE E=8,16',
  'WideNet E=8' (two runs of different configs may share one; see `disambiguate_labels`)."""
  kind = config_kind(config)
  if kind == 'dense':
    return 'dense'
  e, p = int(config.moe.num_experts), int(config.pool.size)
  if kind == 'pr_moe':
    counts = tuple(g.num_experts for g in groups_of_config(config) for _ in g.layers)
    return f'PR-MoE E={format_counts(counts) if len(set(counts)) > 1 else counts[0]}'
  return {'moe': f'MoE E={e}', 'samoe': f'SaMoE P={p} E={e}', 'tied': f'tied E={e}',
          'manual': f'manual P={p} E={e}', 'widenet': f'WideNet E={e}'}[kind]


def disambiguate_labels(labels: Sequence[str], names: Sequence[str]) -> list[str]:
  """Appends ' (name)' to labels that occur more than once (then ' #i' if that still collides)."""
  out = [f'{label} ({name})' if labels.count(label) > 1 else label for label, name in zip(labels, names)]
  return [f'{label} #{i}' if out.count(label) > 1 else label for i, label in enumerate(out)]


def seed_group_key(config: ml_collections.ConfigDict) -> str:
  """The config without train.seed and data.shuffle_seed, as canonical JSON: equal keys = seeds of one group."""
  d = json.loads(config.to_json())
  for section, key in SEED_KEYS:
    d.get(section, {}).pop(key, None)
  return json.dumps(d, sort_keys=True)


# ------------------------------------------------------------------------------------------------ reading
@dataclasses.dataclass
class Run:
  """One workdir: its config and grad_stats records (ascending steps)."""
  workdir: str
  config: ml_collections.ConfigDict
  records: list[dict[str, Any]]

  @property
  def steps(self) -> list[int]:
    return [int(r['step']) for r in self.records]

  @property
  def name(self) -> str:
    return os.path.basename(os.path.normpath(self.workdir))


def load_run(workdir: str) -> Run:
  """The run's config.json and grad_stats records; ValueError for a missing workdir, config or records."""
  if not os.path.isdir(workdir):
    raise ValueError(f'workdir {workdir} does not exist')
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise ValueError(f'{path} does not exist: {workdir} is not a run directory written by samoe_jax.train')
  with open(path) as f:
    config = complete_config(json.load(f))
  records = read_metrics(workdir, 'grad_stats')
  if not records:
    raise ValueError(f'{workdir} has no grad_stats records in metrics.jsonl: train with '
                     '--config.train.grad_stats_every=N (e.g. 50) to record gradient statistics')
  return Run(workdir, config, records)


def choose_step(runs: Sequence[Run], step: int | None) -> tuple[int, str]:
  """(fixed step, where it came from). Default: the smallest last grad_stats step over the runs."""
  if step is None:
    last = min(runs, key=lambda r: r.steps[-1])
    first = max(runs, key=lambda r: r.steps[0])
    if first.steps[0] > last.steps[-1]:
      raise ValueError(f'no step has a grad_stats record at or before it in every run: {first.workdir} starts at '
                       f'step {first.steps[0]} but {last.workdir} ends at step {last.steps[-1]}; compare runs '
                       'whose grad_stats steps overlap')
    return last.steps[-1], DEFAULT_STEP_SOURCE
  for run in runs:
    if run.steps[0] > step:
      raise ValueError(f'--step={step} is before the first grad_stats record of {run.workdir} (step '
                       f'{run.steps[0]}): give a step >= {max(r.steps[0] for r in runs)}')
  return int(step), 'given (--step)'


def window_records(run: Run, step: int, window: int) -> list[dict[str, Any]]:
  """The last `window` grad_stats records at or before `step` (fewer when the run has fewer)."""
  return [r for r in run.records if r['step'] <= step][-window:]


def average_records(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Element-wise mean of every 'grad/...' value over the records holding it, NaN entries left out (the trainer
  writes NaN update ratios while ||w|| = 0); lists stay lists."""
  values: dict[str, list[np.ndarray]] = {}
  for record in records:
    for key, value in record.items():
      if key.startswith('grad/'):
        values.setdefault(key, []).append(np.asarray(value, np.float64))
  out = {}
  for key, arrays in values.items():
    stacked = np.stack([a for a in arrays if a.shape == arrays[0].shape])
    finite = np.isfinite(stacked)
    count = finite.sum(axis=0)
    mean = np.where(count > 0, np.where(finite, stacked, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)
    out[key] = float(mean) if mean.ndim == 0 else mean.tolist()
  return out


def _mean(values: Iterable[float]) -> float | None:
  values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
  return float(np.mean(values)) if values else None


def layer_type_values(record: dict[str, Any]) -> dict[str, dict[str, float]]:
  """{layer type: {'norm', 'rms', 'update_ratio'}} of one (possibly averaged) record; absent types left out."""
  collected: dict[str, dict[str, list[float]]] = {}

  def add(kind: str, metric: str, values: Iterable[float]) -> None:
    collected.setdefault(kind, {}).setdefault(metric, []).extend(values)

  for key, value in record.items():
    if not key.startswith('grad/'):
      continue
    part, _, metric = key[len('grad/'):].rpartition('/')
    if part in SIMPLE_PARTS and metric in METRICS:
      add(part, metric, [value])
    elif m := _BLOCK_PART.match(key):
      add(m.group(2), m.group(3), [value])
    elif (m := _BLOCK_EXPERTS.match(key)) and m.group(2).startswith('mean_') and m.group(2)[5:] in METRICS:
      add('experts', m.group(2)[5:], [value])
    elif (m := _POOL.match(key)) and m.group(2).startswith('entry_') and m.group(2)[6:] in METRICS:
      add('pool', m.group(2)[6:], np.ravel(value).tolist())
  return {kind: {metric: _mean(v) for metric, v in collected[kind].items()}
          for kind in LAYER_TYPES if kind in collected}


def moe_layer_values(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """{str(block): {'mean_norm', 'mean_rms', 'mean_update_ratio', 'norm', 'rms', 'update_ratio', 'token_share'}}."""
  out: dict[int, dict[str, Any]] = {}
  for key, value in record.items():
    if m := _BLOCK_EXPERTS.match(key):
      out.setdefault(int(m.group(1)), {})[m.group(2)] = value
  return {str(b): out[b] for b in sorted(out)}


def pool_values(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """{'pool' | 'pool_e<E>': {'entry_norm', 'entry_rms', 'entry_update_ratio' ([P]), 'norm', 'rms', ... ([P][E])}}."""
  out: dict[str, dict[str, Any]] = {}
  for key, value in record.items():
    if m := _POOL.match(key):
      out.setdefault(m.group(1), {})[m.group(2)] = value
  return dict(sorted(out.items()))


def run_summary(run: Run, step: int, window: int) -> dict[str, Any]:
  """One run's numbers: window-averaged values at the fixed step and its rms series by layer type."""
  used = window_records(run, step, window)
  averaged = average_records(used)
  series = [layer_type_values(r) for r in run.records]
  present = [t for t in LAYER_TYPES if any(t in s for s in series)]
  return {
      'workdir': run.workdir, 'name': run.name,
      'seed': run.config.train.seed, 'shuffle_seed': run.config.data.shuffle_seed,
      'steps': run.steps, 'step_used': int(used[-1]['step']), 'window_steps': [int(r['step']) for r in used],
      'layer_types': layer_type_values(averaged), 'moe_layers': moe_layer_values(averaged),
      'pool': pool_values(averaged),
      'series': {'steps': run.steps, 'rms': {t: [s.get(t, {}).get('rms') for s in series] for t in present}}}


# --------------------------------------------------------------------------------------------- statistics
def stats(values: Sequence[float | None]) -> dict[str, Any]:
  """{'mean', 'std' (sample std over the finite values, 0 for one), 'n', 'values'}; mean/std None when empty."""
  finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
  mean = float(np.mean(finite)) if finite else None
  std = float(np.std(finite, ddof=1)) if len(finite) > 1 else (0.0 if finite else None)
  return {'mean': mean, 'std': std, 'n': len(finite), 'values': [None if v is None else float(v) for v in values]}


def list_stats(lists: Sequence[Sequence[float] | None]) -> dict[str, Any]:
  """Element-wise mean / sample std over equal-length lists (the first list's length decides)."""
  arrays = [np.asarray(x, np.float64) for x in lists if x is not None]
  arrays = [a for a in arrays if arrays and a.shape == arrays[0].shape]
  if not arrays:
    return {'mean': None, 'std': None, 'n': 0}
  stacked = np.stack(arrays)
  std = np.std(stacked, axis=0, ddof=1) if len(arrays) > 1 else np.zeros_like(stacked[0])
  return {'mean': stacked.mean(axis=0).tolist(), 'std': std.tolist(), 'n': len(arrays)}


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
  """Spearman rank correlation (average ranks for ties); None for < 3 points or a constant variable."""
  if len(x) < 3:
    return None
  rx, ry = _ranks(x), _ranks(y)
  if np.std(rx) == 0 or np.std(ry) == 0:
    return None
  return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values: Sequence[float]) -> np.ndarray:
  x = np.asarray(values, np.float64)
  ranks = np.empty(len(x))
  ranks[np.argsort(x, kind='mergesort')] = np.arange(len(x), dtype=np.float64)
  for v in np.unique(x):
    ranks[x == v] = ranks[x == v].mean()
  return ranks


def least_squares(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, float | None]:
  """(slope, intercept) of y ~ x; (None, None) for < 2 points or a constant x."""
  if len(x) < 2 or np.ptp(np.asarray(x, np.float64)) == 0:
    return None, None
  slope, intercept = np.polyfit(np.asarray(x, np.float64), np.asarray(y, np.float64), 1)
  return float(slope), float(intercept)


# ----------------------------------------------------------------------------------------------- groups
def _group_series(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """rms by layer type on the union of the runs' steps, mean over the runs recorded at each step."""
  steps = sorted({s for r in summaries for s in r['series']['steps']})
  types = [t for t in LAYER_TYPES if any(t in r['series']['rms'] for r in summaries)]
  lookup = [dict(zip(r['series']['steps'], range(len(r['series']['steps'])))) for r in summaries]
  rms = {}
  for t in types:
    rms[t] = [_mean(r['series']['rms'][t][index[s]] for r, index in zip(summaries, lookup)
                    if s in index and t in r['series']['rms']) for s in steps]
  return {'steps': steps, 'rms': rms}


def _token_share_points(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
  points = []
  for i, r in enumerate(summaries):
    for block, layer in r['moe_layers'].items():
      for e, (share, norm) in enumerate(zip(layer.get('token_share', []), layer.get('norm', []))):
        points.append({'run': i, 'block': int(block), 'expert': e, 'token_share': share, 'norm': norm})
  x, y = [p['token_share'] for p in points], [p['norm'] for p in points]
  slope, intercept = least_squares(x, y)
  return {'points': points, 'num_points': len(points), 'spearman': spearman(x, y), 'slope': slope,
          'intercept': intercept}


def group_summary(label: str, runs: Sequence[Run], summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Seed statistics of one group (runs differing only in their seeds)."""
  config = runs[0].config
  kind = config_kind(config)
  moe_layers = moe_layer_indices(config.model)
  counts = [g.num_experts for g in groups_of_config(config) for _ in g.layers]
  layer_types = {t: {m: stats([s['layer_types'].get(t, {}).get(m) for s in summaries]) for m in METRICS}
                 for t in LAYER_TYPES if any(t in s['layer_types'] for s in summaries)}
  blocks = sorted({int(b) for s in summaries for b in s['moe_layers']})
  per_layer = {}
  for b in blocks:
    layers = [s['moe_layers'].get(str(b), {}) for s in summaries]
    per_layer[str(b)] = {**{f'mean_{m}': stats([x.get(f'mean_{m}') for x in layers]) for m in METRICS},
                         **{k: list_stats([x.get(k) for x in layers]) for k in (*METRICS, 'token_share')}}
  pools = {}
  for name in sorted({n for s in summaries for n in s['pool']}):
    entries = [s['pool'].get(name, {}) for s in summaries]
    pools[name] = {f'entry_{m}': list_stats([x.get(f'entry_{m}') for x in entries]) for m in METRICS}
  return {
      'label': label, 'kind': kind, 'description': config_label(config),
      'workdirs': [r.workdir for r in runs], 'num_seeds': len(runs),
      'seeds': [[s['seed'], s['shuffle_seed']] for s in summaries],
      'num_experts': int(config.moe.num_experts) if moe_layers else None, 'experts_per_layer': counts,
      'top_k': int(config.moe.top_k) if moe_layers else None,
      'pool_size': int(config.pool.size) if moe_layers else None,
      'pool_mixing': mixing_for(config.pool).name if moe_layers else None,
      'num_layers': int(config.model.num_layers), 'num_moe_layers': len(moe_layers), 'moe_blocks': moe_layers,
      'steps_used': [s['step_used'] for s in summaries], 'window_steps': [s['window_steps'] for s in summaries],
      'layer_types': layer_types, 'moe_layers': per_layer, 'pool': pools,
      'series': _group_series(summaries), 'token_share_vs_grad': _token_share_points(summaries)}


def group_runs(runs: Sequence[Run]) -> list[tuple[str, list[int]]]:
  """[(label, run indices)] in order of first appearance; seeds of one config share a group."""
  keys: dict[str, list[int]] = {}
  for i, run in enumerate(runs):
    keys.setdefault(seed_group_key(run.config), []).append(i)
  members = list(keys.values())
  labels = disambiguate_labels([config_label(runs[m[0]].config) for m in members],
                               [runs[m[0]].name for m in members])
  return list(zip(labels, members))


def _value(group: dict[str, Any], layer_type: str, metric: str) -> dict[str, Any] | None:
  return group['layer_types'].get(layer_type, {}).get(metric)


def expert_vs_num_experts(groups: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Figure 2's data: standard-MoE expert rms / update ratio against E (one series per top-k), dense references."""
  series = []
  standard = [g for g in groups if g['kind'] == 'moe' and _value(g, 'experts', 'rms')]
  for k in sorted({g['top_k'] for g in standard}):
    members = sorted((g for g in standard if g['top_k'] == k), key=lambda g: g['num_experts'])
    points = [{'label': g['label'], 'num_experts': g['num_experts'], 'rms': _value(g, 'experts', 'rms'),
               'update_ratio': _value(g, 'experts', 'update_ratio')} for g in members]
    by_e = {}
    for e in sorted({p['num_experts'] for p in points}):
      at_e = [p for p in points if p['num_experts'] == e]
      by_e[str(e)] = {m: _mean(p[m]['mean'] for p in at_e) for m in ('rms', 'update_ratio')}
    series.append({'top_k': k, 'points': points, 'by_num_experts': by_e})
  dense = [{'label': g['label'], 'rms': _value(g, 'ffn', 'rms'), 'update_ratio': _value(g, 'ffn', 'update_ratio')}
           for g in groups if g['kind'] == 'dense' and _value(g, 'ffn', 'rms')]
  return {'series': series, 'dense_reference': dense}


def pool_vs_layer(groups: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Figure 4's bars and the pool-entry vs layer-expert ratios of every shared-pool group (SaMoE, tied, manual,
  WideNet) against the standard MoE with the same E (same top-k preferred)."""
  bars, ratios = [], []
  standard = [g for g in groups if g['kind'] == 'moe' and _value(g, 'experts', 'rms')]
  for g in groups:
    if g['kind'] not in ('moe', *SHARED_POOL_KINDS):
      continue
    if g['kind'] in SHARED_POOL_KINDS:
      for name, pool in g['pool'].items():
        for j, (rms, ur) in enumerate(zip(pool['entry_rms']['mean'] or [], pool['entry_update_ratio']['mean'] or [])):
          bars.append({'group': g['label'], 'type': 'pool entry', 'item': f'{name} {j}',
                       'rms': {'mean': rms, 'std': pool['entry_rms']['std'][j]},
                       'update_ratio': {'mean': ur, 'std': pool['entry_update_ratio']['std'][j]}})
    layer_type = 'layer experts' if g['kind'] == 'moe' else 'mixed experts'
    for block, layer in g['moe_layers'].items():
      bars.append({'group': g['label'], 'type': layer_type, 'item': f'block {block}',
                   'rms': {k: layer['mean_rms'][k] for k in ('mean', 'std')},
                   'update_ratio': {k: layer['mean_update_ratio'][k] for k in ('mean', 'std')}})
    if g['kind'] not in SHARED_POOL_KINDS or not _value(g, 'pool', 'rms'):
      continue
    candidates = sorted((s for s in standard if s['num_experts'] == g['num_experts']),
                        key=lambda s: s['top_k'] != g['top_k'])
    row = {'label': g['label'], 'kind': g['kind'], 'num_experts': g['num_experts'], 'top_k': g['top_k'],
           'pool_entry_rms': _value(g, 'pool', 'rms')['mean'],
           'pool_entry_update_ratio': _value(g, 'pool', 'update_ratio')['mean'],
           'mixed_expert_rms': (_value(g, 'experts', 'rms') or {}).get('mean'),
           'reference': None, 'other_references': [], 'layer_expert_rms': None, 'layer_expert_update_ratio': None,
           'rms_ratio': None, 'update_ratio_ratio': None}
    row['pool_vs_mixed_rms_ratio'] = _ratio(row['pool_entry_rms'], row['mixed_expert_rms'])
    if candidates:
      ref = candidates[0]
      row.update(reference=ref['label'], other_references=[c['label'] for c in candidates[1:]],
                 layer_expert_rms=_value(ref, 'experts', 'rms')['mean'],
                 layer_expert_update_ratio=_value(ref, 'experts', 'update_ratio')['mean'])
      row['rms_ratio'] = _ratio(row['pool_entry_rms'], row['layer_expert_rms'])
      row['update_ratio_ratio'] = _ratio(row['pool_entry_update_ratio'], row['layer_expert_update_ratio'])
    ratios.append(row)
  return {'bars': bars, 'ratios': ratios}


def _ratio(a: float | None, b: float | None) -> float | None:
  return a / b if a is not None and b not in (None, 0.0) else None


# --------------------------------------------------------------------------------------------- sentences
def _change(metric: str, lo_e: int, lo: float, hi_e: int, hi: float) -> str:
  if hi == lo:
    return f'{metric} is {fmt(lo)} at both E={lo_e} and E={hi_e}'
  verb, fold = ('falls', lo / hi) if hi < lo else ('rises', hi / lo)
  return f'{metric} {verb} from {fmt(lo)} at E={lo_e} to {fmt(hi)} at E={hi_e} ({fmt(fold)}-fold)'


def sentences(report: dict[str, Any]) -> list[str]:
  """Findings computed from the numbers; a missing comparison is said, not skipped."""
  out = [f'Fixed-step comparisons use step {report["step"]} ({report["step_source"]}), averaging each run\'s last '
         f'{report["window"]} grad_stats record(s) at or before it.']
  for g in report['groups']:
    for workdir, used, window_steps in zip(g['workdirs'], g['steps_used'], g['window_steps']):
      if used != report['step']:
        out.append(f'{workdir}: its last grad_stats record at or before step {report["step"]} is at step {used}.')
      if len(window_steps) < report['window']:
        out.append(f'{workdir}: only {len(window_steps)} grad_stats record(s) at or before step {report["step"]} '
                   f'(window {report["window"]}).')
  fig2 = report['expert_vs_num_experts']
  dense = fig2['dense_reference']
  if not fig2['series']:
    out.append("No standard-MoE group (pool.mixing='fixed', pool.size = number of MoE layers): no comparison of "
               'expert gradients across expert counts E.')
  for series in fig2['series']:
    by_e = {int(e): v for e, v in series['by_num_experts'].items()}
    es = sorted(by_e)
    if len(es) < 2:
      out.append(f'Standard MoE (top-{series["top_k"]}): a single expert count (E={es[0]}), so no trend over E; '
                 f'expert gradient per parameter {fmt(by_e[es[0]]["rms"])}.')
    else:
      lo, hi = by_e[es[0]], by_e[es[-1]]
      text = _change('expert gradient per parameter', es[0], lo['rms'], es[-1], hi['rms'])
      if lo['update_ratio'] and hi['update_ratio']:
        text += '; ' + _change('the expert update ratio', es[0], lo['update_ratio'], es[-1], hi['update_ratio'])
      out.append(f'Standard MoE (top-{series["top_k"]}): {text}.')
    for ref in dense:
      d = ref['rms']['mean']
      parts = [f'{fmt(_ratio(by_e[e]["rms"], d))}x at E={e}' for e in sorted({es[0], es[-1]})
               if _ratio(by_e[e]['rms'], d) is not None]
      out.append(f'Standard MoE (top-{series["top_k"]}) expert gradient per parameter relative to the dense FFN\'s '
                 f'({ref["label"]}, {fmt(d)}): {", ".join(parts) or "n/a"}.')
  if not dense:
    out.append('No dense group (model.layer_plan=\'none\'): no dense-FFN reference for the expert gradients.')
  ratios = report['pool_vs_layer']['ratios']
  if not any(g['kind'] == 'samoe' for g in report['groups']):
    out.append("No SaMoE (pool.mixing='learned') group: no SaMoE pool-entry vs layer-expert comparison.")
  for r in ratios:
    if r['rms_ratio'] is None:
      out.append(f'No standard-MoE group with E={r["num_experts"]} to compare the pool entries of {r["label"]} with '
                 f'(pool-entry gradient per parameter {fmt(r["pool_entry_rms"])}).')
      continue
    text = (f'{r["label"]} pool entries receive {fmt(r["rms_ratio"])}x the gradient per parameter of the standard '
            f'MoE\'s layer experts ({r["reference"]}: {fmt(r["pool_entry_rms"])} vs {fmt(r["layer_expert_rms"])})')
    if r['update_ratio_ratio'] is not None:
      text += f' and {fmt(r["update_ratio_ratio"])}x their update ratio'
    out.append(text + '.')
  for r in ratios:
    if r['kind'] == 'samoe' and r['pool_vs_mixed_rms_ratio'] is not None:
      out.append(f'{r["label"]}: pool-entry gradient per parameter is {fmt(r["pool_vs_mixed_rms_ratio"])}x that of '
                 f'its layers\' mixed experts ({fmt(r["pool_entry_rms"])} vs {fmt(r["mixed_expert_rms"])}).')
  for g in report['groups']:
    t = g['token_share_vs_grad']
    if g['num_moe_layers'] and t['num_points']:
      out.append(f'{g["label"]}: Spearman correlation of an expert\'s token share with its gradient norm is '
                 f'{fmt(t["spearman"])} over {t["num_points"]} (layer, expert) points (least-squares slope '
                 f'{fmt(t["slope"])}).')
  return out


def _finite(value: Any) -> Any:
  """NaN / inf -> None, recursively (the JSON stays strict)."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  return value


# ------------------------------------------------------------------------------------------------ entry
def build_report(workdirs: Sequence[str], step: int | None = None, window: int = 1) -> dict[str, Any]:
  """Everything gradient_flow.json holds except 'figures' and 'files'; ValueError for bad input."""
  if not isinstance(window, int) or window < 1:
    raise ValueError(f'--window={window!r}: must be an integer >= 1 (grad_stats records averaged per run)')
  if isinstance(workdirs, str):
    workdirs = [w for w in workdirs.split(',') if w.strip()]
  if not workdirs:
    raise ValueError('--workdirs is empty: give one or more comma-separated run directories')
  runs = [load_run(w) for w in workdirs]
  fixed, source = choose_step(runs, step)
  summaries = [run_summary(r, fixed, window) for r in runs]
  groups = [group_summary(label, [runs[i] for i in members], [summaries[i] for i in members])
            for label, members in group_runs(runs)]
  report = {'workdirs': list(workdirs), 'step': fixed, 'step_source': source, 'window': window,
            'runs': summaries, 'groups': groups, 'expert_vs_num_experts': expert_vs_num_experts(groups),
            'pool_vs_layer': pool_vs_layer(groups)}
  report['sentences'] = sentences(report)
  return report


def gradient_flow_analysis(workdirs: Sequence[str], out_dir: str, step: int | None = None,
                           window: int = 1) -> dict[str, Any]:
  """Reads the runs, writes OUT_DIR/{gradient_flow.json, gradient_flow.md, *.png}; returns the JSON's content
  ('figures': {name: file name in out_dir}, 'files': {'json', 'md'}: paths, 'sentences': the findings)."""
  report = build_report(workdirs, step, window)
  os.makedirs(out_dir, exist_ok=True)
  report['figures'] = gradient_flow_outputs.write_figures(report, out_dir)
  report['files'] = {'json': os.path.join(out_dir, 'gradient_flow.json'),
                     'md': os.path.join(out_dir, 'gradient_flow.md')}
  report = _finite(report)
  with open(report['files']['md'], 'w') as f:
    f.write(gradient_flow_outputs.markdown(report))
  with open(report['files']['json'], 'w') as f:
    json.dump(report, f, indent=1, allow_nan=False)
  return report


def main(argv: Sequence[str] | None = None) -> None:
  """The command (python -m, a console script): defines its flags here, not at import (every command module
  imports in one process), and runs through cli.run_app."""
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_list('workdirs', None, 'Comma-separated samoe_jax.train run directories.', required=True)
  flags.DEFINE_string('out', None, 'Output directory.', required=True)
  flags.DEFINE_integer('step', None, 'Step of the fixed-step comparisons (default: the largest step every run has '
                       'a grad_stats record at or before).')
  flags.DEFINE_integer('window', 1, 'grad_stats records averaged per run, ending at --step.')

  def _run(argv: Sequence[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    f = flags.FLAGS
    # The user's input raises ValueError or OSError: cli.run_app prints its message, exit code 1.
    report = gradient_flow_analysis(f.workdirs, f.out, f.step, f.window)
    print('\n'.join(report['sentences']))
    print(report['files']['md'])

  cli.run_app(PROG, _run, sys.argv if argv is None else list(argv))


if __name__ == '__main__':
  sys.exit(main())
