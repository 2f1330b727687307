"""Calibration (issue 25): find a 2-core CPU design in which the SaMoE comparison can say anything at all.

  python -m samoe_jax.experiments.reproduce --suite=calibration --out=DIR --corpus_dir=CORPUS   # train
  python -m samoe_jax.experiments.calibration --out=DIR [--suite=calibration_every_other] [--bench_json=FILE]
  python -m samoe_jax.experiments.calibration --bench [--bench_json=FILE --steps=10 --repeats=2] # throughput

The committed cpu suite (0.83 tokens per non-embedding parameter) sits where parameters buy nothing. The
calibration trains, at equal tokens, the base dense model, one wider dense model and the standard top-1 MoE at
E = 4, 8, 16 (experts of the dense FFN's width on every block, so each MoE has the base dense model's active
parameters per token), and checks three conditions, each a gap of mean final validation cross-entropy (nats)
against the pooled seed std sqrt((s_a^2 + s_b^2) / 2) (sample stds over seeds):

  (a) capacity   the wider dense model beats the base dense model by more than PASS_STDS pooled stds;
  (b) experts    the MoE's loss falls from E = 4 to 8 and from 8 to 16, each step by more than PASS_STDS;
  (c) MoE        the standard MoE (E = 16) beats the dense model of equal active parameters by more than PASS_STDS.

Every gap is also followed over tokens along the validation curves (mean over seeds at each evaluation), with a
least-squares line in log(tokens) (a simple fit, stated as such) and the tokens at which it would cross the pass
line when its slope points there. DIR/report/calibration.md, calibration.json and calibration_gaps.png are written
from the runs' metrics.jsonl; no sentence is written by hand.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

import ml_collections
import numpy as np

from samoe_jax import accounting
from samoe_jax.config.defaults import get_base_config
from samoe_jax.config.layer_plan import moe_layer_indices
from samoe_jax.experiments import suites
from samoe_jax.experiments.suites import ConfigSpec, Suite

PASS_STDS = 2.0
FAR_TOKENS = 1e12   # a fitted crossing beyond this many tokens is reported as such, not as a number
VOCABS = {1024: 'sp1k.model', 2048: 'sp2k.model'}


@dataclasses.dataclass(frozen=True)
class Design:
  """One calibration design: a 4-block GPT of width d_model (FFN 4 d_model, heads of 32), SentencePiece vocab,
  seq 128 x batch, `steps` steps at `lr`, the MoE on the blocks of `layer_plan` (model.layer_plan: 'all', or
  'every_other' as in GShard and Switch); `wide` the wider dense model's d_model."""
  d_model: int = 64
  wide: int = 128
  vocab: int = 1024
  batch: int = 64
  steps: int = 1200
  lr: float = 3e-3
  num_layers: int = 4
  seq_len: int = 128
  experts: tuple[int, ...] = (4, 8, 16)
  evals: int = 6
  eval_tokens: int = 65536     # per validation (>= 64k: eval noise well below seed noise)
  layer_plan: str = 'all'

  @property
  def num_moe(self) -> int:
    """MoE blocks under layer_plan."""
    return len(moe_layer_indices(ml_collections.ConfigDict({'num_layers': self.num_layers,
                                                            'layer_plan': self.layer_plan})))

  @property
  def tokens(self) -> int:
    return self.steps * self.batch * self.seq_len


def heads(d_model: int) -> int:
  """Heads of width 32."""
  return max(1, d_model // 32)


def make_base(design: Design):
  """The base config builder (corpus_dir, cache_dir) -> ConfigDict of `design` (the dense model's shape; the
  specs set the MoE)."""
  def base(corpus_dir: str, cache_dir: str) -> ml_collections.ConfigDict:
    c = get_base_config()
    d = design.d_model
    c.model.vocab_size, c.model.d_model, c.model.num_layers = design.vocab, d, design.num_layers
    c.model.num_heads, c.model.d_ff, c.model.max_len = heads(d), 4 * d, design.seq_len
    c.moe.num_experts = max(design.experts)
    c.pool.size, c.pool.mixing = design.num_moe, 'fixed'
    suites._corpus_data(c, corpus_dir, cache_dir)   # pylint: disable=protected-access
    c.data.vocabulary = os.path.join(corpus_dir, VOCABS[design.vocab])
    c.data.seq_len, c.data.batch_size = design.seq_len, design.batch
    c.moe.group_size = suites.GROUP_SIZE
    c.train.learning_rate = design.lr
    c.train.eval_batches = max(1, -(-design.eval_tokens // (design.batch * design.seq_len)))
    suites._common(c)   # pylint: disable=protected-access
    c.model.layer_plan = design.layer_plan
    return c
  return base


def specs(design: Design) -> tuple[ConfigSpec, ...]:
  """dense (base), dense_dWIDE, moe_eE for E in design.experts (the largest: role 'moe')."""
  out = [suites.dense(design.d_model, heads(design.d_model), name='dense'),
         suites.dense(design.wide, heads(design.wide))]
  top = max(design.experts)
  out += [suites.standard_moe(e, design.num_moe, role='moe' if e == top else 'sweep') for e in design.experts]
  return tuple(out)


def make_suite(name: str, design: Design, seeds: int = 3, budget: str = '') -> Suite:
  """The calibration Suite of `design` (grad_stats: one record, the gradient-flow analysis is not its point)."""
  return Suite(name, f'Calibration: d_model {design.d_model} vs {design.wide}, MoE E = '
               f'{"/".join(map(str, design.experts))} top-1 on {PLACEMENT.get(design.layer_plan, design.layer_plan)}, '
               f'vocab {design.vocab}, '
               f'{design.tokens / 1e6:.1f}M tokens per run.', make_base(design), specs(design), seeds=seeds,
               steps=design.steps, evals=design.evals, grad_stats=1, needs_corpus=True, budget=budget)


PLACEMENT = {'all': 'every block', 'every_other': 'every other block'}
DESIGN = Design(batch=32, steps=400, evals=5)
CALIBRATION = make_suite('calibration', DESIGN, seeds=3, budget='about 45 minutes on 2 idle CPU cores')
# The second design: the MoE on every other block (GShard, Lepikhin et al. 2020; Switch, Fedus et al. 2022), after
# a probe found the all-blocks top-1 MoE behind dense with or without drops (docs/results/calibration_every_other).
DESIGN_EVERY_OTHER = dataclasses.replace(DESIGN, layer_plan='every_other')
CALIBRATION_EVERY_OTHER = make_suite('calibration_every_other', DESIGN_EVERY_OTHER, seeds=3,
                                     budget='about 45 minutes on 2 idle CPU cores')
DESIGNS = {CALIBRATION.name: (CALIBRATION, DESIGN), CALIBRATION_EVERY_OTHER.name: (CALIBRATION_EVERY_OTHER,
                                                                                   DESIGN_EVERY_OTHER)}
for _suite, _ in DESIGNS.values():
  suites.REGISTRY[_suite.name] = _suite   # suites.py imports this module at its end: either order works
# The cpu suite (the comparison in DESIGN_EVERY_OTHER; it adds itself to REGISTRY and DESIGNS) is imported after
# the names it uses, so that importing suites, calibration or cpu_comparison first all work.
from samoe_jax.experiments import cpu_comparison  # noqa: E402,F401  pylint: disable=wrong-import-position


# ------------------------------------------------------------------------------------------- the conditions
@dataclasses.dataclass(frozen=True)
class Gap:
  """How much `better` beats `worse` in final validation cross-entropy: gap = mean(worse) - mean(better) nats
  (> 0: better is better), pooled = sqrt((s_b^2 + s_w^2) / 2) of the per-seed values (sample stds), units =
  gap / pooled (None with fewer than 2 seeds on a side), passed = gap > PASS_STDS * pooled (False at the line)."""
  better: str
  worse: str
  gap: float
  pooled: float
  units: float | None
  passed: bool
  seeds: tuple[int, int]


def sample_std(values: Sequence[float]) -> float:
  """Sample std (ddof 1); nan with fewer than 2 values."""
  return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def gap(better: str, better_ce: Sequence[float], worse: str, worse_ce: Sequence[float],
        pass_stds: float = PASS_STDS) -> Gap:
  """The Gap of two configs' per-seed final cross-entropies (nats)."""
  if not better_ce or not worse_ce:
    return Gap(better, worse, math.nan, math.nan, None, False, (len(better_ce), len(worse_ce)))
  delta = float(np.mean(worse_ce) - np.mean(better_ce))
  pooled = math.sqrt((sample_std(better_ce) ** 2 + sample_std(worse_ce) ** 2) / 2)
  if not math.isfinite(pooled):
    return Gap(better, worse, delta, pooled, None, False, (len(better_ce), len(worse_ce)))
  units = delta / pooled if pooled > 0 else (math.inf if delta > 0 else -math.inf)
  return Gap(better, worse, delta, pooled, units, delta > pass_stds * pooled, (len(better_ce), len(worse_ce)))


def condition_pairs(design: Design) -> dict[str, list[tuple[str, str]]]:
  """Per condition, the (better, worse) config pairs that must all pass: (a) wide dense over dense, (b) each
  larger E over the next smaller, (c) the largest-E MoE over the dense model of equal active parameters."""
  experts = sorted(design.experts)
  return {'a': [(f'dense_d{design.wide}', 'dense')],
          'b': [(f'moe_e{hi}', f'moe_e{lo}') for lo, hi in zip(experts, experts[1:])],
          'c': [(f'moe_e{experts[-1]}', 'dense')]}


CONDITIONS = {'a': 'capacity: the wider dense model beats the base dense model',
              'b': "experts: the standard MoE's loss falls as E grows",
              'c': 'MoE: the standard MoE beats the dense model of equal active parameters'}


# ---------------------------------------------------------------------------------------- gaps over tokens
def gap_curve(better: Sequence[dict[int, float]], worse: Sequence[dict[int, float]],
              tokens_per_step: int) -> list[dict[str, float]]:
  """At every evaluation step all seeds of both configs reached: tokens, the mean gap (nats) and the pooled std
  of the seeds there (nan with one seed)."""
  steps = sorted(set.intersection(*(set(c) for c in list(better) + list(worse)))) if better and worse else []
  out = []
  for step in steps:
    b = [c[step] for c in better]
    w = [c[step] for c in worse]
    g = gap('', b, '', w)
    out.append({'step': step, 'tokens': step * tokens_per_step, 'gap': g.gap, 'pooled_std': g.pooled})
  return out


def fit_crossing(tokens: Sequence[float], gaps: Sequence[float], line: float) -> dict[str, Any]:
  """Least-squares gap = slope * ln(tokens) + intercept (a simple fit) and where it reaches `line` (nats):
  status 'passes' (the last gap is above the line), 'crosses' (the fit rises to it at crossing_tokens),
  'beyond 1e12 tokens' (it rises, too slowly to matter), 'no crossing' (the fit does not rise) or 'too few
  points' (< 2)."""
  t = np.asarray(tokens, np.float64)
  g = np.asarray(gaps, np.float64)
  keep = (t > 0) & np.isfinite(g)
  t, g = t[keep], g[keep]
  out: dict[str, Any] = {'slope_per_e': None, 'intercept': None, 'line': line, 'crossing_tokens': None,
                         'points': int(t.size)}
  if t.size < 2:
    return {**out, 'status': 'too few points'}
  slope, intercept = np.polyfit(np.log(t), g, 1)
  out.update(slope_per_e=float(slope), intercept=float(intercept))
  if math.isfinite(line) and g[-1] > line:
    return {**out, 'status': 'passes'}
  if slope <= 0 or not math.isfinite(line):
    return {**out, 'status': 'no crossing'}
  crossing = math.exp(min((line - intercept) / slope, 700.0))
  return {**out, 'status': 'crosses' if crossing <= FAR_TOKENS else 'beyond 1e12 tokens', 'crossing_tokens': crossing}


# ------------------------------------------------------------------------------------------------ analysis
def throughput(out_dir: str) -> dict[str, dict[str, float]]:
  """Per config from OUT/suite_log.jsonl (complete, uninterrupted runs only): runs, mean seconds per run, model
  GFLOP/s (accounting's train FLOPs / seconds; evaluation, compile and data included in the seconds)."""
  from samoe_jax.experiments import runner  # pylint: disable=g-import-not-at-top
  by: dict[str, list[dict[str, Any]]] = {}
  for r in runner.read_log(out_dir):
    if r.get('status') == 'finished' and r.get('complete'):
      by.setdefault(r['config'], []).append(r)
  return {name: {'runs': len(rs), 'seconds_per_run': float(np.mean([r['seconds'] for r in rs])),
                 'model_gflops_per_s': float(np.mean([r['train_flops'] / r['seconds'] for r in rs])) / 1e9}
          for name, rs in by.items()}


def analyze(suite: Suite, design: Design, out_dir: str, corpus_dir: str = '') -> dict[str, Any]:
  """Everything the report states, from OUT/runs/*/metrics.jsonl and OUT/suite_log.jsonl."""
  from samoe_jax.experiments import results, runner  # pylint: disable=g-import-not-at-top
  runs = runner.plan(suite, out_dir, corpus_dir)
  collected = {r.spec.name: r for r in results.collect(runs)}
  finished = {r.name for r in runs if runner.is_finished(r)}
  log = throughput(out_dir)
  first = {}
  for run in runs:
    first.setdefault(run.spec.name, run.config)
  configs = {name: _config_row(r, accounting.param_counts(first[name]), log.get(name, {}))
             for name, r in collected.items()}
  for name, r in collected.items():
    if r.drop_mode == 'capacity':
      configs[name]['train_dropped_by_quarter'] = dropped_by_quarter(
          [w for w in r.workdirs if os.path.basename(w) in finished], design.steps)
  conditions = {}
  for key, pairs in condition_pairs(design).items():
    parts = []
    for better, worse in pairs:
      b, w = collected[better], collected[worse]
      g = gap(better, b.final_ce, worse, w.final_ce)
      curve = gap_curve(_finished_curves(b, design.steps), _finished_curves(w, design.steps), b.tokens_per_step)
      line = PASS_STDS * g.pooled
      fit = fit_crossing([p['tokens'] for p in curve], [p['gap'] for p in curve], line)
      parts.append({**dataclasses.asdict(g), 'curve': curve, 'fit': fit})
    conditions[key] = {'what': CONDITIONS[key], 'pairs': parts,
                       'passed': bool(parts) and all(p['passed'] for p in parts)}
  missing = [r.name for r in runs if r.name not in finished]
  return {'suite': suite.name, 'design': dataclasses.asdict(design), 'pass_stds': PASS_STDS, 'configs': configs,
          'conditions': conditions, 'runs_planned': len(runs), 'runs_finished': len(runs) - len(missing),
          'missing_runs': missing, 'training_wall_seconds': runner.suite_wall_seconds(out_dir)}


def dropped_by_quarter(workdirs: Sequence[str], steps: int) -> list[float | None]:
  """Mean over runs of the training moe/dropped_fraction averaged over each quarter of the steps (None: no
  record in that quarter)."""
  from samoe_jax.training.metrics_writer import read_metrics  # pylint: disable=g-import-not-at-top
  quarters: list[list[float]] = [[] for _ in range(4)]
  for workdir in workdirs:
    per_run: list[list[float]] = [[] for _ in range(4)]
    for record in read_metrics(workdir, 'train'):
      if 'moe/dropped_fraction' in record:
        per_run[min(3, 4 * (record['step'] - 1) // steps)].append(float(record['moe/dropped_fraction']))
    for q, values in enumerate(per_run):
      if values:
        quarters[q].append(float(np.mean(values)))
  return [float(np.mean(q)) if q else None for q in quarters]


def _finished_curves(r: Any, steps: int) -> list[dict[int, float]]:
  """The validation curves (step -> CE) of the seeds that reached the final evaluation."""
  return [c for c in r.curves if steps in c]


def _config_row(r: Any, counts: dict[str, Any], log: dict[str, float]) -> dict[str, Any]:
  """One config's numbers: parameters (accounting.param_counts), tokens, per-seed final cross-entropy."""
  active_non_emb = float(counts['active_non_embedding'])
  return {'label': r.spec.label, 'role': r.spec.role, 'params_total': float(counts['total']),
          'params_active_per_token': float(counts['active_per_token']), 'active_non_embedding': active_non_emb,
          'tokens': r.tokens, 'tokens_per_active_non_embedding_param': r.tokens / active_non_emb,
          'final_cross_entropy': [float(v) for v in r.final_ce],
          'mean': float(np.mean(r.final_ce)) if r.final_ce else None,
          'std': sample_std(r.final_ce) if r.final_ce else None, 'seeds': r.n,
          'eval_dropped_fraction_mean': r.dropped_mean('eval'), 'drop_floor_uniform': r.drop_floor, **log}


# -------------------------------------------------------------------------------------------------- writing
def _units(g: dict[str, Any]) -> str:
  return 'n/a (one seed)' if g['units'] is None else f'{g["units"]:+.1f}'


def _fit_sentence(g: dict[str, Any]) -> str:
  """The trend of one gap over tokens, in words (the fit is a least-squares line in ln tokens)."""
  fit = g['fit']
  if fit['status'] == 'too few points':
    return 'too few evaluations for a trend'
  trend = (f'fit gap = {fit["slope_per_e"]:+.4f} ln(tokens) {fit["intercept"]:+.3f} nats over '
           f'{fit["points"]} evaluations (a simple least-squares line, not a scaling law)')
  if fit['status'] == 'passes':
    return f'{trend}; already above the pass line ({fit["line"]:.4f} nats)'
  if fit['status'] == 'crosses':
    return (f'{trend}; it would reach the pass line ({fit["line"]:.4f} nats) at about '
            f'{fit["crossing_tokens"] / 1e6:.3g}M tokens per run')
  if fit['status'] == 'beyond 1e12 tokens':
    return f'{trend}; it rises too slowly to reach the pass line ({fit["line"]:.4f} nats) within 1e12 tokens'
  return f'{trend}; it does not rise towards the pass line ({fit["line"]:.4f} nats): no crossing'


def verdict_lines(analysis: dict[str, Any]) -> list[str]:
  """One sentence per condition and one overall, from the numbers."""
  out = []
  for key, cond in analysis['conditions'].items():
    parts = '; '.join(f'{p["better"]} vs {p["worse"]}: ' + (
        f'{p["gap"]:+.4f} nats = {_units(p)} pooled std ({"pass" if p["passed"] else "fail"})'
        if math.isfinite(p['gap']) else 'not finished (fail)') for p in cond['pairs'])
    out.append(f'({key}) {cond["what"]}: **{"PASS" if cond["passed"] else "FAIL"}** — {parts}.')
  passed = [k for k, c in analysis['conditions'].items() if c['passed']]
  failed = [k for k in analysis['conditions'] if k not in passed]
  if not failed:
    out.append('All three conditions hold: this design is in a regime where the SaMoE comparison can be tested.')
  else:
    out.append(f'Conditions {", ".join(f"({k})" for k in failed)} do not hold at '
               f'{analysis["design"]["steps"] * analysis["design"]["batch"] * analysis["design"]["seq_len"] / 1e6:.2f}'
               f'M tokens per run: this design does not (yet) reach the regime'
               + (f'; {", ".join(f"({k})" for k in passed)} hold{"s" if len(passed) == 1 else ""}.' if passed
                  else '.'))
  drops = [(n, c['train_dropped_by_quarter']) for n, c in analysis['configs'].items()
           if c.get('train_dropped_by_quarter') and None not in (c['train_dropped_by_quarter'][0],
                                                                   c['train_dropped_by_quarter'][-1])]
  if drops:
    out.append('Dropped (token, choice) assignments in training, first vs last quarter of the run (mean over '
               'seeds): ' + ', '.join(f'{n} {100 * q[0]:.1f} % → {100 * q[-1]:.1f} %' for n, q in drops)
               + ': a token dropped in an MoE layer skips its FFN, so the MoE configs trained part of the run with '
               'less FFN compute per token than the dense model.')
  if analysis['missing_runs']:
    out.append(f'Partial: {analysis["runs_finished"]} of {analysis["runs_planned"]} runs finished; missing '
               f'{", ".join(analysis["missing_runs"])}.')
  return out


def markdown(analysis: dict[str, Any], command: str, commit: str, machine: str) -> str:
  """calibration.md."""
  d = analysis['design']
  lines = [f'# Calibration: {analysis["suite"]}', '', f'- command: `{command}`', f'- report written at commit '
           f'{commit}', f'- machine: {machine}', f'- training wall time (suite log): '
           f'{analysis["training_wall_seconds"] / 60:.1f} min for {analysis["runs_finished"]} of '
           f'{analysis["runs_planned"]} runs', f'- design: {d}', f'- pass line: a gap of more than '
           f'{analysis["pass_stds"]:g} pooled seed std sqrt((s_a^2 + s_b^2) / 2) of the final validation '
           'cross-entropy (nats); gaps > 0 mean the first config is better', '', '## Verdict', '']
  lines += [f'- {v}' for v in verdict_lines(analysis)]
  lines += ['', '## Configs', '', '| config | stored params | active / token | active non-embedding | tokens | '
            'tokens / active non-emb. param | final val. CE per seed | mean ± std | val. dropped | run time | '
            'model GFLOP/s |', '|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|']
  for name, c in analysis['configs'].items():
    ce = ', '.join(f'{v:.4f}' for v in c['final_cross_entropy']) or 'not finished'
    mean = f'{c["mean"]:.4f} ± {c["std"]:.4f}' if c['seeds'] > 1 else (f'{c["mean"]:.4f}' if c['seeds'] else '—')
    dropped = '—' if c['eval_dropped_fraction_mean'] is None else f'{100 * c["eval_dropped_fraction_mean"]:.2f} %'
    run_s = f'{c["seconds_per_run"]:.0f} s' if 'seconds_per_run' in c else 'n/a'
    rate = f'{c["model_gflops_per_s"]:.1f}' if 'model_gflops_per_s' in c else 'n/a'
    lines.append(f'| {c["label"]} (`{name}`) | {c["params_total"] / 1e6:.3f}M | '
                 f'{c["params_active_per_token"] / 1e6:.3f}M | {c["active_non_embedding"] / 1e6:.3f}M | '
                 f'{c["tokens"] / 1e6:.2f}M | {c["tokens_per_active_non_embedding_param"]:.1f} | {ce} | {mean} | '
                 f'{dropped} | {run_s} | {rate} |')
  lines += drop_lines(analysis['configs'])
  lines += bench_lines(analysis.get('bench', []))
  lines += ['', '## Gaps over tokens (validation curves, mean over seeds)', '']
  for key, cond in analysis['conditions'].items():
    for p in cond['pairs']:
      lines += [f'### ({key}) {p["better"]} vs {p["worse"]}', '', f'Trend: {_fit_sentence(p)}.', '',
                '| tokens | gap (nats) | pooled std | gap / std |', '|---:|---:|---:|---:|']
      for pt in p['curve']:
        ratio = pt['gap'] / pt['pooled_std'] if pt['pooled_std'] and math.isfinite(pt['pooled_std']) else math.nan
        lines.append(f'| {pt["tokens"] / 1e6:.2f}M | {pt["gap"]:+.4f} | {pt["pooled_std"]:.4f} | {ratio:+.1f} |')
      lines.append('')
  lines += ['![gaps](calibration_gaps.png)', '']
  return '\n'.join(lines)


def drop_lines(configs: dict[str, dict[str, Any]]) -> list[str]:
  """The MoE configs' dropped share of (token, choice) assignments in training, by quarter of the run."""
  rows = [(n, c['train_dropped_by_quarter']) for n, c in configs.items()
          if any(q is not None for q in c.get('train_dropped_by_quarter', []))]
  if not rows:
    return []
  lines = ['', '## Dropped assignments in training (capacity factor 1.25; mean over finished seeds)', '',
           '| config | 1st quarter | 2nd | 3rd | 4th | uniform-routing floor |', '|---|---:|---:|---:|---:|---:|']
  for name, quarters in rows:
    cells = ' | '.join('n/a' if q is None else f'{100 * q:.1f} %' for q in quarters)
    floor = configs[name]['drop_floor_uniform']
    lines.append(f'| `{name}` | {cells} | {"n/a" if floor is None else f"{100 * floor:.2f} %"} |')
  return lines


def bench_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
  """The same-process throughput table (samoe_jax.bench rows: synthetic batches, best round), if any."""
  if not rows:
    return []
  lines = ['', '## Throughput (samoe_jax.bench, same process, synthetic batches)', '',
           '| config | tokens / step | step | tokens/s | model GFLOP/s | matmul GFLOP/s | ratio |',
           '|---|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    lines.append(f'| {r["config"]} | {r["tokens_per_step"]} | {1e3 * r["step_s"]:.0f} ms | {r["tokens_per_s"]:.0f} | '
                 f'{r["achieved_flops_per_s"] / 1e9:.1f} | {r["matmul_flops_per_s"] / 1e9:.0f} | '
                 f'{r["ratio_to_matmul"]:.2f} |')
  return lines


def plot(analysis: dict[str, Any], path: str) -> None:
  """Gap (nats) against tokens per condition pair, the fit (dashed) and the pass line (dotted)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  pairs = [(k, p) for k, c in analysis['conditions'].items() for p in c['pairs']]
  fig, axes = plt.subplots(1, len(pairs), figsize=(4 * len(pairs), 3.4), squeeze=False)
  for ax, (key, p) in zip(axes[0], pairs):
    t = np.array([pt['tokens'] for pt in p['curve']], np.float64)
    ax.plot(t, [pt['gap'] for pt in p['curve']], 'o-', label='gap (mean over seeds)')
    if p['fit']['slope_per_e'] is not None and t.size:
      hi = max(t.max(), min(p['fit']['crossing_tokens'] or 0, 100 * t.max()))
      xs = np.geomspace(t.min(), hi, 50)
      ax.plot(xs, p['fit']['slope_per_e'] * np.log(xs) + p['fit']['intercept'], '--', label='fit (ln tokens)')
    if math.isfinite(p['fit']['line']):
      ax.axhline(p['fit']['line'], ls=':', c='k', label=f'{analysis["pass_stds"]:g} pooled std')
    ax.axhline(0, c='grey', lw=0.5)
    if t.size:
      ax.set_xscale('log')
    ax.set_title(f'({key}) {p["better"]} vs {p["worse"]}', fontsize=9)
    ax.set_xlabel('tokens')
    ax.set_ylabel('gap in val. CE (nats)')
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(out_dir: str, suite: Suite = CALIBRATION, design: Design = DESIGN, corpus_dir: str = '',
                 command: str = '', bench_json: str = '') -> str:
  """Writes OUT/report/calibration.md, calibration.json and calibration_gaps.png (with the bench rows of
  `bench_json` when given); returns the .md path."""
  import json  # pylint: disable=g-import-not-at-top
  from samoe_jax.experiments import report  # pylint: disable=g-import-not-at-top
  analysis = analyze(suite, design, out_dir, corpus_dir)
  if bench_json:
    with open(bench_json) as f:
      analysis['bench'] = json.load(f)
  analysis.update(command=command or f'python -m {__name__} --out={out_dir}', commit=report.commit(),
                  machine=report.machine(), verdict=verdict_lines(analysis))
  out = os.path.join(out_dir, 'report')
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'calibration.json'), 'w') as f:
    json.dump(analysis, f, indent=1, sort_keys=True, default=float)
  plot(analysis, os.path.join(out, 'calibration_gaps.png'))
  path = os.path.join(out, 'calibration.md')
  with open(path, 'w') as f:
    f.write(markdown(analysis, analysis['command'], analysis['commit'], analysis['machine']))
  return path


def bench(out_path: str, steps: int, repeats: int, suite: Suite = CALIBRATION) -> list[dict[str, Any]]:
  """samoe_jax.bench's same-process timing (model GFLOP/s vs the matmul rate) of the suite's configs, seed 0, on
  synthetic batches; written as JSON to out_path when given."""
  import json  # pylint: disable=g-import-not-at-top
  from samoe_jax import bench as bench_lib  # pylint: disable=g-import-not-at-top
  named = [(spec.name, suite.config(spec, 0)) for spec in suite.configs]
  rows = bench_lib.benchmark(named, steps, repeats)
  if out_path:
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, 'w') as f:
      json.dump(rows, f, indent=1)
  return rows


def main(argv: Sequence[str] | None = None) -> None:
  """The CLI (module docstring)."""
  import shlex  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from samoe_jax import cli  # pylint: disable=g-import-not-at-top
  out = flags.DEFINE_string('out', '', 'The suite directory of the calibration runs (reproduce --out).')
  from samoe_jax.experiments import calibration as registered  # pylint: disable=g-import-not-at-top,import-self
  designs = registered.DESIGNS   # run as __main__, the designs other modules registered are in the imported module
  suite_name = flags.DEFINE_enum('suite', CALIBRATION.name, list(designs), 'Which calibration design (or the cpu '
                                 'suite, whose regime conditions it checks).')
  corpus = flags.DEFINE_string('corpus_dir', '', 'The corpus the runs trained on (only named in the configs).')
  do_bench = flags.DEFINE_bool('bench', False, 'Time the configs (samoe_jax.bench) instead of reporting.')
  bench_json = flags.DEFINE_string('bench_json', '', '--bench: also write the rows as JSON here; report: add '
                                   'the throughput table of such a file.')
  steps = flags.DEFINE_integer('steps', 10, '--bench: timed steps per round.')
  repeats = flags.DEFINE_integer('repeats', 2, '--bench: rounds (each config reports its best).')
  prog = 'samoe_jax.experiments.calibration'

  def run(args: Sequence[str]) -> None:
    if len(args) > 1:
      raise app.UsageError(f'unexpected arguments: {args[1:]}')
    suite, design = designs[suite_name.value]
    if do_bench.value:
      bench(bench_json.value, steps.value, repeats.value, suite)
      return
    if not out.value:
      raise ValueError('--out is required')
    print(write_report(out.value, suite, design, corpus_dir=corpus.value,
                       command=shlex.join([prog] + list(sys.argv[1:])), bench_json=bench_json.value))

  cli.run_app(prog, run, list(argv) if argv is not None else sys.argv)


if __name__ == '__main__':
  main()
