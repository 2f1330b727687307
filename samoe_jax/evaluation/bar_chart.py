"""One evaluation's bar chart (eval/step_<N>/results.png): scores with standard-error bars and document counts.

`bar_chart_data` decides everything (bars, error bars, labels, which tasks are too small to read) and
`plot_bars` only draws it. Error bars are one standard error (evaluation/uncertainty.py), cut at 0 and 100%;
each task's tick label names its document count n, and a task with n < MIN_DOCS is drawn hatched and pale,
marked '*', and the title says its n is too small to read.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from samoe_jax.evaluation.uncertainty import MIN_DOCS, score  # pylint: disable=wrong-import-position

# Metrics drawn in the bar charts and step plots (fractions); perplexities only appear in tables and JSON.
PLOTTED = ('acc', 'acc_norm', 'exact_match')
NAN = float('nan')


@dataclasses.dataclass(frozen=True)
class Bars:
  """One metric's bars, one per task that has it, in percent. below/above: the error bar (one standard error,
  cut at 0 and 100; NaN where unknown); too_few: the task's n is below MIN_DOCS."""
  metric: str
  xs: tuple[float, ...]
  values: tuple[float, ...]
  below: tuple[float, ...]
  above: tuple[float, ...]
  labels: tuple[str, ...]
  too_few: tuple[bool, ...]


@dataclasses.dataclass(frozen=True)
class BarChart:
  """Tasks at x = 0, 1, ...; each task's metrics side by side around its x, `width` wide each."""
  tasks: tuple[str, ...]
  tick_labels: tuple[str, ...]
  too_few: tuple[bool, ...]
  width: float
  bars: tuple[Bars, ...]

  def note(self) -> str:
    """'' or e.g. '13 of 13 tasks scored on < 100 documents (*): n too small to read'."""
    count = sum(self.too_few)
    if not count:
      return ''
    return f'{count} of {len(self.tasks)} tasks scored on < {MIN_DOCS} documents (*): n too small to read'


def _tick_label(task: str, detail: Mapping[str, Any] | None) -> tuple[str, bool]:
  n = (detail or {}).get('num_docs')
  if n is None:
    return f'{task}\nn=?', False
  return f'{task}\nn={int(n)}' + ('*' if n < MIN_DOCS else ''), n < MIN_DOCS


def bar_chart_data(scores: Mapping[str, Mapping[str, float]], details: Mapping[str, Any] | None) -> BarChart | None:
  """What results.png draws; None when no task has a PLOTTED metric."""
  details = details or {}
  present = {t: [m for m in PLOTTED if scores[t].get(m) is not None] for t in sorted(scores)}
  tasks = tuple(t for t, metrics in present.items() if metrics)
  if not tasks:
    return None
  ticks = [_tick_label(t, details.get(t)) for t in tasks]
  width = 0.8 / max(len(present[t]) for t in tasks)
  columns: dict[str, list[tuple]] = {}
  for pos, task in enumerate(tasks):
    for i, metric in enumerate(present[task]):
      s = score(task, metric, scores[task][metric], details.get(task))
      x, v = pos + (i - (len(present[task]) - 1) / 2) * width, 100 * s.value
      if s.stderr is None:
        below = above = NAN
        label = f'{v:.1f}'
      else:
        se = 100 * s.stderr
        below, above, label = min(se, v), min(se, 100 - v), f'{v:.1f}±{se:.1f}'
      columns.setdefault(metric, []).append((x, v, below, above, label, s.too_few))
  bars = tuple(Bars(m, *map(tuple, zip(*columns[m]))) for m in PLOTTED if m in columns)
  return BarChart(tasks, tuple(t for t, _ in ticks), tuple(f for _, f in ticks), width, bars)


def plot_bars(scores: Mapping[str, Mapping[str, float]], path: str, title: str,
              details: Mapping[str, Any] | None = None) -> bool:
  """Grouped bars of the PLOTTED metrics per task with standard-error bars; returns False (and writes nothing)
  when there are none. details: {task: {'num_docs', 'stderr'}} as evaluate_task returns them."""
  data = bar_chart_data(scores, details)
  if data is None:
    return False
  fig, ax = plt.subplots(figsize=(max(5.0, 1.0 + 0.9 * len(data.tasks)), 4.6))
  for b in data.bars:
    drawn = ax.bar(b.xs, b.values, data.width, yerr=(b.below, b.above), capsize=2, label=b.metric,
                   error_kw={'elinewidth': 0.8})
    for patch, small in zip(drawn.patches, b.too_few):
      if small:
        patch.set_alpha(0.45)
        patch.set_hatch('//')
    ax.bar_label(drawn, labels=b.labels, fontsize=6, rotation=90, padding=2)
  ax.set_xticks(range(len(data.tasks)), data.tick_labels, rotation=30, ha='right', fontsize=8)
  ax.set_ylabel('% (error bars: one standard error)')
  ax.set_ylim(0, 130)   # room for the labels above a bar and its error bar
  ax.set_yticks(range(0, 101, 20))
  ax.set_title(title + (f'\n{data.note()}' if data.note() else ''), fontsize=9)
  ax.legend(fontsize=8, ncol=len(data.bars), loc='upper right')
  ax.grid(axis='y', alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True
