"""The dense compute-to-metric frontier and the MoE speedup factor of Artetxe et al. (2021, arXiv 2112.10684).

Pure numpy (no JAX): samoe_jax/analysis/speedup.py reads the runs and calls these.

With c_m(t) the training compute family m needs to reach metric value t, speedup(t) = c_dense(t) / c_run(t).
c_dense comes from the dense points (compute F_i in FLOPs, metric t_i): their Pareto frontier (the points no
other point beats at lower or equal compute; for a lower-is-better metric the running minimum over compute),
strictly monotone in both coordinates, and log F interpolated piecewise-linearly in t between neighbouring
frontier points. Perplexity-like metrics are interpolated in log t (log-perplexity = cross-entropy), the others
in t. Outside the frontier's metric range nothing is extrapolated: a run better than every frontier point gets
the bound speedup >= F_last / F_run (F_last: the compute of the frontier's best point, its largest compute),
one worse than every frontier point speedup <= F_first / F_run (F_first: the smallest dense compute).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

HIGHER_IS_BETTER = ('acc', 'acc_norm', 'exact_match', 'accuracy')
LOWER_IS_BETTER = ('loss', 'cross_entropy', 'perplexity', 'token_perplexity', 'word_perplexity', 'byte_perplexity',
                   'bits_per_byte')


def metric_direction(name: str) -> bool | None:
  """True when lower is better, False when higher is better, None when unknown (from the name's last part:
  'eval/cross_entropy' -> True, 'tasks/piqa/acc' -> False, 'eval/num_tokens' -> None)."""
  last = name.rsplit('/', 1)[-1]
  if last in LOWER_IS_BETTER:
    return True
  if last in HIGHER_IS_BETTER:
    return False
  return None


def metric_scale(name: str) -> str:
  """'log' for perplexities (interpolated in log-perplexity), 'linear' for everything else."""
  return 'log' if 'perplexity' in name.rsplit('/', 1)[-1] else 'linear'


def _key(metric: np.ndarray, lower_is_better: bool, scale: str) -> np.ndarray:
  """The metric on the interpolation scale, oriented so that smaller is better."""
  metric = np.asarray(metric, np.float64)
  if scale == 'log':
    if np.any(metric <= 0):
      raise ValueError(f'a log-scale metric (perplexity) must be > 0; got {metric[metric <= 0][:3].tolist()}')
    metric = np.log(metric)
  return metric if lower_is_better else -metric


@dataclasses.dataclass(frozen=True)
class Frontier:
  """The dense frontier: N >= 2 points, compute [N] strictly increasing (FLOPs), metric [N] strictly improving
  (decreasing when lower_is_better, else increasing); sources[i] says where point i came from."""
  compute: np.ndarray
  metric: np.ndarray
  lower_is_better: bool = True
  scale: str = 'linear'
  sources: tuple[Any, ...] = ()

  @property
  def key(self) -> np.ndarray:
    """[N] the metric on the interpolation scale, smaller = better (strictly decreasing)."""
    return _key(self.metric, self.lower_is_better, self.scale)

  def dense_compute(self, metric: float) -> float | None:
    """c_dense(metric) in FLOPs: exp of log F interpolated piecewise-linearly in the metric; None outside the
    frontier's metric range."""
    key = float(_key(np.asarray([metric]), self.lower_is_better, self.scale)[0])
    keys = self.key
    if not keys[-1] <= key <= keys[0]:
      return None
    # np.interp needs increasing x: the keys decrease along the frontier, so reverse both
    return float(np.exp(np.interp(key, keys[::-1], np.log(self.compute[::-1]))))

  def to_json(self) -> list[dict[str, Any]]:
    rows = []
    for i, (f, t) in enumerate(zip(self.compute, self.metric)):
      row = {'compute': float(f), 'metric': float(t)}
      if self.sources:
        source = self.sources[i]
        row.update(source if isinstance(source, dict) else {'source': source})
      rows.append(row)
    return rows


def pareto_frontier(compute: Sequence[float], metric: Sequence[float], lower_is_better: bool = True,
                    scale: str = 'linear', sources: Sequence[Any] | None = None) -> Frontier:
  """The frontier of the points (compute [M] FLOPs > 0, metric [M]): sorted by compute (ties: best metric
  first), the points strictly better than every point before them. Raises ValueError for fewer than 2."""
  compute = np.asarray(compute, np.float64)
  metric = np.asarray(metric, np.float64)
  if compute.shape != metric.shape or compute.ndim != 1:
    raise ValueError(f'compute {compute.shape} and metric {metric.shape} must be 1-D of equal length')
  finite = np.isfinite(compute) & np.isfinite(metric) & (compute > 0)
  index = np.flatnonzero(finite)
  key = _key(metric[index], lower_is_better, scale)
  order = index[np.lexsort((key, compute[index]))]   # by compute, then best (smallest key) first
  key_of = dict(zip(index.tolist(), key.tolist()))
  kept, best = [], math.inf
  for i in order.tolist():
    if key_of[i] < best:
      kept.append(i)
      best = key_of[i]
  if len(kept) < 2:
    raise ValueError(f'the dense points give {len(kept)} point(s) on the compute-to-metric frontier (of '
                     f'{len(index)} usable points); interpolating c_dense(t) needs at least 2: train dense models '
                     'of more than one size, or evaluate them at more steps')
  chosen = tuple(sources[i] for i in kept) if sources is not None else ()
  return Frontier(compute[kept], metric[kept], lower_is_better, scale, chosen)


def speedup_at(frontier: Frontier, metric: float, compute: float) -> dict[str, Any]:
  """The speedup of a run at metric value `metric` after `compute` FLOPs (> 0):
  {'speedup': c_dense / compute or None, 'bound': None | '>=' | '<=', 'bound_value': float or None,
   'dense_compute': c_dense(metric) or None, 'in_range': bool}."""
  if not compute > 0:
    raise ValueError(f'speedup_at: compute must be > 0 FLOPs, got {compute}')
  dense = frontier.dense_compute(metric)
  if dense is not None:
    return {'speedup': dense / compute, 'bound': None, 'bound_value': None, 'dense_compute': dense,
            'in_range': True}
  key = float(_key(np.asarray([metric]), frontier.lower_is_better, frontier.scale)[0])
  if key < frontier.key[-1]:   # better than the best dense point: the dense family needs more than its compute
    return {'speedup': None, 'bound': '>=', 'bound_value': float(frontier.compute[-1]) / compute,
            'dense_compute': None, 'in_range': False}
  return {'speedup': None, 'bound': '<=', 'bound_value': float(frontier.compute[0]) / compute,
          'dense_compute': None, 'in_range': False}


def format_speedup(result: dict[str, Any]) -> str:
  """'1.83x', 'outside the dense range (>= 2.10x)' or 'outside the dense range (<= 0.400x)' (3 digits)."""
  if result.get('speedup') is not None:
    return f'{result["speedup"]:#.3g}x'
  if result.get('bound'):
    return f'outside the dense range ({result["bound"]} {result["bound_value"]:#.3g}x)'
  return 'n/a'


def average_curves(curves: Sequence[dict[int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Seeds of one configuration: curves [n] of {step: value} -> (steps [S] common to all, mean [S], std [S]);
  std is the sample standard deviation over the n curves (ddof 1; 0 for a single curve). S may be 0."""
  if not curves:
    raise ValueError('average_curves: no curves')
  common = sorted(set.intersection(*(set(c) for c in curves)))
  values = np.asarray([[c[s] for s in common] for c in curves], np.float64).reshape(len(curves), len(common))
  std = values.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(len(common))
  return np.asarray(common, np.int64), values.mean(axis=0), std
