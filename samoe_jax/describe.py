"""Describe a config without building it: layer plan, parameter counts, FLOPs, SaMoE reduction, capacity.

  python -m samoe_jax.describe --config=configs/gpt3_350m_samoe.py [--config.pool.size=4] [--json]
      [--pool_sweep=1,2,3,4,6] [--check_model]

Everything comes from samoe_jax.models.accounting (analytic, instant even at 52B). --check_model also evaluates the
model's parameter shapes with jax.eval_shape (no weights are allocated) and compares the counts.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Sequence

from absl import app, flags
import ml_collections
from ml_collections import config_flags

from samoe_jax import cli
from samoe_jax.config import pyramid
from samoe_jax.config.defaults import get_base_config
from samoe_jax.config.layer_plan import moe_layer_indices, pool_assignment
from samoe_jax.evaluation.checkpoints import run_config
from samoe_jax.layers.graph_routing import describe_graph
from samoe_jax.layers.mixing import mixing_for
from samoe_jax.layers.routing_checks import describe_policy
from samoe_jax.models import accounting
from samoe_jax.models.model import LanguageModel
from samoe_jax.training import distill, init_from
from samoe_jax.training.config_checks import validate_config
from samoe_jax.training.optimizer import mixing_reach, resolved_lr_multipliers

def human(n: float, digits: int = 2) -> str:
  """12_980_000_000 -> '12.98B'; 1_572_864 -> '1.57M'; small numbers as they are (B = 1e9, P = 1e15)."""
  for scale, suffix in ((1e18, 'E'), (1e15, 'P'), (1e12, 'T'), (1e9, 'B'), (1e6, 'M'), (1e3, 'K')):
    if abs(n) >= scale:
      return f'{n / scale:.{digits}f}{suffix}'
  return f'{n:g}'


def widenet_sharing(config: ml_collections.ConfigDict, num_moe: int) -> str:
  """'' or the WideNet sharing (layers/shared.py) appended to sharing_mode: shared router and/or attention."""
  parts = []
  if num_moe and config.pool.share_router:
    parts.append(f'one router shared by the {num_moe} MoE layers')
  if config.model.share_attention:
    parts.append(f'one attention shared by the {config.model.num_layers} blocks')
  return f'; WideNet: {" and ".join(parts)} (per-block LayerNorms)' if parts else ''


def pool_mapping(rows: list[dict[str, Any]]) -> dict[int, list[int]]:
  """Fixed mixing: {pool entry: the MoE blocks that use it} (manual sharing strategies); {} otherwise."""
  mapping: dict[int, list[int]] = {}
  for r in rows:
    if 'pool_entry' in r:
      mapping.setdefault(r['pool_entry'], []).append(r['block'])
  return dict(sorted(mapping.items()))


def sharing_mode(config: ml_collections.ConfigDict, num_moe: int) -> str:
  pool = config.pool
  if num_moe == 0:
    return 'dense model'
  return mixing_for(pool).describe(pool.size, num_moe, pool.assignment)   # layers/mixing.py


def layer_rows(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """One dict per block: its FFN kind and, for MoE blocks, experts and pool entry or mixing."""
  moe_layers = moe_layer_indices(config.model)
  moe, pool = config.moe, config.pool
  entries = pool_assignment(len(moe_layers), pool.size, pool.assignment) if moe_layers else []
  index = {layer: i for i, layer in enumerate(moe_layers)}
  rows = []
  for block in range(config.model.num_layers):
    if block not in index:
      rows.append({'block': block, 'ffn': 'dense', 'd_ff': config.model.d_ff})
      continue
    i = index[block]
    row = {'block': block, 'ffn': 'moe', 'moe_layer': i, 'num_experts': moe.num_experts, 'top_k': moe.top_k,
           'd_ff': moe.expert_d_ff or config.model.d_ff, 'mixing': pool.mixing}
    if mixing_for(pool).selects_entries:
      row['pool_entry'] = entries[i]
    else:
      row.update(pool_size=pool.size, granularity=pool.granularity, init=pool.init,
                 init_entry=entries[i] if pool.init == 'one_hot' else None)
    rows.append(row)
  pr_moe_rows(config, rows)
  return rows


def pr_moe_rows(config: ml_collections.ConfigDict, rows: list[dict[str, Any]]) -> None:
  """PR-MoE (docs/methods/pr_moe.md): each MoE row gets its layer's expert count, its pool group ('expert_pool' or
  'expert_pool_e<E>', config/pyramid.py) and moe.residual. With several groups, a fixed row's 'pool_entry' is
  its entry in the groups' pools laid end to end (group 0's P_0 entries first), 'group_entry' the one within its
  group, and a learned row's 'pool_size' its group's P_g."""
  groups = pyramid.groups_of_config(config)
  moe_rows = [r for r in rows if r['ffn'] == 'moe']
  offset = 0
  for g in groups:
    for i, entry in zip(g.layers, g.entries):
      r = moe_rows[i]
      r.update(num_experts=g.num_experts, pool_group=g.pool_name, residual=config.moe.residual)
      if len(groups) > 1 and 'pool_entry' in r:
        r.update(pool_entry=offset + entry, group_entry=entry)
      elif len(groups) > 1:
        r.update(pool_size=g.pool_size, init_entry=entry if r['init_entry'] is not None else None)
    offset += g.pool_size


def pr_moe_sharing(config: ml_collections.ConfigDict, num_moe: int) -> str:
  """'' or the PR-MoE options (docs/methods/pr_moe.md) appended to sharing_mode."""
  if not num_moe:
    return ''
  groups = pyramid.groups_of_config(config)
  parts = []
  if len(groups) > 1 or config.moe.experts_per_layer:
    parts.append('Pyramid-MoE ' + ', '.join(
        f'{len(g.layers)} x {g.num_experts} experts ({g.pool_name}, P={g.pool_size})' for g in groups))
  if config.moe.residual != 'none':
    parts.append(f'Residual-MoE ({config.moe.residual}: dense MLP + top-{config.moe.top_k} experts)')
  return f'; {" and ".join(parts)}' if parts else ''


def describe(config: ml_collections.ConfigDict, pool_sweep: list[int] | None = None) -> dict[str, Any]:
  """The report as a JSON-able dict (validates the config first)."""
  validate_config(config)
  rows = layer_rows(config)
  num_moe = sum(r['ffn'] == 'moe' for r in rows)
  report: dict[str, Any] = {
      'model': {k: config.model[k] for k in ('num_layers', 'd_model', 'num_heads', 'd_ff', 'vocab_size',
                                             'max_len', 'dtype')},
      'sharing': sharing_mode(config, num_moe) + widenet_sharing(config, num_moe) + pr_moe_sharing(config, num_moe),
      'layer_plan': rows,
      'pool_mapping': pool_mapping(rows),
      'params': accounting.param_counts(config),
      'flops_per_token': accounting.flops_per_token(config),
      'flops_per_step': accounting.flops_per_step(config),
  }
  for key, summary in (('distill', distill.describe(config)), ('init', init_from.describe(config))):
    if summary:   # KD / initialisation from another run (training/distill.py, training/init_from.py)
      report[key] = summary
  momentum = accounting.momentum_summary(config)   # MomentumSMoE / AdamSMoE (None when moe.momentum_smoe.kind='none')
  if momentum:
    report['momentum'] = momentum
  graph = describe_graph(config) if num_moe else None   # Similarity- / Attention-Aware routing (graph_routing.py)
  if graph:
    report['graph_routing'] = graph
  k_schedule = accounting.k_schedule_summary(config)   # SMoE-Dropout (None without a k schedule / eval k)
  if k_schedule:
    report['k_schedule'] = k_schedule
  if num_moe:
    report['capacity'] = accounting.capacity(config)
    routing = describe_policy(config.moe)   # routing policies (layers/routing_checks.py); None: standard top-k
    if routing:
      report['routing'] = routing
    scheme = mixing_for(config.pool)
    if scheme.learned:   # how far AdamW can move the mixing logits in this run (training/optimizer.py)
      multiplier = resolved_lr_multipliers(scheme, config.train, int(config.pool.size)).get('mixing', 1.0)
      report['mixing_reach'] = dict(mixing_reach(config.train, multiplier, scheme.temperature, int(config.pool.size)),
                                    lr_multiplier=multiplier)
    if pool_sweep is None and scheme.learned:
      pool_sweep = [1, 2, 3, 4, 6]
    if pool_sweep:
      report['pool_sweep'] = accounting.pool_size_sweep(config, tuple(pool_sweep))
  return report


def _block_line(r: dict[str, Any]) -> str:
  head = f'  block {r["block"]:>2}  '
  if r['ffn'] == 'dense':
    return head + f'dense FFN (d_ff {r["d_ff"]})'
  text = head + f'MoE #{r["moe_layer"]:<2} {r["num_experts"]} experts top-{r["top_k"]} (d_ff {r["d_ff"]}), '
  if r.get('residual', 'none') != 'none':   # Residual-MoE (docs/methods/pr_moe.md)
    text += f'+ residual MLP ({r["residual"]}), '
  if 'group_entry' in r:   # Pyramid-MoE with several pool groups
    text += f'{r["pool_group"]} entry {r["group_entry"]}, '
  if r['mixing'] == 'fixed':
    return text + f'pool entry {r["pool_entry"]} (fixed)'
  if r.get('pool_group', 'expert_pool') != 'expert_pool':
    text += f'{r["pool_group"]}: '
  text += f'learned mix over P={r["pool_size"]} ({r["granularity"]}-level, init {r["init"]}'
  return text + (f', favours entry {r["init_entry"]})' if r['init_entry'] is not None else ')')


def format_text(report: dict[str, Any]) -> str:
  m, p, f, s = report['model'], report['params'], report['flops_per_token'], report['flops_per_step']
  ffn_moe = (f['dense_ffn'] + f['moe_experts'] + f['router'] + f.get('residual_moe', 0)
             + f.get('graph_routing', 0))   # graph routing: layers/graph_routing.py
  lines = [f'model: {m["num_layers"]} layers, d_model {m["d_model"]}, {m["num_heads"]} heads, d_ff {m["d_ff"]}, '
           f'vocab {m["vocab_size"]}, max_len {m["max_len"]}, {m["dtype"]}',
           f'sharing: {report["sharing"]}']
  if report.get('pool_mapping'):   # fixed mixing: which MoE blocks share each pool entry
    lines.append('pool entries (fixed): ' + ' | '.join(
        f'entry {j} <- block{"s" if len(b) > 1 else ""} {", ".join(map(str, b))}'
        for j, b in report['pool_mapping'].items()))
  lines.append('layer plan:')
  lines += [_block_line(r) for r in report['layer_plan']]
  lines += ['parameters:',
            f'  total (stored)     {human(p["total"]):>9}  ({p["total"]:,})',
            f'  non-expert         {human(p["non_expert"]):>9}  (embedding + positions {human(p["embedding"])})',
            f'  expert pool        {human(p["expert_pool"]):>9}  ({human(p["params_per_expert"])} per expert)',
            f'  mixing logits      {human(p["mixing_logits"]):>9}',
            f'  routers            {human(p["routers"]):>9}',
            f'  materialized       {human(p["materialized"]):>9}  (every MoE layer stores its own experts)',
            f'  active per token   {human(p["active_per_token"]):>9}  (non-embedding '
            f'{human(p["active_non_embedding"])})',
            f'  SaMoE reduction    {p["reduction_factor"]:>8.2f}x  (materialized / total)',
            'FLOPs per token:',
            f'  forward            {human(f["forward"]):>9}  (attention '
            f'{human(f["attention_proj"] + f["attention_scores"])}, FFN/MoE '
            f'{human(ffn_moe)}, logits {human(f["logits"])})',
            f'  train (3x)         {human(f["train"]):>9}',
            (f'  mixing             {human(f["mixing_per_step"]):>9}  per step forward '
             f'({human(f["mixing_per_token"])} per token amortized over {s["tokens"]:,} tokens)'
             if f['mixing_per_step'] else '  mixing                  none  (no learned weight-space mixing)'),
            f'  train per step     {human(s["train"]):>9}  (mixing included)']
  if 'mixing_reach' in report:
    r = report['mixing_reach']
    lines.append(f'mixing reach: a logit moves at most about R = {r["reach"]:.3g} over the run (logits lr '
                 f'x{r["lr_multiplier"]:.3g} x the summed learning rates), so from uniform the largest mixing weight can reach about '
                 f'{r["max_weight_bound"]:.3f} (docs/model.md, "Mixing that learns")')
  if 'momentum' in report:
    mo = report['momentum']
    lines.append(f'momentum: {mo["setting"]}; no parameters; state {mo["state_floats_per_token"]} floats per token; '
                 f'{human(mo["elementwise_flops_per_token"])} elementwise FLOPs per token (forward, not counted '
                 'above: matmuls only)')
  if 'k_schedule' in report:   # SMoE-Dropout (layers/k_schedule.py): the counts above are at k = moe.top_k
    k = report['k_schedule']
    lines.append(f'k schedule: {k["schedule"]}; mean k {k["mean_train_k"]:.2f} over training: train '
                 f'{human(k["train_flops_per_token"])} FLOPs per token (above: at k = top_k); evaluation: k = '
                 f'{k["eval_top_k"]}, gate {k["eval_gate"]!r}, {human(k["eval_active_per_token"])} active parameters '
                 f'and {human(k["eval_forward_flops_per_token"])} forward FLOPs per token')
  if 'routing' in report:
    lines.append(f'routing: {report["routing"]}')
  if 'graph_routing' in report:
    lines.append(f'graph routing: {report["graph_routing"]}')
  if 'capacity' in report:
    c = report['capacity']
    if c.get('dropless'):
      lines.append(f'capacity: none, dropless experts (moe.dispatch=\'ragged\'): {c["group_tokens"]} tokens per '
                   f'routing group, {c["groups_per_batch"]} groups per batch, no token dropped; the capacity keys '
                   'have no effect')
    else:
      lines.append(f'capacity: {c["group_tokens"]} tokens per routing group, {c["groups_per_batch"]} groups per '
                   f'batch: C = {c["train"]} (train), {c["eval"]} (eval) slots per expert')
    if 'by_num_experts' in c:   # Pyramid-MoE: capacity per expert count
      lines.append('  by expert count: ' + ', '.join(f'E={n}: C = {t} (train), {v} (eval)'
                                                     for n, (t, v) in c['by_num_experts'].items()))
  if report.get('pool_sweep'):
    lines.append('pool-size sweep (learned mixing): ' + '   '.join(
        f'P={r["pool_size"]}: {human(r["total"])} ({r["reduction_factor"]:.2f}x)' for r in report['pool_sweep']))
  if 'distill' in report:
    d = report['distill']
    lines.append(f'distillation: teacher {d["teacher_workdir"]} (step {d["teacher_step"]}, {d["teacher_config"]}); '
                 f'loss = CE + {d["alpha"]} * T^2 * KL, T = {d["temperature"]}, KD until step {d["stop_step"]}; '
                 "the teacher's parameters are not the student's and are not counted above (a second forward "
                 'pass per KD step)')
  if 'init' in report:
    i = report['init']
    lines.append(f'initialisation: {i["mode"]} from {i["from_workdir"]} (step {i["step"]}, noise std '
                 f'{i["noise_std"]}); only when the workdir has no checkpoint')
  if 'model_check' in report:
    lines.append(f'model eval_shape check: {report["model_check"]}')
  if 'compression' in report:   # a run written by python -m samoe_jax.compress (docs/compression.md)
    c = report['compression']
    lines.append(f'compressed by {c.get("method")} from {c.get("source_workdir")} (step {c.get("source_step")}): '
                 f'{c.get("summary", "")}')
  return '\n'.join(lines)


def run_config_of(workdir: str) -> tuple[ml_collections.ConfigDict, dict[str, Any] | None]:
  """A run's config (WORKDIR/config.json over the defaults) and its compression record, if any."""
  import os  # pylint: disable=g-import-not-at-top
  config = get_base_config()
  config.update(run_config(workdir))
  path = os.path.join(workdir, 'compression.json')
  if not os.path.isfile(path):
    return config, None
  with open(path) as f:
    return config, json.load(f)


def model_check(config: ml_collections.ConfigDict, params: dict[str, Any]) -> str:
  """Compares the analytic counts with LanguageModel(config).param_summary() (jax.eval_shape, no allocation)."""
  summary = LanguageModel(config).param_summary()
  diffs = {k: (params[k], v) for k, v in summary.items() if k in params and params[k] != v}
  return 'match' if not diffs else f'MISMATCH (analytic, model): {diffs}'


def _main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  config, compression = f.config, None
  if config is not None and f.workdir:
    raise app.UsageError('give --config=FILE or --workdir=RUN, not both')
  if f.workdir:
    config, compression = run_config_of(f.workdir)
  if config is None:
    raise app.UsageError('--config=configs/NAME.py (or --workdir=RUN) is required')
  sweep = [int(x) for x in f.pool_sweep] or None
  report = describe(config, sweep)   # an invalid config raises: cli.run_app prints its message, exit code 1
  if f.check_model:
    report['model_check'] = model_check(config, report['params'])
  if compression is not None:
    report['compression'] = compression
  print(json.dumps(report, indent=2) if f.json else format_text(report))


def main(argv: Sequence[str] | None = None) -> None:
  """The command (python -m, a console script): defines its flags here, not at import (every command module
  imports in one process), and runs through cli.run_app."""
  config_flags.DEFINE_config_file('config', None, 'Config file (configs/NAME.py[:ARG]).', lock_config=True)
  flags.DEFINE_string('workdir', None, "A run's directory instead of --config: its config.json (and, for a "
                      'compressed run, compression.json).')
  flags.DEFINE_bool('json', False, 'Print the report as JSON.')
  flags.DEFINE_list('pool_sweep', [], 'Pool sizes to tabulate stored parameters and reduction for '
                    '(MoE configs; default: 1,2,3,4,6 for SaMoE configs, none otherwise).')
  flags.DEFINE_bool('check_model', False, "Cross-check the counts against the model's eval_shape.")
  cli.run_app('samoe_jax.describe', _main, sys.argv if argv is None else list(argv))


if __name__ == '__main__':
  sys.exit(main())
