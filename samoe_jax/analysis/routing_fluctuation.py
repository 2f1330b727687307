"""Routing fluctuation across the checkpoints of a trained MoE run (docs/methods/graph_routing.md; StableMoE-style definition,
used by Nguyen et al. 2025, arXiv 2505.00792, to motivate Similarity- / Attention-Aware routing).

  python -m samoe_jax.analysis.routing_fluctuation --workdir=runs/tiny_similarity_moe [--steps=all | 500,1000,...]
      [--batches=N] [--config=FILE --config.KEY=VALUE ...]

On a fixed validation token set (the first --batches global batches of data.eval_split, the batches the evaluate
CLI's validation perplexity uses; default train.eval_batches) it restores every selected checkpoint's parameters
(never the optimizer state) and records, for each real token and each MoE layer, the top-1 expert: the argmax of
the probabilities the layer routes on (p~ with moe.graph.kind, else p = softmax(router logits); evaluation
forward pass, no routing noise). For each pair of consecutive checkpoints (c, c+1):

  fluctuation(c, c+1) = #{(token, MoE layer): top1_c != top1_c+1} / #{(token, MoE layer)}

also per layer. Each step's mean router entropy H(p) and selection entropy H(p~) are reported too.
Prints a table and writes WORKDIR/analysis/routing_fluctuation.{json, md, png}.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any, Sequence

from absl import app, flags

from samoe_jax import cli
from samoe_jax.data import pipeline
from samoe_jax.evaluation import checkpoints, task_finetune
from samoe_jax.layers.graph_routing import GraphMixer
from samoe_jax.layers.grouping import from_runs
from samoe_jax.layers.inference import InferenceMode
from samoe_jax.layers.moe_call import MoeCall
from samoe_jax.layers.routing_strategies import Router
from samoe_jax.models.model import LanguageModel, token_mask
from samoe_jax.models.spec import ModelSpec
from samoe_jax.sharding.mesh import make_mesh
from samoe_jax.sharding.partitioner import Partitioner
from samoe_jax.training.config_checks import validate_config
import ml_collections
from ml_collections import config_flags

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def check_supported(config: ml_collections.ConfigDict) -> None:
  """A top-1 expert needs a token-choice MoE with per-layer routers."""
  spec = ModelSpec.from_config(config)
  if not spec.moe_layers:
    raise ValueError('routing_fluctuation: the model has no MoE layers (model.layer_plan)')
  if spec.moe.routing != 'token_choice':
    raise ValueError(f'routing_fluctuation: moe.routing={spec.moe.routing!r} has no per-token '
                     "top-1 router choice to track; it needs 'token_choice'")
  if spec.pool.share_router:
    raise ValueError('routing_fluctuation: pool.share_router=True is not supported (the shared router is not a '
                     'per-layer Router module); use a run with per-layer routers')


def top1_experts(model: Any, params: Any, tokens_BL: Any) -> tuple[Any, list[Any]]:
  """(top1 int32 [L_moe, B, L], aux dicts): each MoE layer's argmax of the routed-on probabilities, from the
  layers' Router (logits) and GraphMixer (p~) outputs of one evaluation-routing forward pass."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  b, l = tokens_BL.shape
  (_, auxes), state = model.module.apply(
      {'params': params}, tokens_BL, token_mask(tokens_BL), train=False, call=MoeCall(inference=InferenceMode()),
      capture_intermediates=lambda mdl, name: name == '__call__' and isinstance(mdl, (Router, GraphMixer)),
      mutable=['intermediates'])
  inter = state['intermediates']
  out = []
  for layer in model.spec.moe_layers:
    moe = inter[f'block_{layer}']['moe']
    if 'graph' in moe:
      probs_BLE = moe['graph']['__call__'][0]
    else:
      probs_BLE = from_runs(moe['router']['__call__'][0], b, l)
    out.append(jnp.argmax(probs_BLE, axis=-1).astype(jnp.int32))
  return jnp.stack(out), [{k: a[k] for k in ('router_entropy', 'selection_entropy')} for a in auxes]


def fluctuation(top1_a: Any, top1_b: Any, real: Any) -> tuple[float, list[float]]:
  """(overall, per layer) fraction of real (token, layer) pairs whose top-1 expert differs; top1 [L_moe, N]."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  changed = (np.asarray(top1_a) != np.asarray(top1_b)) & np.asarray(real)[None]
  n = max(int(np.sum(real)), 1)
  per_layer = [float(np.sum(c)) / n for c in changed]
  return float(np.sum(changed)) / (n * len(per_layer)), per_layer


def collect(config: ml_collections.ConfigDict, workdir: str, steps: Sequence[int],
            batches: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Top-1 experts of every step on `batches` (host numpy batches) and the report (see the module docstring)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  model = LanguageModel(config)
  partitioner = Partitioner(make_mesh(config.mesh))
  fn = jax.jit(functools.partial(top1_experts, model))
  real = np.concatenate([np.asarray(b['decoder_loss_weights']).reshape(-1) > 0 for b in batches])
  top1, entropies = {}, {}
  for step in steps:
    params = checkpoints.restore_params(model, partitioner, workdir, step)
    per_batch, ents = [], []
    for batch in batches:
      t, aux = fn(params, np.asarray(batch['decoder_input_tokens']))
      per_batch.append(np.asarray(t).reshape(t.shape[0], -1))
      ents.append([{k: float(v) for k, v in a.items()} for a in aux])
    top1[step] = np.concatenate(per_batch, axis=1)
    entropies[step] = {key: [float(np.mean([e[i][key] for e in ents])) for i in range(len(model.spec.moe_layers))]
                       for key in ('router_entropy', 'selection_entropy')}
  transitions = []
  for a, b in zip(steps[:-1], steps[1:]):
    overall, per_layer = fluctuation(top1[a], top1[b], real)
    transitions.append({'from_step': a, 'to_step': b, 'fluctuation': overall,
                        'per_layer': {str(layer): v for layer, v in zip(model.spec.moe_layers, per_layer)}})
  return {'workdir': workdir, 'steps': list(steps), 'num_batches': len(batches), 'num_tokens': int(np.sum(real)),
          'moe_layers': list(model.spec.moe_layers), 'graph_routing': model.spec.graph.kind,
          'transitions': transitions, 'entropy': {str(s): entropies[s] for s in steps},
          'top1': {str(s): top1[s] for s in steps}}


def markdown_table(report: dict[str, Any]) -> str:
  layers = report['moe_layers']
  lines = [f'### {report["workdir"]}: routing fluctuation (graph_routing={report["graph_routing"]!r}, '
           f'{report["num_tokens"]} tokens x {len(layers)} MoE layers)', '',
           '| from step | to step | fluctuation | ' + ' | '.join(f'block {l}' for l in layers) + ' |',
           '|---:|---:|---:|' + '---:|' * len(layers)]
  for t in report['transitions']:
    lines.append(f'| {t["from_step"]} | {t["to_step"]} | {t["fluctuation"]:.4f} | '
                 + ' | '.join(f'{t["per_layer"][str(l)]:.4f}' for l in layers) + ' |')
  lines += ['', '| step | mean H(p) | mean H(p~) |', '|---:|---:|---:|']
  for s in report['steps']:
    e = report['entropy'][str(s)]
    lines.append(f'| {s} | {sum(e["router_entropy"]) / len(layers):.4f} | '
                 f'{sum(e["selection_entropy"]) / len(layers):.4f} |')
  return '\n'.join(lines) + '\n'


def plot(report: dict[str, Any], path: str) -> None:
  """Fluctuation (overall and per layer) against the later step of each transition."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  x = [t['to_step'] for t in report['transitions']]
  ax.plot(x, [t['fluctuation'] for t in report['transitions']], 'o-', label='all MoE layers')
  for layer in report['moe_layers']:
    ax.plot(x, [t['per_layer'][str(layer)] for t in report['transitions']], '.--', alpha=0.6,
            label=f'block {layer}')
  ax.set_xlabel('checkpoint step (vs the previous checkpoint)')
  ax.set_ylabel('fraction of top-1 experts changed')
  ax.set_title(f'{report["workdir"]}: routing fluctuation', fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_outputs(directory: str, report: dict[str, Any]) -> dict[str, str]:
  """DIR/routing_fluctuation.{json, md, png} (the JSON without the raw top-1 arrays); returns their paths."""
  os.makedirs(directory, exist_ok=True)
  paths = {ext: os.path.join(directory, f'routing_fluctuation.{ext}') for ext in ('json', 'md', 'png')}
  with open(paths['json'], 'w') as f:
    json.dump({k: v for k, v in report.items() if k != 'top1'}, f, indent=2)
  with open(paths['md'], 'w') as f:
    f.write(markdown_table(report))
  plot(report, paths['png'])
  return paths


def run(config: ml_collections.ConfigDict, workdir: str, *, steps: str = 'all', batches: int = 0) -> dict[str, Any]:
  """Routing fluctuation of `workdir`'s checkpoints `steps` on `batches` validation batches (0: train.eval_batches)."""
  import jax  # pylint: disable=g-import-not-at-top
  validate_config(config)
  check_supported(config)
  if not isinstance(batches, int) or batches < 0:
    raise ValueError(f'--batches={batches!r}: use a count >= 1 (0 = train.eval_batches)')
  selected = checkpoints.select_steps(workdir, steps)
  if len(selected) < 2:
    raise ValueError(f'--steps={steps!r} names {len(selected)} checkpoint(s) of {workdir}; fluctuation compares '
                     'consecutive checkpoints, so give at least two')
  host = pipeline.make_eval_batches(config.data, batches or int(config.train.eval_batches) or 1,
                                    examples=task_finetune.eval_rows(config.data))
  report = collect(config, workdir, sorted(selected), host)
  if jax.process_index() == 0:
    report['files'] = write_outputs(os.path.join(workdir, 'analysis'), report)
    print(markdown_table(report), flush=True)
  return report


def _main(config_flag: flags.FlagHolder, argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  # The user's input raises ValueError or OSError: cli.run_app prints its message, exit code 1.
  config = config_flag.value if config_flag.value is not None else checkpoints.run_config(f.workdir)
  run(config, f.workdir, steps=f.steps, batches=f.batches)


def main(argv: Sequence[str] | None = None) -> None:
  """The command (python -m, a console script): defines its flags here, not at import (every command module
  imports in one process), and runs through cli.run_app."""
  config_flag = config_flags.DEFINE_config_file('config', None, 'Model config file; default: WORKDIR/config.json.',
                                                lock_config=True)
  flags.DEFINE_string('workdir', None, 'A samoe_jax.train run directory.', required=True)
  flags.DEFINE_string('steps', 'all', 'all, or comma-separated checkpoint steps (at least two).')
  flags.DEFINE_integer('batches', 0, 'Validation batches of the fixed token set (0: train.eval_batches).')
  cli.run_app('samoe_jax.analysis.routing_fluctuation', functools.partial(_main, config_flag),
              sys.argv if argv is None else list(argv))


if __name__ == '__main__':
  sys.exit(main())
