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
import json
import math
import os
import shlex
import sys
from typing import Any, Sequence

import numpy as np
from absl import app, flags

from samoe_jax import cli
from samoe_jax.analysis import provenance
from samoe_jax.experiments import cpu_comparison, results, runner
from samoe_jax.experiments.calibration_design import (CALIBRATION, CALIBRATION_EVERY_OTHER, DESIGN,
                                                      DESIGN_EVERY_OTHER, Design)
from samoe_jax.experiments.suites import Suite
from samoe_jax.models import accounting
from samoe_jax.training.metrics_writer import read_metrics
from samoe_jax.training.throughput_bench import benchmark

PASS_STDS = 2.0
FAR_TOKENS = 1e12   # a fitted crossing beyond this many tokens is reported as such, not as a number
PROG = 'samoe_jax.experiments.calibration'
DESIGNS = {CALIBRATION.name: (CALIBRATION, DESIGN), CALIBRATION_EVERY_OTHER.name: (CALIBRATION_EVERY_OTHER,
                                                                                   DESIGN_EVERY_OTHER),
           cpu_comparison.CPU.name: (cpu_comparison.CPU, cpu_comparison.DESIGN)}   # the cpu suite: its regime (a)-(c)


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
  by: dict[str, list[dict[str, Any]]] = {}
  for r in runner.read_log(out_dir):
    if r.get('status') == 'finished' and r.get('complete'):
      by.setdefault(r['config'], []).append(r)
  return {name: {'runs': len(rs), 'seconds_per_run': float(np.mean([r['seconds'] for r in rs])),
                 'model_gflops_per_s': float(np.mean([r['train_flops'] / r['seconds'] for r in rs])) / 1e9}
          for name, rs in by.items()}


def analyze(suite: Suite, design: Design, out_dir: str, corpus_dir: str = '') -> dict[str, Any]:
  """Everything the report states, from OUT/runs/*/metrics.jsonl and OUT/suite_log.jsonl."""
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
  analysis = analyze(suite, design, out_dir, corpus_dir)
  if bench_json:
    with open(bench_json) as f:
      analysis['bench'] = json.load(f)
  analysis.update(command=command or f'python -m {__name__} --out={out_dir}', commit=provenance.commit(),
                  machine=provenance.machine(), verdict=verdict_lines(analysis))
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
  named = [(spec.name, suite.config(spec, 0)) for spec in suite.configs]
  rows = benchmark(named, steps, repeats)
  if out_path:
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, 'w') as f:
      json.dump(rows, f, indent=1)
  return rows


def _run(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  suite, design = DESIGNS[f.suite]
  if f.bench:
    bench(f.bench_json, f.steps, f.repeats, suite)
    return
  if not f.out:
    raise ValueError('--out is required')
  print(write_report(f.out, suite, design, corpus_dir=f.corpus_dir,
                     command=shlex.join([PROG] + list(sys.argv[1:])), bench_json=f.bench_json))


def main(argv: Sequence[str] | None = None) -> None:
  """The command (python -m, a console script): defines its flags here, not at import (every command module
  imports in one process), and runs through cli.run_app."""
  flags.DEFINE_string('out', '', 'The suite directory of the calibration runs (reproduce --out).')
  flags.DEFINE_enum('suite', CALIBRATION.name, list(DESIGNS), 'Which calibration design (or the cpu suite, whose '
                    'regime conditions it checks).')
  flags.DEFINE_string('corpus_dir', '', 'The corpus the runs trained on (only named in the configs).')
  flags.DEFINE_bool('bench', False, 'Time the configs (samoe_jax.bench) instead of reporting.')
  flags.DEFINE_string('bench_json', '', '--bench: also write the rows as JSON here; report: add the throughput '
                      'table of such a file.')
  flags.DEFINE_integer('steps', 10, '--bench: timed steps per round.')
  flags.DEFINE_integer('repeats', 2, '--bench: rounds (each config reports its best).')
  cli.run_app(PROG, _run, sys.argv if argv is None else list(argv))


if __name__ == '__main__':
  sys.exit(main())
