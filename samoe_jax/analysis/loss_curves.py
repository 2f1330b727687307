"""A run's loss figure (loss_curves.png of samoe_jax/analysis/run_report.py): what is drawn, and the drawing.

`loss_plot_data` decides everything from metrics.jsonl records (train and eval) and `plot_loss_curves` only
draws it, so tests check the figure through the data:
  - the main panel shows cross-entropy (train and validation; 'loss' where a run logged no cross-entropy), with
    validation perplexity = exp(cross-entropy) on the right-hand axis and the final one in the legend;
  - its y range is fitted to the points from `fit_from` on (after warm-up and the first 10% of steps): the first
    steps' losses are far above the rest and would flatten the part of the run that matters; the axis title says
    when points are off the top;
  - loss - cross-entropy (the auxiliary terms: load balancing, z-loss) gets its own small panel, and only when it
    is not ~0: on the main panel loss and cross-entropy would be two near-identical lines.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

AUX_TOLERANCE = 1e-4   # nats: |loss - cross-entropy| at most this everywhere counts as no auxiliary loss
SKIP_FRACTION = 0.1    # the first 10% of steps never set the y range


@dataclasses.dataclass(frozen=True)
class Series:
  label: str
  steps: tuple[int, ...]
  values: tuple[float, ...]
  style: str


@dataclasses.dataclass(frozen=True)
class LossPlot:
  """What loss_curves.png shows. ylim: the main panel's range; fit_from: the first step whose points set it;
  off_top: the largest value above ylim (None when every point is inside); aux: loss - cross-entropy series
  (empty when ~0); final_perplexity: the last validation perplexity (None without validation)."""
  main: tuple[Series, ...]
  ylabel: str
  ylim: tuple[float, float]
  fit_from: int
  off_top: float | None
  aux: tuple[Series, ...]
  final_perplexity: float | None

  def title(self) -> str:
    name = 'Cross-entropy' if self.ylabel.startswith('cross') else 'Loss'
    if self.off_top is None:
      return name
    return (f'{name}: y range fitted to steps >= {self.fit_from} (after warm-up and the first '
            f'{100 * SKIP_FRACTION:.0f}%)\nearlier points, up to {self.off_top:.2f}, are off the top')


def _series(records: Sequence[Mapping[str, Any]], key: str, label: str, style: str) -> Series | None:
  points = [(int(r['step']), float(r[key])) for r in records if r.get(key) is not None and math.isfinite(r[key])]
  if not points:
    return None
  steps, values = zip(*points)
  return Series(label, steps, values, style)


def _aux_series(records: Sequence[Mapping[str, Any]], loss: str, ce: str, label: str, style: str) -> Series | None:
  rows = [{'step': r['step'], 'aux': r[loss] - r[ce]} for r in records
          if r.get(loss) is not None and r.get(ce) is not None]
  return _series(rows, 'aux', label, style)


def _final_perplexity(evals: Sequence[Mapping[str, Any]]) -> float | None:
  for r in reversed(evals):
    if r.get('eval/perplexity') is not None:
      return float(r['eval/perplexity'])
    if r.get('eval/cross_entropy') is not None:
      return math.exp(r['eval/cross_entropy'])
  return None


def fitted_range(main: Sequence[Series], warmup_steps: int = 0) -> tuple[tuple[float, float], int, float | None]:
  """(ylim, fit_from, off_top): the range of every point from step fit_from = max(warmup_steps, 10% of the last
  step) on, 5% padded, its bottom low enough for every point; every point when fewer than 2 are that late."""
  points = [(s, v) for series in main for s, v in zip(series.steps, series.values)]
  last = max(s for s, _ in points)
  fit_from = max(int(warmup_steps), math.ceil(SKIP_FRACTION * last))
  late = [v for s, v in points if s >= fit_from]
  if len(late) < 2:
    late, fit_from = [v for _, v in points], min(s for s, _ in points)
  lo, hi = min(v for _, v in points), max(late)
  pad = 0.05 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1.0)
  top = max(v for _, v in points)
  return (lo - pad, hi + pad), fit_from, (top if top > hi + pad else None)


def loss_plot_data(train: Sequence[Mapping[str, Any]], evals: Sequence[Mapping[str, Any]],
                   warmup_steps: int = 0) -> LossPlot | None:
  """What loss_curves.png draws from the train and eval records; None when neither holds a loss."""
  has_ce = any('cross_entropy' in r for r in train) or any('eval/cross_entropy' in r for r in evals)
  train_key, eval_key = ('cross_entropy', 'eval/cross_entropy') if has_ce else ('loss', 'eval/loss')
  name = 'cross-entropy' if has_ce else 'loss'
  final = _final_perplexity(evals)
  eval_label = f'validation {name}' + (f' (final perplexity {final:.2f})' if final is not None else '')
  main = tuple(s for s in (_series(train, train_key, f'train {name}', '-'),
                           _series(evals, eval_key, eval_label, 'o-')) if s)
  if not main:
    return None
  ylim, fit_from, off_top = fitted_range(main, warmup_steps)
  aux = tuple(s for s in (_aux_series(train, 'loss', 'cross_entropy', 'train', '-'),
                          _aux_series(evals, 'eval/loss', 'eval/cross_entropy', 'validation', 'o-')) if s)
  if all(max(abs(v) for v in s.values) <= AUX_TOLERANCE for s in aux):
    aux = ()
  return LossPlot(main, f'{name}, nats per token', ylim, fit_from, off_top, aux, final if has_ce else None)


def _log(perplexity: np.ndarray) -> np.ndarray:
  """The perplexity axis's inverse; matplotlib also asks it about 0."""
  return np.log(np.maximum(perplexity, np.finfo(np.float64).tiny))


def plot_loss_curves(data: LossPlot, path: str) -> None:
  """Draws `data` (see loss_plot_data) into `path`."""
  rows = 2 if data.aux else 1
  fig, axes = plt.subplots(rows, 1, figsize=(7, 4.5 + 1.6 * (rows - 1)), sharex=True, squeeze=False,
                           gridspec_kw={'height_ratios': [3, 1][:rows]})
  ax = axes[0, 0]
  for s in data.main:
    ax.plot(s.steps, s.values, s.style, label=s.label, markersize=4)
  ax.set_ylim(*data.ylim)
  ax.set_ylabel(data.ylabel)
  ax.set_title(data.title(), fontsize=9)
  if data.final_perplexity is not None:
    right = ax.secondary_yaxis('right', functions=(np.exp, _log))
    right.set_ylabel('perplexity = exp(cross-entropy)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  if data.aux:
    low = axes[1, 0]
    for s in data.aux:
      low.plot(s.steps, s.values, s.style, label=s.label, markersize=3)
    low.set_ylabel('loss - cross-entropy\n(auxiliary terms)', fontsize=8)
    low.grid(alpha=0.3)
    low.legend(fontsize=7)
  axes[-1, 0].set_xlabel('step')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
