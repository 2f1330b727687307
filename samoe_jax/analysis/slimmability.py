"""Self-slimmability of a trained MoE run (SMoE-Dropout, docs/methods/smoe_dropout.md; Chen et al., ICLR 2023, Fig. 1 / 4).

  python -m samoe_jax.analysis.slimmability --workdir=runs/tiny_smoe_dropout [--ks=1,2,4,8,16]
      [--checkpoint=latest | STEP] [--validation_batches=config | all | N] [--uniform=true]
      [--config=FILE --config.KEY=VALUE ...]

Restores one checkpoint's parameters (never the optimizer state) and evaluates the validation split of the run's
pretraining task with every MoE layer using k experts per token, for each k in --ks (default 1 .. E), through the
same compiled eval step as the trainer's validation (model.loss_fn(train=False), moe.eval_top_k = k; the gate is
the trained one, moe.gate unless moe.eval_gate is set). With --uniform it adds the paper's dense mode: all E
experts with weights 1/E (moe.eval_top_k = E, moe.eval_gate = 'uniform'). An SMoE-Dropout model should get better
smoothly as k grows; a learned-router MoE trained at one k typically degrades away from it.

Prints a table and writes DIR/analysis/{slimmability.json, slimmability.md, slimmability.png}: per mode the
cross-entropy, perplexity, accuracy, token count, and the active parameters and forward FLOPs per token at that k
(samoe_jax.models.accounting).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from typing import Any, Sequence

from absl import app, flags

from samoe_jax import cli
from samoe_jax.config.sections import MoeSection
from samoe_jax.data import pipeline
from samoe_jax.evaluation import checkpoints, task_finetune
from samoe_jax.evaluation.perplexity import ALL_BATCHES, parse_validation_batches
from samoe_jax.evaluation.validation import validation_metrics, make_eval_step
from samoe_jax.models import accounting
from samoe_jax.models.model import LanguageModel
from samoe_jax.models.spec import ModelSpec
from samoe_jax.sharding.mesh import make_mesh
from samoe_jax.sharding.partitioner import Partitioner
from samoe_jax.training.config_checks import validate_config
import ml_collections
from ml_collections import config_flags

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


@dataclasses.dataclass(frozen=True)
class Mode:
  """One evaluation setting: every MoE layer routes each token to `top_k` experts with gate `gate` ('' = the
  config's gate)."""
  name: str
  top_k: int
  gate: str = ''


def num_experts_of(config: ml_collections.ConfigDict) -> int:
  """E: the smallest expert count of any MoE layer (Pyramid-MoE: of any group); ValueError for a dense model."""
  spec = ModelSpec.from_config(config)
  if not spec.moe_layers:
    raise ValueError('slimmability: the model has no MoE layers (model.layer_plan), so there is no k to vary')
  return min(g.num_experts for g in spec.groups)


def parse_ks(text: str, num_experts: int) -> list[int]:
  """'' -> 1 .. E; '1,2,8' -> [1, 2, 8] (sorted, unique); ValueError for anything outside [1, E]."""
  if not text.strip():
    return list(range(1, num_experts + 1))
  try:
    ks = sorted({int(part) for part in text.split(',') if part.strip()})
  except ValueError as err:
    raise ValueError(f'--ks={text!r}: use comma-separated integers such as 1,2,4,8') from err
  bad = [k for k in ks if not 1 <= k <= num_experts]
  if not ks or bad:
    raise ValueError(f'--ks={text!r}: every k must lie in [1, {num_experts}] (the experts per MoE layer); bad: {bad}')
  return ks


def modes_for(ks: Sequence[int], num_experts: int, uniform: bool) -> list[Mode]:
  modes = [Mode(f'top-{k}', k) for k in ks]
  if uniform:
    modes.append(Mode('uniform', num_experts, 'uniform'))
  return modes


def config_at(config: ml_collections.ConfigDict, mode: Mode) -> ml_collections.ConfigDict:
  """config with moe.eval_top_k = mode.top_k and moe.eval_gate = mode.gate (the parameters are unchanged)."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.moe.eval_top_k = mode.top_k
  c.moe.eval_gate = mode.gate or config.moe.eval_gate
  return c


def slimmability_curve(config: ml_collections.ConfigDict, params: Any, partitioner: Any,
                       batches: Sequence[dict[str, Any]], modes: Sequence[Mode]) -> list[dict[str, Any]]:
  """One row per mode: validation metrics over `batches` (sharded global batches) and the per-token costs."""
  rows = []
  for mode in modes:
    c = config_at(config, mode)
    model = LanguageModel(c)
    eval_fn = make_eval_step(model, partitioner, partitioner.logical_to_mesh(model.param_logical_axes()))
    metrics = validation_metrics(eval_fn, params, list(batches))
    at_k = ml_collections.ConfigDict(c.to_dict())
    at_k.moe.top_k = mode.top_k
    rows.append({'mode': mode.name, 'k': mode.top_k, 'gate': model.spec.moe.eval_gate or model.spec.moe.gate,
                 'cross_entropy': metrics['eval/cross_entropy'], 'perplexity': metrics['eval/perplexity'],
                 'accuracy': metrics['eval/accuracy'], 'num_tokens': metrics['eval/num_tokens'],
                 'active_params_per_token': accounting.param_counts(at_k)['active_per_token'],
                 'forward_flops_per_token': accounting.flops_per_token(at_k)['forward']})
  return rows


def markdown_table(rows: Sequence[dict[str, Any]], title: str) -> str:
  lines = [f'### {title}', '', '| mode | k | gate | cross-entropy | perplexity | accuracy | active params / token | '
           'forward FLOPs / token |', '|---|---:|---|---:|---:|---:|---:|---:|']
  for r in rows:
    lines.append(f'| {r["mode"]} | {r["k"]} | {r["gate"]} | {r["cross_entropy"]:.4f} | {r["perplexity"]:.3f} | '
                 f'{r["accuracy"]:.4f} | {r["active_params_per_token"]:,} | {r["forward_flops_per_token"]:,} |')
  return '\n'.join(lines) + '\n'


def plot(rows: Sequence[dict[str, Any]], title: str, path: str) -> None:
  """Perplexity against k (top-k modes as a curve, the uniform mode as a separate marker)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  top = [r for r in rows if r['mode'] != 'uniform']
  if top:
    ax.plot([r['k'] for r in top], [r['perplexity'] for r in top], 'o-', label=f'top-k ({top[0]["gate"]} gate)')
  for r in rows:
    if r['mode'] == 'uniform':
      ax.plot([r['k']], [r['perplexity']], 's', color='tab:red', label=f'uniform 1/E (k = {r["k"]})')
  ax.set_xlabel('experts per token k (evaluation)')
  ax.set_ylabel('validation perplexity')
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_outputs(directory: str, report: dict[str, Any]) -> dict[str, str]:
  """DIR/{slimmability.json, slimmability.md, slimmability.png}; returns their paths."""
  os.makedirs(directory, exist_ok=True)
  paths = {ext: os.path.join(directory, f'slimmability.{ext}') for ext in ('json', 'md', 'png')}
  title = f'{report["workdir"]} step {report["step"]}: self-slimmability ({report["num_batches"]} validation batches)'
  with open(paths['json'], 'w') as f:
    json.dump(report, f, indent=2)
  with open(paths['md'], 'w') as f:
    f.write(markdown_table(report['rows'], title))
  plot(report['rows'], title, paths['png'])
  return paths


def run(config: ml_collections.ConfigDict, workdir: str, *, ks: str = '', checkpoint: str = 'latest',
        validation_batches: str = 'config', uniform: bool = True) -> dict[str, Any]:
  """Evaluates one checkpoint of `workdir` at every k; writes WORKDIR/analysis/slimmability.*; returns the report."""
  import jax  # pylint: disable=g-import-not-at-top

  validate_config(config)
  num_experts = num_experts_of(config)
  modes = modes_for(parse_ks(ks, num_experts), num_experts, uniform)
  num_batches = parse_validation_batches(validation_batches, config, allow_none=False) or ALL_BATCHES
  steps = checkpoints.select_steps(workdir, checkpoint)
  if len(steps) != 1:
    raise ValueError(f'--checkpoint={checkpoint!r} names {len(steps)} checkpoints; give latest or one step')
  partitioner = Partitioner(make_mesh(config.mesh))
  params = checkpoints.restore_params(LanguageModel(config), partitioner, workdir, steps[0])
  shard = {'shard_index': jax.process_index(), 'num_shards': jax.process_count()}
  host = pipeline.make_eval_batches(config.data, num_batches, **shard, examples=task_finetune.eval_rows(config.data))
  batches = [partitioner.shard_batch(b) for b in host]
  rows = slimmability_curve(config, params, partitioner, batches, modes)
  report = {'workdir': workdir, 'step': steps[0], 'num_batches': len(batches), 'num_experts': num_experts,
            'top_k': config.moe.top_k, 'gate': config.moe.gate,
            'k_schedule': MoeSection.of(config).smoe_dropout.kind, 'rows': rows}
  if jax.process_index() == 0:
    report['files'] = write_outputs(os.path.join(workdir, 'analysis'), report)
    print(markdown_table(rows, f'{workdir} step {steps[0]}'), flush=True)
  return report


def _main(config_flag: flags.FlagHolder, argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  # The user's input raises ValueError or OSError: cli.run_app prints its message, exit code 1.
  config = config_flag.value if config_flag.value is not None else checkpoints.run_config(f.workdir)
  run(config, f.workdir, ks=f.ks, checkpoint=f.checkpoint, validation_batches=f.validation_batches,
      uniform=f.uniform)


def main(argv: Sequence[str] | None = None) -> None:
  """The command (python -m, a console script): defines its flags here, not at import (every command module
  imports in one process), and runs through cli.run_app."""
  config_flag = config_flags.DEFINE_config_file('config', None, 'Model config file; default: WORKDIR/config.json.',
                                                lock_config=True)
  flags.DEFINE_string('workdir', None, 'A samoe_jax.train run directory.', required=True)
  flags.DEFINE_string('ks', '', 'Comma-separated k values to evaluate (default: 1 .. number of experts).')
  flags.DEFINE_string('checkpoint', 'latest', 'latest or one checkpoint step.')
  flags.DEFINE_string('validation_batches', 'config', 'config (train.eval_batches), all, or a number of batches.')
  flags.DEFINE_bool('uniform', True, "Also evaluate the dense mode: all experts, uniform gates 1/E ('uniform').")
  cli.run_app('samoe_jax.analysis.slimmability', functools.partial(_main, config_flag),
              sys.argv if argv is None else list(argv))


if __name__ == '__main__':
  sys.exit(main())
