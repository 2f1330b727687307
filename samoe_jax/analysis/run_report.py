"""A run's report from its workdir: loss curves, SaMoE mixing weights and a markdown summary.

Reads metrics.jsonl, param_summary.json, final_metrics.json (written by samoe_jax.training.loop) and any
eval/step_*/results.json (samoe_jax.evaluate or the trainer's task evaluation), and writes
  loss_curves.png     train and validation cross-entropy against step, validation perplexity on the right axis,
                      loss - cross-entropy in a panel of its own when not ~0 (samoe_jax/analysis/loss_curves.py);
  mixing_weights.png  every MoE layer's mixing weights over the pool (layer-level: one row per layer;
                      expert-level: one heatmap of experts x pool entries per layer);
  mixing_trajectories.png  per MoE layer, the mixture's entropy / log P and largest weight against step
                      (samoe_jax/analysis/mixing_trajectories.py);
  report.md           parameter summary table, final validation loss / perplexity, the dropped share of MoE
                      assignments (last train record and final validation, with uniform routing's floor),
                      the evaluation results of WORKDIR/eval/step_*/results.json (value +- standard error,
                      documents, the command; samoe_jax/evaluation/report_table.py), links to the figures.
No model or checkpoint is loaded, so it is instant and can be rerun any time. The command is samoe_jax/report.py;
samoe_jax.train and samoe_jax.finetune write it at the end of a run.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Sequence

import matplotlib
import ml_collections

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from samoe_jax.analysis import loss_curves, mixing_trajectories  # pylint: disable=wrong-import-position
from samoe_jax.analysis.drop_floor import config_drop_floors  # pylint: disable=wrong-import-position
from samoe_jax.evaluation import report_table  # pylint: disable=wrong-import-position
from samoe_jax.models import accounting  # pylint: disable=wrong-import-position
from samoe_jax.training.metrics_writer import read_metrics  # pylint: disable=wrong-import-position


def _read_json(workdir: str, name: str) -> dict[str, Any]:
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def plot_mixing_weights(weights: np.ndarray, layer_names: Sequence[str], path: str) -> None:
  """weights: [L_moe, P] (layer-level) or [L_moe, E, P] (expert-level) softmax mixing weights."""
  if weights.ndim == 2:
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * weights.shape[1], 1.2 + 0.5 * weights.shape[0]))
    panels = [(ax, weights, 'MoE layer', layer_names)]
  else:
    cols = min(len(weights), 4)
    rows = math.ceil(len(weights) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 0.3 * weights.shape[1] * rows + 1.5), squeeze=False)
    for ax in axes.flat[len(weights):]:
      ax.axis('off')
    panels = [(ax, w, f'expert ({name})', [str(e) for e in range(w.shape[0])])
              for ax, w, name in zip(axes.flat, weights, layer_names)]
  image = None
  for ax, w, ylabel, yticks in panels:
    image = ax.imshow(w, vmin=0.0, vmax=1.0, cmap='viridis', aspect='auto')
    ax.set_xticks(range(w.shape[-1]), [str(p) for p in range(w.shape[-1])])
    ax.set_yticks(range(w.shape[0]), yticks)
    ax.set_xlabel('pool entry')
    ax.set_ylabel(ylabel)
    if w.size <= 64:
      for (i, j), v in np.ndenumerate(w):
        ax.text(j, i, f'{v:.2f}', ha='center', va='center', color='w' if v < 0.6 else 'k', fontsize=7)
  fig.colorbar(image, ax=[p[0] for p in panels], shrink=0.8)
  fig.suptitle('SaMoE mixing weights over the expert pool')
  fig.savefig(path, dpi=120, bbox_inches='tight')
  plt.close(fig)


def moe_layer_names(record: dict[str, Any], count: int) -> list[str]:
  """'block 1', 'block 3', ... from the 'moe/layer<i>/...' metric keys; 'MoE 0', ... when they do not match."""
  blocks = sorted({int(m.group(1)) for k in record for m in [re.match(r'moe/layer(\d+)/', k)] if m})
  return [f'block {b}' for b in blocks] if len(blocks) == count else [f'MoE {i}' for i in range(count)]


def sharing_lines(summary: dict, config: dict) -> list[str]:
  """What the expert pool saves: this model's stored parameters against the standard MoE of the same shape
  (every MoE layer its own experts), and the stored parameters at every pool size P = 1 .. L_moe."""
  num_moe = summary.get('num_moe_layers', 0)
  if not summary or not num_moe or not config:
    return []
  total, standard = summary['total'], summary['materialized']
  lines = ['', '## What the expert pool saves', '',
           f'This model stores {total:,} parameters; the standard MoE of the same shape (each of its {num_moe} MoE '
           f'layers with its own experts) stores {standard:,}, {standard / total:.2f}x as many, at the same '
           f'{summary["active_per_token"]:,} active parameters per token.']
  if standard <= total:
    lines[-1] += (' Here the pool has at least as many entries as there are MoE layers, so sharing saves nothing; '
                  'the saving grows with the MoE layers per pool entry:')
  try:
    sweep = accounting.pool_size_sweep(ml_collections.ConfigDict(config), tuple(range(1, num_moe + 1)))
  except (KeyError, ValueError, TypeError, AttributeError):   # a config.json of an older layout: no sweep
    return lines
  lines += ['', '| pool size P | stored parameters | fewer than the standard MoE |', '|---:|---:|---:|']
  lines += [f'| {r["pool_size"]} | {r["total"]:,} | {r["reduction_factor"]:.2f}x |' for r in sweep]
  return lines


def drop_lines(final: dict, last_train: dict, config: dict) -> list[str]:
  """Dropped assignments: the last train record's moe/dropped_fraction and the final validation's
  eval/moe/dropped_fraction (percent), the dropless dispatch named, and uniform routing's floor at the config's
  routing groups (samoe_jax.analysis.drop_floor). [] for a dense model (neither metric logged)."""
  train, valid = last_train.get('moe/dropped_fraction'), final.get('eval/moe/dropped_fraction')
  if train is None and valid is None:
    return []
  moe = config.get('moe', {})
  if moe.get('dispatch') == 'ragged':
    return ["- dropped assignments: none (dropless: moe.dispatch='ragged')"]
  lines = []
  if train is not None:
    lines.append(f'- dropped assignments, last logged train interval: {100 * train:.2f} % (step {last_train["step"]})')
  if valid is not None:
    lines.append(f'- dropped assignments, final validation: {100 * valid:.2f} %')
  try:
    floors = config_drop_floors(ml_collections.ConfigDict(config))
  except (KeyError, ValueError, TypeError, AttributeError):   # an older config layout or expert-choice routing
    return lines
  lines.append(f'- uniform-routing drop floor (training capacity, routing groups of moe.group_size='
               f'{moe.get("group_size")}): ' + ', '.join(f'{100 * v:.2f} % at E={e}' for e, v in floors.items()))
  return lines


def _markdown(summary: dict, final: dict, last_train: dict, figures: list[str], config: dict | None = None,
              evaluation: Sequence[str] = ()) -> str:
  lines = ['# Training report', '']
  if final:
    lines += [f'- steps: {final.get("step")} (resumed from step {final.get("resumed_from_step", 0)})']
  for key, label in (('eval/loss', 'final validation loss'), ('eval/cross_entropy', 'final validation '
                     'cross-entropy'), ('eval/perplexity', 'final validation perplexity'),
                    ('eval/accuracy', 'final validation accuracy')):
    if key in final:
      lines.append(f'- {label}: {final[key]:.4f}')
  if last_train:
    lines.append(f'- last logged train loss: {last_train["loss"]:.4f} (cross-entropy '
                 f'{last_train.get("cross_entropy", float("nan")):.4f}) at step {last_train["step"]}')
  lines += drop_lines(final, last_train, config or {})
  if summary:
    lines += ['', '## Parameters', '', '| part | count |', '|---|---:|']
    lines += [f'| {k} | {v:,} |' for k, v in summary.items()]
  lines += sharing_lines(summary, config or {})
  lines += list(evaluation)
  lines += ['', '## Figures', '']
  lines += [f'![{name}]({name})' for name in figures] or ['(no metrics yet)']
  return '\n'.join(lines) + '\n'


def write_report(workdir: str) -> str:
  """Writes loss_curves.png, mixing_weights.png and mixing_trajectories.png (models with a learned pool) and
  report.md; returns report.md."""
  train, evals = read_metrics(workdir, 'train'), read_metrics(workdir, 'eval')
  summary = _read_json(workdir, 'param_summary.json')
  final = _read_json(workdir, 'final_metrics.json')
  config = _read_json(workdir, 'config.json')
  figures = []
  losses = loss_curves.loss_plot_data(train, evals, int(config.get('train', {}).get('warmup_steps') or 0))
  if losses is not None:
    loss_curves.plot_loss_curves(losses, os.path.join(workdir, 'loss_curves.png'))
    figures.append('loss_curves.png')
  mixing = final.get('pool/mixing_weights', train[-1].get('pool/mixing_weights') if train else None)
  if mixing is not None:
    weights = np.asarray(mixing, np.float64)
    plot_mixing_weights(weights, moe_layer_names(train[-1] if train else {}, len(weights)),
                        os.path.join(workdir, 'mixing_weights.png'))
    figures.append('mixing_weights.png')
  traj = mixing_trajectories.trajectories(train)   # learned mixing with P >= 2: how the mixtures moved
  if mixing_trajectories.plot_trajectories([('run', traj)], os.path.join(workdir, 'mixing_trajectories.png')):
    figures.append('mixing_trajectories.png')
  path = os.path.join(workdir, 'report.md')
  with open(path, 'w') as f:
    f.write(_markdown(summary, final, train[-1] if train else {}, figures, config,
                      report_table.evaluation_lines(workdir)))
  return path
