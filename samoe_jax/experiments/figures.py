"""The suite report's own figures (the gradient-flow and speedup figures come from samoe_jax.analysis).

  loss_curves.png           validation cross-entropy against tokens, mean over seeds with a min-max band
  params_vs_perplexity.png  stored parameters (log) against final validation perplexity, seed std as error bars
  samoe_mixing.png          every learned-pool config's final mixing weights over the pool (seed 0)
  mixing_trajectories.png   their mixing entropy and largest weight per MoE layer against step (seed 0)
  expert_load.png           final per-layer expert token shares of the MoE configs (seed 0)
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from samoe_jax.analysis import mixing_trajectories  # pylint: disable=wrong-import-position
from samoe_jax.experiments.results import ConfigResult  # pylint: disable=wrong-import-position
from samoe_jax.training.metrics_writer import read_metrics  # pylint: disable=wrong-import-position

ROLE_STYLE = {'dense': (None, ':'), 'moe': ('k', '-'), 'sweep': (None, '--'), 'baseline': (None, '-.'),
              'samoe': (None, '-')}


def _save(fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return os.path.basename(path)


def loss_curves(results: Sequence[ConfigResult], path: str) -> str:
  fig, ax = plt.subplots(figsize=(8.5, 5))
  for r in results:
    if not r.curves:
      continue
    steps = sorted(set.intersection(*(set(c) for c in r.curves)))
    values = np.array([[c[s] for s in steps] for c in r.curves])
    tokens = np.array(steps) * r.tokens_per_step
    color, style = ROLE_STYLE[r.spec.role]
    line, = ax.plot(tokens, values.mean(0), style, color=color, label=r.spec.label, lw=1.6)
    if len(values) > 1:
      ax.fill_between(tokens, values.min(0), values.max(0), color=line.get_color(), alpha=0.15)
  ax.set_xlabel('training tokens')
  ax.set_ylabel('validation cross-entropy (nats / token)')
  ax.set_title('Validation loss (mean over seeds, band: min-max)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  return _save(fig, path)


def params_vs_perplexity(results: Sequence[ConfigResult], path: str) -> str:
  fig, ax = plt.subplots(figsize=(8, 5))
  for r in results:
    if not r.n:
      continue
    color, _ = ROLE_STYLE[r.spec.role]
    marker = {'dense': 's', 'moe': 'D', 'sweep': 'v', 'baseline': '^', 'samoe': 'o'}[r.spec.role]
    ax.errorbar(r.params['total'], r.mean, yerr=r.std, fmt=marker, color=color, capsize=3, label=r.spec.label)
    ax.annotate(r.spec.name, (r.params['total'], r.mean), fontsize=6, xytext=(4, 3), textcoords='offset points')
  moe = next((r for r in results if r.spec.role == 'moe' and r.n), None)
  if moe is not None:
    ax.axhline(moe.mean, color='k', lw=0.8, ls='--')
  ax.set_xscale('log')
  ax.set_xlabel('stored parameters')
  ax.set_ylabel('final validation perplexity')
  ax.set_title('Stored parameters against perplexity (error bars: seed std; dashed: standard MoE)')
  ax.grid(alpha=0.3, which='both')
  ax.legend(fontsize=6, ncol=2)
  return _save(fig, path)


def _last_train_record(workdir: str) -> dict:
  records = read_metrics(workdir, 'train')
  return records[-1] if records else {}


def samoe_mixing(results: Sequence[ConfigResult], path: str) -> str | None:
  """Final mixing weights [L_moe, P] of every learned-pool config's first seed; None when there is none."""
  panels = []
  for r in results:
    if not r.workdirs:   # only learned mixing logs pool/mixing_weights
      continue
    weights = _last_train_record(r.workdirs[0]).get('pool/mixing_weights')
    if weights is not None and np.ndim(weights) == 2 and np.shape(weights)[1] > 1:
      panels.append((r.spec.label, np.asarray(weights)))
  if not panels:
    return None
  fig, axes = plt.subplots(1, len(panels), figsize=(2.2 + 1.6 * len(panels) + sum(w.shape[1] for _, w in panels) * 0.5,
                                                   1.6 + 0.45 * max(w.shape[0] for _, w in panels)), squeeze=False)
  for ax, (label, w) in zip(axes[0], panels):
    ax.imshow(w, vmin=0, vmax=1, cmap='viridis', aspect='auto')
    for (i, j), v in np.ndenumerate(w):
      ax.text(j, i, f'{v:.2f}', ha='center', va='center', fontsize=7, color='w' if v < 0.6 else 'k')
    ax.set_xticks(range(w.shape[1]))
    ax.set_yticks(range(w.shape[0]), [f'MoE {i}' for i in range(w.shape[0])])
    ax.set_xlabel('pool entry')
    ax.set_title(label, fontsize=8)
  fig.suptitle('SaMoE mixing weights at the last step (seed 0)', fontsize=9)
  return _save(fig, path)


def mixing_over_training(results: Sequence[ConfigResult], path: str) -> str | None:
  """Every learned-pool config's (P >= 2) mixing entropy and largest weight per MoE layer against step (seed 0)."""
  panels = [(r.spec.label, r.mixing_trajectories[0]) for r in results if r.mixing_trajectories]
  written = mixing_trajectories.plot_trajectories(panels, path)
  return os.path.basename(written) if written else None


def expert_load(results: Sequence[ConfigResult], path: str) -> str | None:
  """Per MoE config (seed 0): the last logged interval's token share per layer and expert."""
  panels = []
  for r in results:
    if r.spec.role == 'dense' or not r.workdirs:
      continue
    record = _last_train_record(r.workdirs[0])
    layers = sorted(k for k in record if k.startswith('moe/layer') and k.endswith('/expert_load'))
    rows = [np.asarray(record[k]) for k in layers]
    if rows:
      width = max(len(x) for x in rows)
      panels.append((r.spec.label, np.stack([np.pad(x, (0, width - len(x)), constant_values=np.nan) for x in rows])))
  if not panels:
    return None
  cols = min(4, len(panels))
  rows_n = math.ceil(len(panels) / cols)
  fig, axes = plt.subplots(rows_n, cols, figsize=(3.6 * cols, 1.4 + 0.5 * rows_n * 4), squeeze=False)
  for ax in axes.flat[len(panels):]:
    ax.axis('off')
  image = None
  for ax, (label, load) in zip(axes.flat, panels):
    image = ax.imshow(load, vmin=0, vmax=max(0.3, float(np.nanmax(load))), cmap='magma', aspect='auto')
    ax.set_title(label, fontsize=8)
    ax.set_xlabel('expert')
    ax.set_ylabel('MoE layer')
  fig.colorbar(image, ax=list(axes.flat), shrink=0.6, label='token share')
  fig.suptitle('Expert load at the end of training (seed 0; uniform = 1 / E)', fontsize=9)
  fig.savefig(path, dpi=120, bbox_inches='tight')
  plt.close(fig)
  return os.path.basename(path)
