"""gradient_flow.md (`markdown`) and the figures (`write_figures`) of samoe_jax.analysis.gradient_flow, drawn
from its report dict (what gradient_flow.json holds):

  grad_norm_vs_step.png           per group: gradient rms against step by layer type (log-y)
  expert_grad_vs_num_experts.png  standard MoE: expert rms and update ratio against E (log2-x), dense FFN lines
  token_share_vs_grad.png         every (layer, expert): token share against gradient norm, one colour per group
  pool_vs_layer_experts.png       shared-pool entries beside the standard MoE's layer experts and the shared
                                  models' per-layer mixed experts (rms and update ratio, grouped bars)
A figure with nothing to draw says why inside it, so the file set is always the same.
"""

from __future__ import annotations

import math
import os
from typing import Any

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

# The layer types' names in the tables and figures (samoe_jax.analysis.gradient_flow.LAYER_TYPES).
LAYER_TYPE_NAMES = {'total': 'all parameters', 'embedding': 'embeddings', 'norms': 'LayerNorms',
                    'attention': 'attention (mean over blocks)', 'ffn': 'dense FFN (mean over dense blocks)',
                    'router': 'router (mean over MoE blocks)', 'residual': 'Residual-MoE MLP (mean over blocks)',
                    'experts': 'layer experts (mean over MoE blocks of mean_rms)',
                    'pool': 'pool entries (mean of entry_rms)', 'mixing': 'mixing logits',
                    'shared': 'WideNet shared router / attention', 'other': 'other top-level parameters'}


def fmt(x: float | None) -> str:
  """3 significant digits ('n/a' for None): the format every number of the sentences uses."""
  return 'n/a' if x is None else f'{x:.3g}'


FIGURES = {'grad_norm_vs_step': 'grad_norm_vs_step.png',
           'expert_grad_vs_num_experts': 'expert_grad_vs_num_experts.png',
           'token_share_vs_grad': 'token_share_vs_grad.png',
           'pool_vs_layer_experts': 'pool_vs_layer_experts.png'}
SERIES_NAMES = {'embedding': 'embeddings', 'norms': 'LayerNorms', 'attention': 'attention', 'ffn': 'dense FFN',
                'router': 'router', 'residual': 'Residual-MoE MLP', 'experts': 'layer experts',
                'pool': 'pool entries', 'mixing': 'mixing logits', 'shared': 'WideNet shared'}
BAR_COLOURS = {'pool entry': 'tab:red', 'layer experts': 'tab:blue', 'mixed experts': 'tab:orange'}


def _empty(ax: Any, message: str) -> None:
  ax.text(0.5, 0.5, message, ha='center', va='center', wrap=True, fontsize=9, transform=ax.transAxes)
  ax.set_xticks([])
  ax.set_yticks([])


def _positive(values: list[float | None]) -> list[float]:
  """None / non-positive -> NaN (a gap on a log axis)."""
  return [v if v is not None and v > 0 else math.nan for v in values]


def _save(fig: Any, path: str) -> None:
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_grad_vs_step(report: dict[str, Any], path: str) -> None:
  groups = report['groups']
  cols = min(len(groups), 3)
  rows = math.ceil(len(groups) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
  for ax in axes.flat[len(groups):]:
    ax.axis('off')
  for ax, g in zip(axes.flat, groups):
    steps = g['series']['steps']
    drawn = False
    for i, (t, name) in enumerate(SERIES_NAMES.items()):   # one colour per layer type in every panel
      if t in g['series']['rms'] and any(v and v > 0 for v in g['series']['rms'][t]):
        ax.plot(steps, _positive(g['series']['rms'][t]), '.-', markersize=3, color=f'C{i}', label=name)
        drawn = True
    if not drawn:
      _empty(ax, f'{g["label"]}: no gradient rms to plot')
      continue
    ax.axvline(report['step'], color='grey', linestyle=':', linewidth=1)
    ax.set_yscale('log')
    ax.set_xlabel('step')
    ax.set_ylabel('gradient rms (per parameter)')
    ax.set_title(f'{g["label"]} ({g["num_seeds"]} seed(s))', fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  _save(fig, path)


def plot_expert_vs_num_experts(report: dict[str, Any], path: str) -> None:
  data = report['expert_vs_num_experts']
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, metric, ylabel in ((axes[0], 'rms', 'expert gradient rms (per parameter)'),
                             (axes[1], 'update_ratio', 'expert update ratio ||dw|| / ||w||')):
    if not data['series']:
      _empty(ax, "no standard-MoE group (pool.mixing='fixed', pool.size = number of MoE layers)")
      continue
    for s in data['series']:
      points = [p for p in s['points'] if p[metric] and p[metric]['mean'] is not None]
      ax.errorbar([p['num_experts'] for p in points], [p[metric]['mean'] for p in points],
                  yerr=[p[metric]['std'] or 0.0 for p in points], fmt='o-', capsize=3,
                  label=f'standard MoE top-{s["top_k"]}')
    for i, d in enumerate(data['dense_reference']):
      if d[metric] and d[metric]['mean'] is not None:
        ax.axhline(d[metric]['mean'], color=f'C{i + 3}', linestyle='--', label=f'dense FFN ({d["label"]})')
    ax.set_xscale('log', base=2)
    es = sorted({p['num_experts'] for s in data['series'] for p in s['points']})
    ax.set_xticks(es, [str(e) for e in es])
    ax.minorticks_off()
    ax.set_xlabel('experts per MoE layer E')
    ax.set_ylabel(ylabel)
    ax.set_title(f'step {report["step"]}, window {report["window"]}', fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  _save(fig, path)


def plot_token_share(report: dict[str, Any], path: str) -> None:
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  drawn = False
  for i, g in enumerate(report['groups']):
    t = g['token_share_vs_grad']
    if not t['num_points']:
      continue
    rho = 'n/a' if t['spearman'] is None else f'{t["spearman"]:.2f}'
    ax.scatter([p['token_share'] for p in t['points']], [p['norm'] for p in t['points']], s=14, alpha=0.7,
               color=f'C{i}', label=f'{g["label"]} (Spearman {rho})')
    drawn = True
  if not drawn:
    _empty(ax, 'no MoE layer with per-expert token shares and gradient norms')
  else:
    ax.set_xlabel("expert's share of routed (token, choice) assignments")
    ax.set_ylabel("expert's gradient norm")
    ax.set_title(f'every (MoE layer, expert) at step {report["step"]}, window {report["window"]}', fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  _save(fig, path)


def plot_pool_vs_layer(report: dict[str, Any], path: str) -> None:
  bars = report['pool_vs_layer']['bars']
  fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.45 * len(bars) + 2), 7))
  if not bars:
    _empty(axes[0], 'no standard-MoE or shared-pool (SaMoE, tied, manual, WideNet) group')
    axes[1].axis('off')
    _save(fig, path)
    return
  x, centres, position, previous = [], [], 0.0, None
  for bar in bars:
    if previous is not None and bar['group'] != previous:
      position += 1.0
    x.append(position)
    position += 1.0
    previous = bar['group']
  for group in dict.fromkeys(b['group'] for b in bars):
    xs = [xi for xi, b in zip(x, bars) if b['group'] == group]
    centres.append((sum(xs) / len(xs), group))
  for ax, metric, ylabel in ((axes[0], 'rms', 'gradient rms (per parameter)'),
                             (axes[1], 'update_ratio', 'update ratio ||dw|| / ||w||')):
    for kind, colour in BAR_COLOURS.items():
      chosen = [(xi, b) for xi, b in zip(x, bars) if b['type'] == kind and b[metric]['mean'] is not None]
      if chosen:
        ax.bar([c[0] for c in chosen], [c[1][metric]['mean'] for c in chosen], color=colour, label=kind,
               yerr=[c[1][metric]['std'] or 0.0 for c in chosen], capsize=2)
    ax.set_xticks(x, [b['item'] for b in bars], rotation=60, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis='y')
    for centre, group in centres:
      ax.text(centre, 1.01, group, ha='center', va='bottom', fontsize=7, transform=ax.get_xaxis_transform())
    ax.legend(fontsize=7)
  axes[0].set_title(f'step {report["step"]}, window {report["window"]}\n', fontsize=9)
  _save(fig, path)


def write_figures(report: dict[str, Any], out_dir: str) -> dict[str, str]:
  """Writes the four PNGs into out_dir; returns {figure name: file name}."""
  plot_grad_vs_step(report, os.path.join(out_dir, FIGURES['grad_norm_vs_step']))
  plot_expert_vs_num_experts(report, os.path.join(out_dir, FIGURES['expert_grad_vs_num_experts']))
  plot_token_share(report, os.path.join(out_dir, FIGURES['token_share_vs_grad']))
  plot_pool_vs_layer(report, os.path.join(out_dir, FIGURES['pool_vs_layer_experts']))
  return dict(FIGURES)


def _pm(s: dict[str, Any] | None) -> str:
  if not s or s.get('mean') is None:
    return 'n/a'
  return fmt(s['mean']) + (f' ± {fmt(s["std"])}' if s.get('n', 1) > 1 else '')


def markdown(report: dict[str, Any]) -> str:
  """gradient_flow.md: the findings, per-group tables, the E sweep, pool vs layer experts, token shares."""
  lines = ['# Gradient flow', '', f'Step {report["step"]} ({report["step_source"]}), window {report["window"]} '
           'grad_stats record(s); mean ± sample std over seeds. rms = gradient norm / sqrt(parameters); update '
           'ratio = ||dw|| / ||w||.', '', '## Findings', '']
  lines += [f'- {s}' for s in report['sentences']]
  ratios = {r['label']: r for r in report['pool_vs_layer']['ratios']}
  for g in report['groups']:
    lines += ['', f'## {g["label"]}', '', f'{g["num_seeds"]} seed(s): ' + ', '.join(g['workdirs']) +
              f'; steps used {g["steps_used"]}', '', '| layer type | rms | update ratio | norm |',
              '|---|---:|---:|---:|']
    for t, v in g['layer_types'].items():
      lines.append(f'| {LAYER_TYPE_NAMES[t]} | {_pm(v["rms"])} | {_pm(v["update_ratio"])} | {_pm(v["norm"])} |')
    if g['moe_layers']:
      lines += ['', '| MoE block | E | expert mean rms | expert mean update ratio |', '|---:|---:|---:|---:|']
      for block, layer in g['moe_layers'].items():
        e = len(layer['rms']['mean'] or [])
        lines.append(f'| {block} | {e} | {_pm(layer["mean_rms"])} | {_pm(layer["mean_update_ratio"])} |')
    if g['label'] in ratios:
      r = ratios[g['label']]
      lines += ['', f'Pool-entry vs layer-expert rms ratio: {fmt(r["rms_ratio"])} '
                    f'(reference: {r["reference"] or "no standard MoE with E=" + str(r["num_experts"])}).']
  fig2 = report['expert_vs_num_experts']
  lines += ['', '## Expert gradient per parameter against E (standard MoE)', '']
  if fig2['series']:
    lines += ['| top-k | E | group | expert rms | expert update ratio |', '|---:|---:|---|---:|---:|']
    for s in fig2['series']:
      lines += [f'| {s["top_k"]} | {p["num_experts"]} | {p["label"]} | {_pm(p["rms"])} | {_pm(p["update_ratio"])} |'
                for p in s['points']]
  else:
    lines.append('No standard-MoE group.')
  for d in fig2['dense_reference']:
    lines.append(f'\nDense FFN reference {d["label"]}: rms {_pm(d["rms"])}, update ratio {_pm(d["update_ratio"])}.')
  lines += ['', '## Pool entries vs layer experts', '']
  if ratios:
    lines += ['| group | E | pool-entry rms | reference | layer-expert rms | rms ratio | update-ratio ratio | '
              'mixed-expert rms |', '|---|---:|---:|---|---:|---:|---:|---:|']
    lines += [f'| {r["label"]} | {r["num_experts"]} | {fmt(r["pool_entry_rms"])} | {r["reference"] or "none"} | '
              f'{fmt(r["layer_expert_rms"])} | {fmt(r["rms_ratio"])} | {fmt(r["update_ratio_ratio"])} | '
              f'{fmt(r["mixed_expert_rms"])} |' for r in ratios.values()]
  else:
    lines.append('No shared-pool group (SaMoE, tied, manual, WideNet).')
  lines += ['', '## Token share vs gradient norm', '', '| group | points | Spearman | slope |', '|---|---:|---:|---:|']
  lines += [f'| {g["label"]} | {g["token_share_vs_grad"]["num_points"]} | {fmt(g["token_share_vs_grad"]["spearman"])}'
            f' | {fmt(g["token_share_vs_grad"]["slope"])} |' for g in report['groups'] if g['num_moe_layers']]
  lines += ['', '## Figures', ''] + [f'![{name}]({f})' for name, f in report['figures'].items()]
  return '\n'.join(lines) + '\n'


