"""How SaMoE's mixing moved during training: per MoE layer, its mixture's entropy and largest weight at every log step.

Read from a run's train records (metrics.jsonl): the logged `pool/layer{b}/mixing_entropy` and
`pool/layer{b}/mixing_max`, or, for runs logged before those existed, the same computed from
`pool/mixing_weights` ([L_moe, P] or [L_moe, E, P]; layers/mixing.py:mixing_statistics). Entropy is shown as a
fraction of log P: 1 is uniform mixing (tied experts), 0 is one pool entry per layer.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

_LAYER = re.compile(r'^moe/layer(\d+)/expert_load$')


def _statistics(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """numpy twin of layers/mixing.py:mixing_statistics: per layer entropy (nats) and largest weight, [L] each."""
  w = np.asarray(weights, np.float64)
  plogp = np.where(w > 0, w * np.log(np.where(w > 0, w, 1.0)), 0.0)
  entropy, largest = -plogp.sum(-1), w.max(-1)
  return (entropy.mean(-1), largest.mean(-1)) if w.ndim == 3 else (entropy, largest)


def trajectories(records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
  """{'pool_size': P, 'steps': [S], 'layers': {block: {'entropy': [S], 'max': [S]}}} from train records, or None
  when the run has no learned mixing (no record holds pool/mixing_weights)."""
  rows = [r for r in records if r.get('pool/mixing_weights') is not None]
  if not rows:
    return None
  blocks = sorted(int(m.group(1)) for k in rows[-1] if (m := _LAYER.match(k)))
  pool_size = int(np.shape(rows[-1]['pool/mixing_weights'])[-1])
  if len(blocks) != np.shape(rows[-1]['pool/mixing_weights'])[0]:
    blocks = list(range(np.shape(rows[-1]['pool/mixing_weights'])[0]))
  layers: dict[int, dict[str, list[float]]] = {b: {'entropy': [], 'max': []} for b in blocks}
  for r in rows:
    entropy, largest = _statistics(r['pool/mixing_weights'])
    for i, b in enumerate(blocks):
      layers[b]['entropy'].append(float(r.get(f'pool/layer{b}/mixing_entropy', entropy[i])))
      layers[b]['max'].append(float(r.get(f'pool/layer{b}/mixing_max', largest[i])))
  return {'pool_size': pool_size, 'steps': [int(r['step']) for r in rows], 'layers': layers}


def final_summary(traj: Mapping[str, Any]) -> dict[str, float]:
  """Over the MoE layers at the last log step: mean entropy / log P and mean and largest max weight."""
  p = traj['pool_size']
  ent = [v['entropy'][-1] for v in traj['layers'].values()]
  mx = [v['max'][-1] for v in traj['layers'].values()]
  return {'entropy_fraction': float(np.mean(ent) / math.log(p)) if p > 1 else 0.0,
          'max_weight_mean': float(np.mean(mx)), 'max_weight_largest': float(np.max(mx))}


def plot_trajectories(panels: Sequence[tuple[str, Mapping[str, Any]]], path: str) -> str | None:
  """Two axes (entropy / log P and largest weight, against step), a line per (run, MoE layer). panels: (label,
  trajectories(...)) pairs; runs with P = 1 are left out. Returns `path`, or None when nothing was drawn."""
  panels = [(label, t) for label, t in panels if t is not None and t['pool_size'] > 1]
  if not panels:
    return None
  lines = sum(len(t['layers']) for _, t in panels)
  ncol = 1 if lines <= 4 else 3
  legend_rows = math.ceil(lines / ncol) if ncol > 1 else 0
  height = 4 + 0.17 * legend_rows
  fig, (ax_h, ax_m) = plt.subplots(1, 2, figsize=(12, height))
  styles = ['-', '--', ':', '-.']
  for c, (label, t) in enumerate(panels):
    color, p = f'C{c % 10}', t['pool_size']
    for j, (block, values) in enumerate(sorted(t['layers'].items())):
      one_run = len(panels) == 1   # one run: a colour per layer; several: a colour per run, a style per layer
      name = f'block {block}' if one_run else f'{label}, block {block}'
      style = dict(color=f'C{j % 10}' if one_run else color, linestyle='-' if one_run else styles[j % len(styles)])
      ax_h.plot(t['steps'], np.asarray(values['entropy']) / math.log(p), label=name, **style)
      ax_m.plot(t['steps'], values['max'], **style)
    ax_m.axhline(1.0 / p, color='grey' if len(panels) == 1 else color, linewidth=0.6, alpha=0.5)
  ax_h.set(xlabel='step', ylabel='entropy / log P', ylim=(-0.02, 1.02),
           title='mixing entropy per MoE layer (1 = uniform)')
  ax_m.set(xlabel='step', ylabel='largest mixing weight', ylim=(0.0, 1.02),
           title='largest weight per MoE layer (thin line: 1/P)')
  if ncol == 1:   # a few lines: inside the entropy axes; many: one legend below both axes
    ax_h.legend(fontsize=7)
    fig.tight_layout()
  else:
    fig.legend(*ax_h.get_legend_handles_labels(), loc='lower center', ncol=ncol, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, (0.17 * legend_rows + 0.1) / height, 1, 1))
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
