"""A suite's numbers, per config over its seeds, and the conclusions computed from them (docs/experiments.md).

Per config: stored / active / materialized parameters (samoe_jax.models.accounting), tokens trained, the final
validation perplexity exp(cross-entropy) mean and sample std over seeds, the validation cross-entropy curves, the
reduction in stored parameters against the standard MoE, the final speedup factor against the dense family
(samoe_jax.analysis.speedup), and the share of (token, choice) assignments the MoE layers dropped at the last step,
in training (the last train record, moe/dropped_fraction) and validation (eval/moe/dropped_fraction), mean over
seeds, next to the drop floor of uniform routing at the config's routing groups (samoe_jax.analysis.drop_floor).
A difference is "within noise" when it is at most one pooled standard deviation sqrt((s_a^2 + s_b^2) / 2) of the
two configs' seeds; otherwise it is stated in those units. Every sentence is built from these numbers; none is
written by hand.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

import numpy as np

from samoe_jax.models import accounting
from samoe_jax.analysis import mixing_trajectories
from samoe_jax.analysis.drop_floor import config_drop_floors
from samoe_jax.config.layer_plan import moe_layer_indices
from samoe_jax.experiments.runner import Run
from samoe_jax.experiments.suites import ConfigSpec
from samoe_jax.training.metrics_writer import read_metrics
from samoe_jax.evaluation.validation import DROPPED

METRIC = 'eval/cross_entropy'
EVAL_DROPPED = 'eval/' + DROPPED


@dataclasses.dataclass
class ConfigResult:
  """One config over its seeds."""
  spec: ConfigSpec
  workdirs: list[str]
  params: dict[str, float]
  tokens: int
  final_ce: list[float]                     # per seed, at train.steps
  curves: list[dict[int, float]]            # per seed: step -> validation cross-entropy
  tokens_per_step: int
  speedup: str = ''                         # final-step speedup factor against the dense family (text)
  speedup_value: float | None = None
  drop_mode: str = 'capacity'               # 'dense' (no MoE layer), 'dropless' (moe.dispatch='ragged'), 'capacity'
  drop_floor: float | None = None           # uniform-routing training floor, worst MoE layer (None: dense)
  train_dropped: list[float] = dataclasses.field(default_factory=list)   # per finished seed, last train record
  eval_dropped: list[float] = dataclasses.field(default_factory=list)    # per finished seed, last validation
  mixing: list[dict[str, float]] = dataclasses.field(default_factory=list)   # per seed, learned mixing at the end
  mixing_trajectories: list[dict[str, Any]] = dataclasses.field(default_factory=list)   # per seed (P >= 2)

  @property
  def perplexities(self) -> np.ndarray:
    return np.exp(np.asarray(self.final_ce, np.float64))

  @property
  def mean(self) -> float:
    return float(np.mean(self.perplexities)) if self.final_ce else math.nan

  @property
  def std(self) -> float:
    return float(np.std(self.perplexities, ddof=1)) if len(self.final_ce) > 1 else 0.0

  @property
  def n(self) -> int:
    return len(self.final_ce)

  def dropped_mean(self, split: str) -> float | None:
    """Mean over seeds of the last-step dropped fraction, split 'train' or 'eval' (None: not logged)."""
    values = self.train_dropped if split == 'train' else self.eval_dropped
    return float(np.mean(values)) if values else None

  def dropped_cell(self, split: str) -> str:
    """The table cell: '—' (dense), 'dropless', 'n/a' (not logged) or the mean as a percentage."""
    if self.drop_mode != 'capacity':
      return '—' if self.drop_mode == 'dense' else 'dropless'
    mean = self.dropped_mean(split)
    return 'n/a' if mean is None else f'{100 * mean:.2f} %'


def drop_mode(config: Any) -> str:
  """'dense' (no MoE layer), 'dropless' (moe.dispatch='ragged': every assignment kept) or 'capacity'."""
  if not moe_layer_indices(config.model):
    return 'dense'
  return 'dropless' if config.moe.dispatch == 'ragged' else 'capacity'


def _drop_floor(config: Any) -> float | None:
  """The worst MoE layer's uniform-routing training floor; None for a dense model or expert-choice routing."""
  try:
    return max(config_drop_floors(config).values(), default=None)
  except ValueError:
    return None


def _final_value(records: Sequence[dict[str, Any]], kind: str, key: str, step: int) -> float | None:
  """`key` of the `kind` record at `step` (None when absent)."""
  return next((r[key] for r in records if r.get('kind', 'train') == kind and r['step'] == step and key in r), None)


def collect(runs: Sequence[Run]) -> list[ConfigResult]:
  """ConfigResults in suite order, from every run's metrics.jsonl (runs without a final validation are left out of
  the means, and their workdirs still listed)."""
  out: dict[str, ConfigResult] = {}
  for run in runs:
    config = run.config
    if run.spec.name not in out:
      counts = accounting.param_counts(config)
      tokens_per_step = config.data.batch_size * config.data.seq_len
      out[run.spec.name] = ConfigResult(
          run.spec, [], {k: float(counts[k]) for k in ('total', 'active_per_token', 'materialized')},
          tokens_per_step * config.train.steps, [], [], tokens_per_step, drop_mode=drop_mode(config),
          drop_floor=_drop_floor(config))
    result = out[run.spec.name]
    result.workdirs.append(run.workdir)
    records = read_metrics(run.workdir)
    curve = {r['step']: r[METRIC] for r in records if r.get('kind') == 'eval' and METRIC in r}
    if curve:
      result.curves.append(curve)
    if config.train.steps in curve:
      result.final_ce.append(curve[config.train.steps])
    for values, kind, key in ((result.train_dropped, 'train', DROPPED), (result.eval_dropped, 'eval', EVAL_DROPPED)):
      value = _final_value(records, kind, key, config.train.steps)
      if value is not None:
        values.append(float(value))
    traj = mixing_trajectories.trajectories([r for r in records if r.get('kind', 'train') == 'train'])
    if traj is not None and traj['pool_size'] > 1:
      result.mixing_trajectories.append(traj)
      result.mixing.append({'final_step': traj['steps'][-1], **mixing_trajectories.final_summary(traj)})
  return list(out.values())


def mixing_lines(results: Sequence[ConfigResult]) -> list[str]:
  """Markdown rows per learned-mixing config (P >= 2): where its mixtures ended, mean over seeds (entropy as a
  fraction of log P: 1 = uniform; the largest weight: 1/P = uniform, 1 = one pool entry)."""
  rows = [r for r in results if r.mixing]
  if not rows:
    return []
  lines = ['| config | seeds | entropy / log P (mean over layers) | largest weight (mean over layers) | '
           'largest weight (any layer) |', '|---|---:|---:|---:|---:|']
  for r in rows:
    mean = {k: float(np.mean([m[k] for m in r.mixing])) for k in r.mixing[0] if k != 'final_step'}
    lines.append(f'| {r.spec.label} (`{r.spec.name}`) | {len(r.mixing)} | {mean["entropy_fraction"]:.3f} | '
                 f'{mean["max_weight_mean"]:.3f} | {mean["max_weight_largest"]:.3f} |')
  return lines


def pooled_std(a: ConfigResult, b: ConfigResult) -> float:
  return math.sqrt((a.std ** 2 + b.std ** 2) / 2)


def compare(result: ConfigResult, reference: ConfigResult) -> tuple[float, float | None, str]:
  """(perplexity difference result - reference, the difference in pooled stds or None, verdict in words)."""
  delta = result.mean - reference.mean
  spread = pooled_std(result, reference)
  if spread <= 0:
    return delta, None, 'one seed each: no noise estimate'
  units = delta / spread
  if abs(units) <= 1:
    return delta, units, 'within noise (at most 1 pooled std)'
  return delta, units, f'{"worse" if units > 0 else "better"} by {abs(units):.1f} pooled std'


def _ppl(r: ConfigResult) -> str:
  return f'{r.mean:.2f} ± {r.std:.2f}' if r.n > 1 else f'{r.mean:.2f}'


def attach_speedups(results: Sequence[ConfigResult], speedup: dict[str, Any] | None) -> None:
  """Each config's final-step speedup factor from samoe_jax.analysis.speedup's report (groups named NAME)."""
  if not speedup:
    return
  runs = speedup.get('metrics', {}).get(METRIC, {}).get('runs', {})
  for result in results:
    final = runs.get(result.spec.name, {}).get('final')
    if final:
      result.speedup = final.get('speedup_text', '')
      result.speedup_value = final.get('speedup')


def conclusions(results: Sequence[ConfigResult]) -> list[str]:
  """Sentences computed from the numbers (module docstring)."""
  by_role: dict[str, list[ConfigResult]] = {}
  for r in results:
    if r.n:
      by_role.setdefault(r.spec.role, []).append(r)
  moe = (by_role.get('moe') or [None])[0]
  dense = next((r for r in by_role.get('dense', []) if r.spec.name == 'dense'), None)
  out = []
  if moe is None:
    return ['No standard-MoE run finished: nothing to compare with.']
  if dense is not None:
    delta, units, verdict = compare(moe, dense)
    out.append(f'{moe.spec.label} vs the dense model of the same shape ({dense.spec.label}), equal active '
               f'parameters ({moe.params["active_per_token"] / 1e6:.2f}M vs {dense.params["active_per_token"] / 1e6:.2f}M'
               f' per token) and tokens: validation perplexity {_ppl(moe)} vs {_ppl(dense)} ({delta:+.2f}; '
               f'{verdict}); {moe.params["total"] / dense.params["total"]:.1f}x the stored parameters.')
  if moe.speedup:
    out.append(f'{moe.spec.label}: MoE speedup factor against the dense family at the last step: {moe.speedup}.')
  shared = by_role.get('samoe', []) + by_role.get('baseline', [])
  for r in shared:
    delta, units, verdict = compare(r, moe)
    reduction = moe.params['total'] / r.params['total']
    out.append(f'{r.spec.label}: {reduction:.2f}x fewer stored parameters than {moe.spec.label} '
               f'({r.params["total"] / 1e6:.2f}M vs {moe.params["total"] / 1e6:.2f}M), validation perplexity '
               f'{_ppl(r)} vs {_ppl(moe)} ({delta:+.2f}; {verdict}).')
  samoe = by_role.get('samoe', [])
  matching = [r for r in samoe if compare(r, moe)[0] <= pooled_std(r, moe)]
  if samoe and matching:
    best = max(matching, key=lambda r: moe.params['total'] / r.params['total'])
    out.append(f'The SaMoE claim (equal or better quality with fewer parameters) holds at this scale for '
               f'{", ".join(r.spec.label for r in matching)}; the largest saving within noise of the standard MoE or '
               f'better is {best.spec.label}: {moe.params["total"] / best.params["total"]:.2f}x fewer stored '
               f'parameters.')
  elif samoe:
    closest = min(samoe, key=lambda r: r.mean)
    out.append(f'The SaMoE claim does not hold at this scale: no SaMoE pool size reached the standard MoE\'s '
               f'perplexity within noise; the closest is {closest.spec.label} at {_ppl(closest)} vs {_ppl(moe)}.')
  learned = [r for r in samoe if r.spec.overrides.get('pool.size', 1) > 1]
  fixed = by_role.get('baseline', [])
  if learned and fixed:
    best_learned = min(learned, key=lambda r: r.mean)
    for r in fixed:
      if abs(r.params['total'] - best_learned.params['total']) / best_learned.params['total'] < 0.05:
        delta, _, verdict = compare(best_learned, r)
        out.append(f'At about the same stored parameters, {best_learned.spec.label} vs {r.spec.label}: '
                   f'{_ppl(best_learned)} vs {_ppl(r)} ({delta:+.2f}; {verdict}).')
  sweep = sorted([r for r in by_role.get('sweep', []) + [moe]], key=lambda r: r.params['total'])
  if len(sweep) > 1:
    out.append('Standard MoE over the number of experts: ' + ', '.join(
        f'{r.spec.label.replace(" (standard)", "")}: {_ppl(r)}' for r in sweep) + '.')
  return out


def table(results: Sequence[ConfigResult], moe_total: float | None) -> list[str]:
  """Markdown rows: config, stored / active / materialized parameters, reduction vs MoE, tokens, perplexity, seeds,
  dropped assignments (train, validation), speedup."""
  lines = ['| config | stored params | active / token | materialized | stored vs standard MoE | tokens | '
           'validation perplexity (mean ± std) | seeds | dropped, train (last step) | dropped, validation | '
           'speedup vs dense (last step) |',
           '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|']
  for r in results:
    ratio = moe_total / r.params['total'] if moe_total else None
    reduction = 'n/a' if ratio is None else (f'{ratio:.2f}x fewer' if ratio >= 1 else f'{1 / ratio:.2f}x more')
    lines.append(f'| {r.spec.label} (`{r.spec.name}`) | {r.params["total"] / 1e6:.2f}M | '
                 f'{r.params["active_per_token"] / 1e6:.2f}M | {r.params["materialized"] / 1e6:.2f}M | '
                 f'{reduction} | {r.tokens / 1e6:.2f}M | {_ppl(r) if r.n else "not finished"} | {r.n} | '
                 f'{r.dropped_cell("train")} | {r.dropped_cell("eval")} | {r.speedup or "n/a"} |')
  return lines


def to_json(results: Sequence[ConfigResult]) -> list[dict[str, Any]]:
  return [{'name': r.spec.name, 'label': r.spec.label, 'role': r.spec.role, 'overrides': dict(r.spec.overrides),
           'workdirs': [os.path.basename(w) for w in r.workdirs], 'params': r.params, 'tokens': r.tokens,
           'final_cross_entropy': r.final_ce, 'perplexity_mean': r.mean, 'perplexity_std': r.std, 'seeds': r.n,
           'speedup': r.speedup, 'speedup_value': r.speedup_value, 'drop_mode': r.drop_mode,
           'drop_floor_uniform': r.drop_floor, 'train_dropped_fraction': r.train_dropped,
           'train_dropped_fraction_mean': r.dropped_mean('train'), 'eval_dropped_fraction': r.eval_dropped,
           'eval_dropped_fraction_mean': r.dropped_mean('eval'), 'mixing_final': r.mixing,
           'curves': [{str(k): v for k, v in sorted(c.items())} for c in r.curves]} for r in results]
