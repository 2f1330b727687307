"""The suite report: OUT/report/{report.md, results.json, *.png, speedup/, gradient_flow/} (docs/experiments.md).

Everything publishable lives in OUT/report (relative links only), so the folder can be copied as it is, e.g. into
docs/results/. The header names the command, the commit, the machine and the training wall time; the tables and
conclusions are computed from the runs' metrics.jsonl (samoe_jax.experiments.results), the MoE speedup factor by
samoe_jax.analysis.speedup and the gradient-flow analysis by samoe_jax.analysis.gradient_flow.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Sequence

import jax

from samoe_jax.analysis import gradient_flow, speedup
from samoe_jax.analysis.drop_floor import group_tokens
from samoe_jax.analysis.provenance import commit, machine
from samoe_jax.experiments import figures
from samoe_jax.experiments import results as results_lib
from samoe_jax.experiments.runner import Run, is_finished, read_log, suite_wall_seconds
from samoe_jax.experiments.suites import Suite
from samoe_jax.training.metrics_writer import format_duration, read_metrics

def corpus_train_tokens(corpus_dir: str, vocabulary: str) -> int | None:
  """Training tokens of the experiment corpus under the runs' vocabulary: the vocabulary's own counts file
  (spNk.json beside spNk.model, data/corpus_vocab.py) or, for the corpus's own sp4k.model, manifest.json's
  splits.train.tokens; None when neither is there."""
  counts = os.path.splitext(vocabulary)[0] + '.json' if vocabulary.endswith('.model') else ''
  if counts and os.path.isfile(counts):
    with open(counts) as f:
      return json.load(f).get('tokens', {}).get('train')
  path = os.path.join(corpus_dir, 'manifest.json')
  if not os.path.isfile(path) or os.path.basename(vocabulary) != 'sp4k.model':
    return None
  with open(path) as f:
    return json.load(f).get('splits', {}).get('train', {}).get('tokens')


def _corpus_line(corpus_dir: str, tokens_per_run: int, vocabulary: str) -> str:
  train = corpus_train_tokens(corpus_dir, vocabulary) if corpus_dir else None
  if not train:
    return f'- tokens per run: {tokens_per_run / 1e6:.2f}M'
  once = ('so no sequence is seen twice (one pass, part of an epoch)' if tokens_per_run <= train else
          f'so the corpus is seen {tokens_per_run / train:.1f} times')
  return (f'- tokens per run: {tokens_per_run / 1e6:.2f}M of the experiment corpus\'s {train / 1e6:.1f}M training '
          f'tokens, {once}')


def _analyses(runs: Sequence[Run], report_dir: str, rows: list[results_lib.ConfigResult]
              ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, list[str]]:
  """(speedup report, gradient-flow report, notes on what could not be computed)."""
  finished = [r for r in runs if is_finished(r)]
  notes = []
  dense = [r.workdir for r in finished if r.spec.role == 'dense']
  others = [r.workdir for r in finished if r.spec.role != 'dense']
  speedup_report = grad_report = None
  try:
    speedup_report = speedup.speedup_analysis(dense, others, os.path.join(report_dir, 'speedup'))
    results_lib.attach_speedups(rows, speedup_report)
  except ValueError as err:
    notes.append(f'MoE speedup factor not computed: {err}')
  with_stats = [r.workdir for r in finished if read_metrics(r.workdir, 'grad_stats')]
  try:
    grad_report = gradient_flow.gradient_flow_analysis(with_stats, os.path.join(report_dir, 'gradient_flow'))
  except ValueError as err:
    notes.append(f'gradient-flow analysis not computed: {err}')
  return speedup_report, grad_report, notes


def _trained_at(out_dir: str) -> str:
  """The commits the runs were trained at (suite_log.jsonl; logs older than the field say so)."""
  commits = sorted({r.get('commit', 'not logged') for r in read_log(out_dir)})
  return f'- runs trained at: {", ".join(f"`{c}`" for c in commits) or "no run trained yet"}'


def _figure_lines(title: str, names: Sequence[str | None], prefix: str = '') -> list[str]:
  lines = [f'### {title}', '']
  lines += [f'![{name}]({prefix}{name})' for name in names if name]
  return lines + ['']


def _seeds_line(suite: Suite, runs: Sequence[Run]) -> str:
  seeds = sorted({r.seed for r in runs})
  note = '' if len(seeds) == suite.seeds else f" (the suite's default is {suite.seeds}; this report has {len(seeds)})"
  return f'- seeds per config: {len(seeds)}, seeds {seeds}{note}'


def _groups_line(runs: Sequence[Run], rows: Sequence[results_lib.ConfigResult]) -> str:
  """Routing-group size and the worst config's uniform-routing drop floor (samoe_jax.analysis.drop_floor)."""
  floors = [(r.drop_floor, r.spec.name) for r in rows if r.drop_floor is not None]
  if not runs or not floors:
    return '- routing groups: no MoE config'
  config = runs[0].config
  floor, name = max(floors)
  return (f'- routing groups: {group_tokens(config)} tokens (moe.group_size={config.moe.group_size}, data.seq_len='
          f'{config.data.seq_len}); uniform random routing would drop at most {100 * floor:.2f} % of the training '
          f'assignments (`{name}`; samoe_jax.analysis.drop_floor)')


def write_report(suite: Suite, runs: Sequence[Run], out_dir: str, command: str, corpus_dir: str = '') -> str:
  """Writes OUT/report/; returns the path of report.md."""
  start = time.time()
  report_dir = os.path.join(out_dir, 'report')
  os.makedirs(report_dir, exist_ok=True)
  rows = results_lib.collect(runs)
  speedup_report, grad_report, notes = _analyses(runs, report_dir, rows)
  moe = next((r for r in rows if r.spec.role == 'moe'), None)
  sentences = results_lib.conclusions(rows)
  own = [figures.loss_curves(rows, os.path.join(report_dir, 'loss_curves.png')),
         figures.params_vs_perplexity(rows, os.path.join(report_dir, 'params_vs_perplexity.png')),
         figures.samoe_mixing(rows, os.path.join(report_dir, 'samoe_mixing.png')),
         figures.mixing_over_training(rows, os.path.join(report_dir, 'mixing_trajectories.png')),
         figures.expert_load(rows, os.path.join(report_dir, 'expert_load.png'))]
  finished = sum(is_finished(r) for r in runs)
  wall = suite_wall_seconds(out_dir)
  tokens = rows[0].tokens if rows else 0
  lines = [f'# SaMoE comparison: suite `{suite.name}`', '', suite.description, '',
           f'- command: `{command}`', f'- commit (report): `{commit()}`', _trained_at(out_dir),
           f'- machine: {machine()}',
           f'- date: {time.strftime("%Y-%m-%d")}',
           _seeds_line(suite, runs),
           f'- training wall time: {format_duration(wall)} over {finished} of {len(runs)} runs finished '
           f'(sum of the training sessions in suite_log.jsonl; sized for {suite.budget})',
           _corpus_line(corpus_dir, tokens, str(runs[0].config.data.vocabulary) if runs else ''),
           _groups_line(runs, rows), '', '## Results', '']
  lines += results_lib.table(rows, moe.params['total'] if moe else None)
  lines += ['', 'Perplexity: exp of the validation cross-entropy at the last step, mean and sample std over seeds. '
            '"stored": parameters a checkpoint holds (the pool once); "materialized": a standard MoE of the same '
            'layout; dropped: share of the (token, choice) assignments that found no expert slot, mean over MoE '
            'layers and seeds, in the last logged training interval and the last validation '
            '(moe.capacity_factor_eval); "—" dense, "dropless" for moe.dispatch=\'ragged\'; speedup: '
            'c_dense(loss) / c_run at the last step (Artetxe et al. 2021; see speedup/).', '',
            '## Conclusions (computed from the numbers above)', '']
  lines += [f'- {s}' for s in sentences]
  mixing = results_lib.mixing_lines(rows)
  if mixing:
    lines += ['', '### Did the mixing move? (learned pools, last log step)', ''] + mixing
  if grad_report:
    lines += ['', '### Gradient flow', ''] + [f'- {s}' for s in grad_report.get('sentences', [])]
  if notes:
    lines += ['', '### Not computed', ''] + [f'- {n}' for n in notes]
  lines += ['', '## Figures', '']
  lines += _figure_lines('Validation loss and parameters', own[:2])
  if speedup_report:
    lines += _figure_lines('MoE speedup factor (speedup/speedup.md)', [os.path.basename(speedup_report['files']['png'])],
                           'speedup/')
  if grad_report:
    lines += _figure_lines('Gradient flow (gradient_flow/gradient_flow.md)', sorted(grad_report['figures'].values()),
                           'gradient_flow/')
  lines += _figure_lines('Mixing weights and expert load', own[2:])
  lines += ['## Configs', '', 'Every run is an ordinary workdir `runs/NAME_seedS` (train / evaluate / report work on '
            'it); seed S sets train.seed and data.shuffle_seed. Overrides on the suite\'s base config:', '']
  lines += [f'- `{r.spec.name}`: `{json.dumps(dict(r.spec.overrides), sort_keys=True)}`' for r in rows]
  path = os.path.join(report_dir, 'report.md')
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  with open(os.path.join(report_dir, 'results.json'), 'w') as f:
    json.dump({'suite': suite.name, 'command': command, 'commit': commit(), 'machine': machine(),
               'training_wall_seconds': wall, 'runs_finished': finished, 'runs_planned': len(runs),
               'configs': results_lib.to_json(rows), 'conclusions': sentences,
               'gradient_flow_sentences': grad_report.get('sentences', []) if grad_report else [],
               'notes': notes, 'report_seconds': time.time() - start}, f, indent=2)
  return path
