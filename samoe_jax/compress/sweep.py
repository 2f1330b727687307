"""Fine-tune, evaluate and report compressed runs (the `uncurl` and `mcsmoe` commands, docs/compression.md).

Every model of a comparison is scored the same way: fine-tuned on the task's training split for `steps` steps
(python -m samoe_jax.finetune's recipe; 0 = no fine-tuning) and evaluated with the evaluator on the task's
evaluated split. The report gives, per model, stored parameters, expert parameters and their float32 memory,
forward FLOPs per token (samoe_jax.models.accounting), the task metric and its change against the uncompressed model;
for UNCURL the threshold factor r* per variant: the largest r whose metric is within `tolerance` of the
uncompressed model's.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from absl import logging

from samoe_jax.config import pyramid
from samoe_jax.config.defaults import get_base_config
from samoe_jax.evaluation import checkpoints, outputs
from samoe_jax.evaluation.backend import ModelBackend
from samoe_jax.evaluation.checkpoints import run_config as saved
from samoe_jax.evaluation.runner import EvalSettings, run_evaluation
from samoe_jax.evaluation.tokenization import EvalTokenizer
from samoe_jax.layers.low_rank_experts import sparse_names
from samoe_jax.models import accounting
from samoe_jax.models.model import LanguageModel
from samoe_jax.sharding.mesh import make_mesh
from samoe_jax.sharding.partitioner import Partitioner
from samoe_jax.training import loop
from samoe_jax.training.finetune_config import finetune_config
from samoe_jax.training.sparse_pruning import sparse_density

BYTES_PER_PARAM = 4   # float32 parameters


@dataclasses.dataclass(frozen=True)
class FinetuneSettings:
  """How every model of a comparison is fine-tuned and evaluated."""
  task: str
  data_dir: str
  steps: int = 0
  learning_rate: float = 1e-4
  batch_size: int = 0
  eval_limit: int = 0
  distill: bool = False
  distill_alpha: float = 0.2
  distill_temperature: float = 2.0
  metric: str = 'acc'


def run_config(workdir: str) -> Any:
  config = get_base_config()
  config.update(saved(workdir))
  return config


def score(run_dir: str, out_dir: str, settings: FinetuneSettings, teacher: str = '') -> dict[str, float]:
  """The task scores of `run_dir` after fine-tuning into `out_dir` (settings.steps > 0), or of its latest
  checkpoint as it is (steps == 0; the scores written to out_dir/scores.json, never into run_dir).
  teacher: distil from this run (settings.distill)."""
  if settings.steps <= 0:
    return evaluate_latest(run_dir, settings, out_dir)
  config = finetune_config(run_config(run_dir), task=settings.task, eval_data_dir=settings.data_dir,
                           init_from=run_dir, steps=settings.steps, learning_rate=settings.learning_rate,
                           batch_size=settings.batch_size, eval_limit=settings.eval_limit,
                           distill=bool(settings.distill and teacher), distill_alpha=settings.distill_alpha,
                           distill_temperature=settings.distill_temperature)
  if settings.distill and teacher:
    config.distill.teacher_workdir = teacher
  loop.train(config, out_dir)   # a finished run is left as it is
  key = outputs.setting_key({'num_fewshot': 0, 'limit': settings.eval_limit or None})
  path = os.path.join(outputs.eval_dir(out_dir), f'step_{settings.steps}' + (f'_{key}' if key else ''),
                      'results.json')
  with open(path) as f:
    return json.load(f)['scores'][settings.task]


def evaluate_latest(run_dir: str, settings: FinetuneSettings, out_dir: str) -> dict[str, float]:
  """The task scores of run_dir's latest checkpoint (the evaluator, zero-shot), saved as out_dir/scores.json;
  an earlier scores.json of the same checkpoint is read instead of evaluating again."""
  step = max(checkpoints.available_steps(run_dir))
  path = os.path.join(out_dir, 'scores.json')
  if os.path.isfile(path):
    with open(path) as f:
      saved = json.load(f)
    if saved.get('workdir') == os.path.abspath(run_dir) and saved.get('step') == step:
      return saved['scores']
  config = run_config(run_dir)
  eval_settings = EvalSettings(tasks=(settings.task,), data_dir=settings.data_dir, limit=settings.eval_limit or None)
  eval_settings.check()
  model = LanguageModel(config)
  partitioner = Partitioner(make_mesh(config.mesh))
  params = checkpoints.restore_params(model, partitioner, run_dir, step)
  backend = ModelBackend(model, params, EvalTokenizer.from_config(config),
                         batch_size=settings.batch_size or config.eval.batch_size, partitioner=partitioner)
  scores, _ = run_evaluation(backend, eval_settings, model=model, params=params, partitioner=partitioner,
                             config=config)
  os.makedirs(out_dir, exist_ok=True)
  with open(path, 'w') as f:
    json.dump({'workdir': os.path.abspath(run_dir), 'step': step, 'scores': scores[settings.task]}, f, indent=2)
  return scores[settings.task]


def model_row(name: str, run_dir: str, scores: dict[str, float], metric: str, final_dir: str = '',
              **extra: Any) -> dict[str, Any]:
  """One model of the comparison: sizes from its param_summary.json and config, its score. Low-rank + sparse
  experts (low_rank_sparse.rank > 0) are measured from `final_dir`'s latest checkpoint instead: U, V, biases and
  the nonzero entries of S (what a sparse format stores), with the measured density of S."""
  with open(os.path.join(run_dir, 'param_summary.json')) as f:
    summary = json.load(f)
  config = run_config(run_dir)
  if metric not in scores:
    raise ValueError(f'--metric={metric!r} is not a metric of task scores {sorted(scores)}')
  flops = accounting.flops_per_token(config)
  expert_params, stored = int(summary['expert_pool']), int(summary['total'])
  if config.low_rank_sparse.rank:
    measured = stored_expert_entries(final_dir or run_dir)
    stored += measured['stored'] - expert_params
    expert_params = measured['stored']
    extra = dict(extra, sparse_density=measured['density'],
                 forward_flops_low_rank_sparse=float(flops['forward'] - flops['moe_experts']
                                                     + flops['moe_experts_low_rank_sparse']))
  return dict(name=name, workdir=run_dir, stored_params=stored, expert_params=expert_params,
              expert_memory_mib=expert_params * BYTES_PER_PARAM / 2**20,
              experts_per_layer=list(pyramid.stored_counts(config)),
              forward_flops_per_token=float(flops['forward']), metric=metric, score=float(scores[metric]),
              scores=scores, **extra)


def stored_expert_entries(workdir: str) -> dict[str, float]:
  """The expert pools of `workdir`'s latest checkpoint as a sparse format stores them: every entry of U, V and the
  biases, the nonzeros of S ('stored'), and the fraction of S's entries that are nonzero ('density')."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  config = run_config(workdir)
  model = LanguageModel(config)
  params = checkpoints.restore_params(model, Partitioner(make_mesh(config.mesh)), workdir,
                                      max(checkpoints.available_steps(workdir)))
  pools = {g.pool_name: params[g.pool_name] for g in model.spec.groups}
  density = sparse_density(pools)
  stored = 0
  for pool in pools.values():
    for key, value in pool.items():
      stored += int(np.count_nonzero(np.asarray(value))) if key in sparse_names() else int(np.size(value))
  return {'stored': stored, 'density': float(density if density is not None else 1.0)}


def threshold_factor(rows: list[dict[str, Any]], baseline: float, tolerance: float) -> int | None:
  """The largest pruning factor whose score is >= baseline - tolerance (None when none is)."""
  ok = [r['factor'] for r in rows if r['score'] >= baseline - tolerance]
  return max(ok) if ok else None


def write_report(out: str, title: str, rows: list[dict[str, Any]], meta: dict[str, Any],
                 sentences: list[str]) -> str:
  """report.md (table + computed sentences), results.json and tradeoff.png in `out`; returns report.md."""
  os.makedirs(out, exist_ok=True)
  base = rows[0]
  for r in rows:
    r['score_change'] = r['score'] - base['score']
    r['expert_memory_reduction'] = base['expert_params'] / max(r['expert_params'], 1)
  with open(os.path.join(out, 'results.json'), 'w') as f:
    json.dump(dict(meta, rows=rows, conclusions=sentences), f, indent=2)
  metric = base['metric']
  lines = [f'# {title}', '', f'Command: `{meta.get("command", "")}`', '',
           f'Source run: `{meta.get("source_workdir")}` (step {meta.get("source_step")}); task `{meta.get("task")}`, '
           f'fine-tuning steps per model: {meta.get("finetune_steps")}.', '',
           f'| model | experts per MoE layer | stored params | expert params | expert memory (MiB) | memory '
           f'reduction | forward FLOPs/token | {metric} | change |',
           '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f'| {r["name"]} | {",".join(map(str, r["experts_per_layer"]))} | {r["stored_params"]:,} | '
                 f'{r["expert_params"]:,} | {r["expert_memory_mib"]:.3f} | {r["expert_memory_reduction"]:.2f}x | '
                 f'{r["forward_flops_per_token"]:,.0f} | {r["score"]:.4f} | {r["score_change"]:+.4f} |')
  lines += ['', *[f'- {s}' for s in sentences], '', '![trade-off](tradeoff.png)', '']
  path = os.path.join(out, 'report.md')
  with open(path, 'w') as f:
    f.write('\n'.join(lines))
  plot_tradeoff(rows, os.path.join(out, 'tradeoff.png'), f'{title}: {metric} vs expert memory')
  logging.info('report: %s', path)
  return path


def plot_tradeoff(rows: list[dict[str, Any]], path: str, title: str) -> None:
  """Task metric against expert memory reduction, one series per variant (rows' 'series')."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.0, 4.0))
  base = rows[0]
  ax.axhline(base['score'], color='gray', linestyle='--', linewidth=1, label=f'{base["name"]}')
  series: dict[str, list[dict[str, Any]]] = {}
  for r in rows[1:]:
    series.setdefault(r.get('series', r['name']), []).append(r)
  for name, points in series.items():
    points = sorted(points, key=lambda r: r['expert_memory_reduction'])
    ax.plot([p['expert_memory_reduction'] for p in points], [p['score'] for p in points], marker='o', label=name)
  ax.set_xlabel('expert memory reduction vs the uncompressed model (x)')
  ax.set_ylabel(base['metric'])
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
