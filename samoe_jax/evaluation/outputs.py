"""Evaluation results as a console/markdown table, JSON, PNG bar charts, accuracy-vs-step plots and TensorBoard.

`scores` everywhere is {task: {metric: float}} (accuracy-like metrics in [0, 1], perplexity as is). Per
checkpoint step and evaluation setting (shots, few-shot seeds, document limit), `write_step_results` writes
WORKDIR/eval/step_<N>[_<setting>]/{results.json, results.md, results.png} (no suffix for zero-shot on every
document; results.png: bars with standard errors and document counts, evaluation/bar_chart.py); evaluating the
same step with other settings adds a directory and never replaces one, and the same step and setting again merges
its tasks in. `write_summary` writes WORKDIR/eval/{summary.json, summary.md,
metrics_vs_step.png} over everything evaluated so far: summary.json is {step: {task: {metric: value}}} with a
non-default setting's tasks named `<task>@<setting>` (for example `piqa@5shot_seeds1234-1235`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from samoe_jax.evaluation.bar_chart import PLOTTED, plot_bars  # pylint: disable=wrong-import-position

Scores = Mapping[str, Mapping[str, float]]


def eval_dir(workdir: str) -> str:
  return os.path.join(workdir, 'eval')


def unit(metric: str) -> str:
  """' (%)' for accuracy-like metrics (shown in percent), '' for the rest."""
  return ' (%)' if metric in PLOTTED or metric.startswith('acc') else ''


def fmt(metric: str, value: float) -> str:
  """A value as the tables show it: accuracy-like metrics in percent (2 decimals), others to 4 digits."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return 'n/a'
  if unit(metric):
    return f'{100 * value:.2f}'
  return f'{value:.4g}'


def markdown_table(scores: Scores, title: str = '') -> str:
  """| task | metric | value | rows; accuracy-like metrics in percent."""
  lines = [f'## {title}', ''] if title else []
  lines += ['| task | metric | value |', '|---|---|---:|']
  for task in sorted(scores):
    for metric in sorted(scores[task]):
      lines.append(f'| {task} | {metric}{unit(metric)} | {fmt(metric, scores[task][metric])} |')
  return '\n'.join(lines) + '\n'


def plot_over_steps(by_step: Mapping[int, Scores], path: str) -> bool:
  """One line per (task, plotted metric) against training step; False when nothing is plottable."""
  steps = sorted(by_step)
  series: dict[str, list[tuple[int, float]]] = {}
  for step in steps:
    for task, metrics in by_step[step].items():
      for metric in PLOTTED:
        if metric in metrics:
          series.setdefault(f'{task} {metric}', []).append((step, 100 * metrics[metric]))
  if not series:
    return False
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for label, points in sorted(series.items()):
    xs, ys = zip(*points)
    ax.plot(xs, ys, 'o-', label=label, markersize=4)
  ax.set_xlabel('training step')
  ax.set_ylabel('%')
  ax.set_title('Zero/few-shot scores during training')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def _write_json(path: str, value: Any) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def setting_key(setting: Mapping[str, Any] | None) -> str:
  """'' for zero-shot on every document; else e.g. '5shot_seeds1234-1235' or '0shot_limit100'."""
  setting = setting or {}
  k, limit = int(setting.get('num_fewshot', 0)), setting.get('limit')
  key = f'{k}shot_seeds{"-".join(str(s) for s in setting.get("fewshot_seeds", ()))}' if k else ''
  if limit:
    key = (key or '0shot') + f'_limit{limit}'
  return key


def setting_label(setting: Mapping[str, Any] | None) -> str:
  """Human-readable: '0-shot', '5-shot, seeds 1234, 1235', '0-shot, first 100 documents'."""
  setting = setting or {}
  k, limit = int(setting.get('num_fewshot', 0)), setting.get('limit')
  label = f'{k}-shot' + (f', seeds {", ".join(str(s) for s in setting.get("fewshot_seeds", ()))}' if k else '')
  return label + (f', first {limit} documents' if limit else '')


def write_step_results(workdir: str, step: int, scores: Scores, details: Mapping[str, Any],
                       setting: Mapping[str, Any] | None = None, command: str | None = None) -> str:
  """WORKDIR/eval/step_<step>[_<setting>]/{results.json, results.md, results.png}; returns the directory.

  setting: {'num_fewshot', 'fewshot_seeds', 'limit'} of this evaluation (None: zero-shot, every document). Tasks
  already recorded for the same step and setting by an earlier call are kept beside the new ones. command: what
  produced these scores, recorded per task under 'commands' (the run's report.md names it)."""
  key = setting_key(setting)
  out = os.path.join(eval_dir(workdir), f'step_{step}' + (f'_{key}' if key else ''))
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, 'results.json')
  merged_scores, merged_details, commands = {}, {}, {}
  if os.path.isfile(path):
    with open(path) as f:
      earlier = json.load(f)
    merged_scores, merged_details = dict(earlier.get('scores', {})), dict(earlier.get('details', {}))
    commands = dict(earlier.get('commands', {}))
  merged_scores.update(scores)
  merged_details.update(details)
  for task in scores:
    commands.pop(task, None)
    if command:
      commands[task] = command
  label = setting_label(setting)
  _write_json(path, {'step': step, 'setting': dict(setting or {'num_fewshot': 0}), 'setting_label': label,
                     'scores': merged_scores, 'details': merged_details, 'commands': commands})
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write(markdown_table(merged_scores, f'Evaluation of step {step} ({label})'))
  plot_bars(merged_scores, os.path.join(out, 'results.png'), f'step {step} ({label})', merged_details)
  return out


def read_all_results(workdir: str) -> dict[int, dict[str, dict[str, float]]]:
  """{step: scores} over every WORKDIR/eval/step_*/results.json (earlier invocations included); the tasks of a
  non-default setting are named '<task>@<setting key>'."""
  return {step: {name: scores for (_, name), scores in tasks.items()} for step, tasks in _by_step_and_setting(
      workdir).items()}


def read_step_records(workdir: str) -> list[tuple[str, dict[str, Any]]]:
  """[(path, record)] of every WORKDIR/eval/step_*/results.json, by step then path."""
  root = eval_dir(workdir)
  found = []
  if os.path.isdir(root):
    for name in sorted(os.listdir(root)):
      path = os.path.join(root, name, 'results.json')
      if name.startswith('step_') and os.path.isfile(path):
        with open(path) as f:
          found.append((path, json.load(f)))
  return sorted(found, key=lambda item: (int(item[1]['step']), item[0]))


def _by_step_and_setting(workdir: str) -> dict[int, dict[tuple[str, str], dict[str, float]]]:
  """{step: {(setting label, task name in the summary): scores}}."""
  out: dict[int, dict[tuple[str, str], dict[str, float]]] = {}
  for _, record in read_step_records(workdir):
    key, label = setting_key(record.get('setting')), setting_label(record.get('setting'))
    for task, scores in record['scores'].items():
      out.setdefault(int(record['step']), {})[(label, f'{task}@{key}' if key else task)] = scores
  return out


def write_summary(workdir: str) -> str:
  """WORKDIR/eval/{summary.json, summary.md, metrics_vs_step.png} over every evaluated step and setting;
  returns summary.md."""
  by_step = read_all_results(workdir)
  detailed = _by_step_and_setting(workdir)
  root = eval_dir(workdir)
  os.makedirs(root, exist_ok=True)
  _write_json(os.path.join(root, 'summary.json'), {str(s): by_step[s] for s in sorted(by_step)})
  lines = ['# Evaluation summary', '']
  if plot_over_steps(by_step, os.path.join(root, 'metrics_vs_step.png')):
    lines += ['![metrics vs step](metrics_vs_step.png)', '']
  for step in sorted(detailed):
    for label in sorted({l for l, _ in detailed[step]}):
      tasks = {name: v for (l, name), v in detailed[step].items() if l == label}
      lines.append(markdown_table(tasks, f'step {step} ({label})'))
  path = os.path.join(root, 'summary.md')
  with open(path, 'w') as f:
    f.write('\n'.join(lines))
  return path


def tensorboard_scalars(scores: Scores) -> dict[str, float]:
  """{'tasks/<task>/<metric>': value} for the run's TensorBoard."""
  return {f'tasks/{task}/{metric}': float(v) for task, metrics in scores.items() for metric, v in metrics.items()
          if v is not None and not (isinstance(v, float) and math.isnan(v))}
