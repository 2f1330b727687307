"""python -m samoe_jax.compress {stats, uncurl, mcsmoe} (docs/compression.md).

  stats   --workdir=RUN (--task=piqa --eval_data_dir=DIR | --split=validation) [--out=DIR]
  uncurl  --workdir=RUN --task=piqa --eval_data_dir=DIR --factors=2,4,8 --out=DIR
          [--reduce=merge|prune|both] [--router=map|sum|both] [--finetune_steps=N] [--tolerance=0.01]
          [--scratch=RUN_E4,... | --train_scratch]
  mcsmoe  --workdir=RUN --task=piqa --eval_data_dir=DIR --groups=N --out=DIR [--router=map|sum]
          [--finetune_steps=N --distill] [--compress --rank=R --sparsity=0.9]

Every check (a dense or already compressed run, no checkpoint, a task without a training split, a factor that
does not divide E, missing data files) runs before any work. Rerunning a command on the same --out reuses the
compressed runs and fine-tuning runs already there (they resume or are skipped).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence

from absl import app, flags, logging

from samoe_jax import cli
from samoe_jax.analysis.provenance import commit
from samoe_jax.compress import low_rank, merge, methods, runs, stats as stats_lib
from samoe_jax.compress.sweep import FinetuneSettings, model_row, score, threshold_factor, write_report
from samoe_jax.evaluation import task_finetune
from samoe_jax.models.model import LanguageModel
from samoe_jax.training import loop

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
COMMANDS = ('stats', 'uncurl', 'mcsmoe')
# Flags only one command reads; given to another command they would be ignored silently, so they are refused.
COMMAND_FLAGS = {'uncurl': ('factors', 'reduce', 'tolerance', 'scratch', 'train_scratch'),
                 'mcsmoe': ('groups', 'compress', 'rank', 'sparsity'),
                 'stats': ('split', 'batches')}
FLAGS = flags.FLAGS


def _choices(value: str, allowed: tuple[str, ...], flag: str) -> list[str]:
  chosen = list(allowed) if value == 'both' else [value]
  if any(c not in allowed for c in chosen):
    raise ValueError(f'--{flag}={value!r}: use one of {", ".join(allowed)} or both')
  return chosen


def check_command_flags(command: str, given: set[str]) -> None:
  """Refuses flags (names in `given`) that only another command reads."""
  stray = sorted(f'--{name}' for other, names in COMMAND_FLAGS.items() if other != command for name in names
                 if name in given)
  if stray:
    raise ValueError(f'{", ".join(stray)}: not a flag of `{command}` (it would be ignored); see '
                     'python -m samoe_jax.compress --help')


def _factor(text: str) -> int:
  if not text.strip().isdigit():
    raise ValueError(f'--factors: {text!r} is not a positive integer pruning factor (e.g. --factors=2,4,8)')
  return int(text)


def _check_task(config: Any) -> None:
  """The task has a training split and its files load (tokenized once; cached for the run)."""
  if not FLAGS.eval_data_dir:
    raise ValueError('--eval_data_dir is required with --task (the directory of <task>/<split>.jsonl files)')
  data = config.data.copy_and_resolve_references()
  data.task, data.finetune_task, data.finetune_data_dir = task_finetune.TASK, FLAGS.task, FLAGS.eval_data_dir
  task_finetune.get_finetune_task(data)
  task_finetune.load_split(data, task_finetune.TRAIN_SPLIT)
  task_finetune.load_split(data, None)


def _collect_stats(source: Any) -> tuple[list[Any], str]:
  if FLAGS.task:
    batches = stats_lib.task_batches(source.config, FLAGS.task, FLAGS.eval_data_dir, FLAGS.num_samples,
                                     FLAGS.stats_batch_size)
    name = f'{FLAGS.task}/train'
  else:
    batches = stats_lib.validation_batches(source.config, FLAGS.batches)
    name = f'{source.config.data.task}/{source.config.data.eval_split}'
  return stats_lib.collect(source, batches), name


def _settings(distill: bool) -> Any:
  return FinetuneSettings(task=FLAGS.task, data_dir=FLAGS.eval_data_dir, steps=FLAGS.finetune_steps,
                          learning_rate=FLAGS.learning_rate, batch_size=FLAGS.batch_size,
                          eval_limit=FLAGS.eval_limit, distill=distill, metric=FLAGS.metric)


def _compressed_run(source: Any, layers: Any, out: str, record: dict[str, Any]) -> str:
  """Writes (or reuses, when written before from the same source step) one compressed run in `out`."""
  previous = os.path.join(out, 'compression.json')
  if os.path.isfile(previous):
    with open(previous) as f:
      old = json.load(f)
    if (old.get('source_workdir'), old.get('source_step')) != (os.path.abspath(source.workdir), source.step):
      raise ValueError(f'{out} holds a run compressed from {old.get("source_workdir")} step {old.get("source_step")}'
                       f', not {source.workdir} step {source.step}: choose a new --out')
    logging.info('%s: compressed run already written, reused', out)
    return out
  config = runs.compressed_config(source, layers)
  params = runs.compressed_params(source, layers, LanguageModel(config))
  counts = [e.num_experts for e in layers.experts]
  summary = f'experts per MoE layer {[l.num_experts for l in source.layers]} -> {counts}, router {layers.router!r}'
  runs.write_run(out, config, params, dict(record, source_workdir=os.path.abspath(source.workdir),
                                           source_step=source.step, experts_per_layer=counts,
                                           labels=[l.tolist() for l in layers.labels], summary=summary))
  return out


def _scored_dir(out: str, name: str) -> str:
  """Where model `name` is fine-tuned (a run) or, without fine-tuning, where its scores are written."""
  return os.path.join(out, name, 'finetuned' if FLAGS.finetune_steps > 0 else 'scored')


def _stats(source: Any) -> None:
  layer_stats, name = _collect_stats(source)
  out = FLAGS.out or os.path.join(source.workdir, 'routing_stats', name.replace('/', '_'))
  record = stats_lib.save(layer_stats, out, {'source_workdir': os.path.abspath(source.workdir),
                                             'source_step': source.step, 'data': name})
  for layer in record['layers']:
    logging.info('MoE block %d: %d tokens, usage %s', layer['block'], layer['tokens'], layer['frequency'])
  logging.info('routing statistics: %s', out)


def _baseline(source: Any, out: str) -> tuple[str, dict[str, float], Any]:
  """The uncompressed model's scores (fine-tuned when --finetune_steps > 0) and the run compressed from (the
  fine-tuned model when fine-tuning: compression is task-aware), loaded."""
  settings = _settings(distill=False)
  if settings.steps <= 0:
    return source.workdir, score(source.workdir, os.path.join(out, 'uncompressed'), settings), source
  tuned = os.path.join(out, 'uncompressed_finetuned')
  scores = score(source.workdir, tuned, settings)
  return tuned, scores, runs.load_source(tuned)


def _prepare(source: Any, out: str) -> tuple[str, Any, list[Any], dict[str, Any]]:
  """The uncompressed model scored (and fine-tuned), the run to compress, its routing statistics (also saved to
  OUT/routing_stats) and the uncompressed model's report row."""
  base_dir, base_scores, compress_from = _baseline(source, out)
  layer_stats, data_name = _collect_stats(compress_from)
  stats_lib.save(layer_stats, os.path.join(out, 'routing_stats'), {'source_workdir': compress_from.workdir,
                                                                   'source_step': compress_from.step,
                                                                   'data': data_name})
  row = model_row('uncompressed', base_dir, base_scores, FLAGS.metric, series='uncompressed')
  return base_dir, compress_from, layer_stats, row


def _uncurl(source: Any) -> None:
  factors = [_factor(x) for x in FLAGS.factors]
  reduces = _choices(FLAGS.reduce, merge.METHODS, 'reduce')
  routers = _choices(FLAGS.router, merge.ROUTERS, 'router')
  for r in factors:
    for router in routers:
      methods.check_factor(source, r, router)
  out, metric = FLAGS.out, FLAGS.metric
  base_dir, compress_from, layer_stats, base_row = _prepare(source, out)
  rows = [dict(base_row, factor=1)]
  settings = _settings(distill=FLAGS.distill)
  for reduce in reduces:
    for router in routers:
      for r in factors:
        name = f'r{r}_{reduce}_{router}'
        layers = methods.uncurl_layers(compress_from, layer_stats, r, reduce, router)
        run_dir = _compressed_run(compress_from, layers, os.path.join(out, name, 'compressed'),
                                  {'method': 'uncurl', 'factor': r, 'reduce': reduce, 'router': router})
        scores = score(run_dir, _scored_dir(out, name), settings, teacher=base_dir)
        rows.append(model_row(name, run_dir, scores, metric, factor=r, series=f'{reduce}, router {router}'))
  scratch_dirs = list(FLAGS.scratch or [])
  if FLAGS.train_scratch:   # UNCURL's baseline: E/r experts trained from scratch with the source's recipe
    for r in factors:
      scratch_dir = os.path.join(out, f'scratch_r{r}', 'pretrained')
      loop.train(methods.scratch_config(source.config, r), scratch_dir)   # resumes; a finished run is left as is
      scratch_dirs.append(scratch_dir)
  for scratch in scratch_dirs:
    label = _scratch_label(scratch, out)
    scores = score(scratch, os.path.join(out, 'scratch_' + label), _settings(distill=False))
    rows.append(model_row(f'from scratch: {label}', scratch, scores, metric, factor=None,
                          series='trained from scratch'))
  sentences = []
  for reduce in reduces:
    for router in routers:
      series = [r for r in rows[1:] if r.get('series') == f'{reduce}, router {router}']
      r_star = threshold_factor(series, rows[0]['score'], FLAGS.tolerance)
      sentences.append(f'{reduce}, router {router}: threshold factor r* = {r_star if r_star else "none"} (largest '
                       f'r with {metric} >= {rows[0]["score"]:.4f} - {FLAGS.tolerance}; factors tried {factors})')
  write_report(out, 'UNCURL task-specific expert reduction', rows, _meta(compress_from, 'uncurl'), sentences)


def _check_compress_flags(source: Any) -> None:
  """--compress --rank --sparsity (MC-SMoE's low-rank + sparse stage) checked before any work."""
  if not FLAGS.compress:
    given = [f'--{k}' for k in ('rank', 'sparsity') if FLAGS[k].present]
    if given:
      raise ValueError(f'{" and ".join(given)} only apply with --compress (low-rank + sparse experts)')
    return
  low_rank.check_low_rank(source.config, source.workdir, FLAGS.rank, FLAGS.sparsity, FLAGS.finetune_steps)


def _scratch_label(workdir: str, out: str) -> str:
  """A from-scratch run's name in the report: 'r<r>' for one --train_scratch trained in `out`, else its basename."""
  path = os.path.normpath(workdir)
  if os.path.basename(path) == 'pretrained' and os.path.dirname(os.path.dirname(path)) == os.path.normpath(out):
    return os.path.basename(os.path.dirname(path)).replace('scratch_', '')
  return os.path.basename(path)


def _mcsmoe(source: Any) -> None:
  methods.check_router(FLAGS.router)
  smallest = min(l.num_experts for l in source.layers)
  if not 1 <= FLAGS.groups <= smallest:
    raise ValueError(f'--groups={FLAGS.groups} must be in [1, {smallest}] (the fewest experts of a MoE layer of '
                     f'{source.workdir})')
  _check_compress_flags(source)
  out, metric = FLAGS.out, FLAGS.metric
  base_dir, compress_from, layer_stats, base_row = _prepare(source, out)
  layers = methods.mcsmoe_layers(compress_from, layer_stats, FLAGS.groups, FLAGS.router)
  name = f'merged_g{FLAGS.groups}_{FLAGS.router}'
  run_dir = _compressed_run(compress_from, layers, os.path.join(out, name, 'compressed'),
                            {'method': 'mcsmoe', 'groups': FLAGS.groups, 'router': FLAGS.router})
  settings = _settings(distill=FLAGS.distill)
  scores = score(run_dir, _scored_dir(out, name), settings, teacher=base_dir)
  rows = [base_row, model_row(name, run_dir, scores, metric, series='MC-SMoE')]
  counts = [e.num_experts for e in layers.experts]
  sentences = [f'group counts per MoE layer (global, adaptive; average {FLAGS.groups}): {counts}',
               f'merged: {metric} {rows[1]["score"]:.4f} vs {rows[0]["score"]:.4f} uncompressed '
               f'({rows[1]["score"] - rows[0]["score"]:+.4f}); expert memory '
               f'{rows[0]["expert_params"] / max(rows[1]["expert_params"], 1):.2f}x smaller']
  if FLAGS.compress:   # stage C: the merged (fine-tuned) model as U V + S, S pruned while fine-tuning again
    merged_final = _scored_dir(out, name) if FLAGS.finetune_steps > 0 else run_dir
    lr_name = f'{name}_rank{FLAGS.rank}_sparsity{FLAGS.sparsity:g}'
    lr_dir = low_rank.write_low_rank_run(merged_final, os.path.join(out, lr_name, 'compressed'), FLAGS.rank,
                                         FLAGS.sparsity)
    lr_scored = _scored_dir(out, lr_name)
    lr_scores = score(lr_dir, lr_scored, settings, teacher=base_dir)
    row = model_row(lr_name, lr_dir, lr_scores, metric, series='MC-SMoE',
                    final_dir=lr_scored if FLAGS.finetune_steps > 0 else lr_dir)
    rows.append(row)
    sentences.append(
        f'merged + low-rank (rank {FLAGS.rank}) + sparse (target sparsity {FLAGS.sparsity:g}, measured '
        f'{1 - row["sparse_density"]:.4f}): {metric} {row["score"]:.4f} ({row["score"] - rows[0]["score"]:+.4f}); '
        f'expert memory {rows[0]["expert_params"] / max(row["expert_params"], 1):.2f}x smaller (U, V, biases and '
        f'the nonzeros of S counted from the final checkpoint); forward FLOPs/token '
        f'{row["forward_flops_per_token"]:,.0f} as executed (dense W rebuilt from U V + S), '
        f'{row["forward_flops_low_rank_sparse"]:,.0f} with a low-rank + sparse kernel')
  write_report(out, 'MC-SMoE merging' + (' and low-rank + sparse compression' if FLAGS.compress else ''), rows,
               _meta(compress_from, 'mcsmoe'), sentences)


def _meta(source: Any, method: str) -> dict[str, Any]:
  return {'method': method, 'command': ' '.join(['python -m samoe_jax.compress', *sys.argv[1:]]),
          'commit': commit(), 'source_workdir': source.workdir, 'source_step': source.step, 'task': FLAGS.task,
          'finetune_steps': FLAGS.finetune_steps, 'tolerance': FLAGS.tolerance}


def _main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f'give one command: {", ".join(COMMANDS)} (got {argv[1:]})')
  command = argv[1]
  check_command_flags(command, {name for name in FLAGS if FLAGS[name].present})
  if command != 'stats' and not (FLAGS.task and FLAGS.out):
    raise ValueError(f'{command} needs --task (an evaluation task with a training split) and --out')
  if command == 'stats' and bool(FLAGS.task) == bool(FLAGS.split):
    raise ValueError('stats needs exactly one of --task=TASK (with --eval_data_dir) or --split=validation')
  if FLAGS.out and os.path.isfile(FLAGS.out):
    raise ValueError(f'--out={FLAGS.out!r} is a file')
  config = runs.run_config_checked(FLAGS.workdir, FLAGS.step)
  if FLAGS.split and FLAGS.split != config.data.eval_split:
    raise ValueError(f'--split={FLAGS.split!r}: the run validates on data.eval_split={config.data.eval_split!r}; '
                     'give that split (or --task=TASK for task data)')
  if FLAGS.task:
    _check_task(config)
  source = runs.load_source(FLAGS.workdir, FLAGS.step)
  {'stats': _stats, 'uncurl': _uncurl, 'mcsmoe': _mcsmoe}[command](source)


def main(argv: Sequence[str] | None = None) -> None:
  """The command (python -m, a console script): defines its flags here, not at import (every command module
  imports in one process), and runs through cli.run_app."""
  flags.DEFINE_string('workdir', None, 'The trained run to analyse or compress.')
  flags.DEFINE_integer('step', 0, 'Its checkpoint step; 0 = latest.')
  flags.DEFINE_string('task', '', 'Evaluation task with a training split (statistics data, fine-tuning, metric).')
  flags.DEFINE_string('eval_data_dir', '', 'Directory of <task>/<split>.jsonl files (docs/evaluation.md).')
  flags.DEFINE_string('split', '', "stats only: 'validation' = the run's own validation batches instead of a task.")
  flags.DEFINE_integer('batches', 8, 'stats --split: validation batches.')
  flags.DEFINE_integer('num_samples', 256, 'Task training documents in the statistics pass (MC-SMoE: 256).')
  flags.DEFINE_integer('stats_batch_size', 16, 'Sequences per statistics forward pass.')
  flags.DEFINE_string('out', '', 'Output directory (stats: default WORKDIR/routing_stats/<data>).')
  flags.DEFINE_list('factors', ['2', '4'], 'uncurl: pruning factors r (each divides every layer\'s E).')
  flags.DEFINE_string('reduce', 'both', 'uncurl: merge, prune or both (compress/merge.py).')
  flags.DEFINE_string('router', 'map', "Router after reduction: map, sum (uncurl also 'both').")
  flags.DEFINE_integer('groups', 2, 'mcsmoe: average number of groups (merged experts) per MoE layer.')
  flags.DEFINE_bool('compress', False, 'mcsmoe: then store the merged experts as low-rank U V + sparse S and prune S '
                    'during fine-tuning (MC-SMoE stage C, LoSparse).')
  flags.DEFINE_integer('rank', 0, 'mcsmoe --compress: rank of U V (1 .. min(d_model, expert width)).')
  flags.DEFINE_float('sparsity', 0.9, 'mcsmoe --compress: final fraction of S pruned (MC-SMoE: 0.9, 10 %% kept).')
  flags.DEFINE_integer('finetune_steps', 0, 'Fine-tuning steps of every model before it is scored; 0 = none.')
  flags.DEFINE_float('learning_rate', 1e-4, 'Fine-tuning learning rate.')
  flags.DEFINE_integer('batch_size', 0, 'Fine-tuning / evaluation batch size; 0 = the run\'s.')
  flags.DEFINE_integer('eval_limit', 0, 'Documents evaluated per task evaluation; 0 = all.')
  flags.DEFINE_bool('distill', False, 'Distil compressed models from the (fine-tuned) uncompressed model '
                    '(MC-SMoE: alpha 0.2, temperature 2).')
  flags.DEFINE_string('metric', 'acc', 'The task metric reported and compared.')
  flags.DEFINE_float('tolerance', 0.01, 'uncurl: r* is the largest r within this of the uncompressed metric.')
  flags.DEFINE_list('scratch', [], 'uncurl: runs with E/r experts trained from scratch, scored the same way.')
  flags.DEFINE_bool('train_scratch', False, 'uncurl: also train, for every factor r, the source run\'s config with '
                    'E/r experts from scratch (OUT/scratch_r<r>/pretrained; resumable), scored the same way.')
  flags.mark_flags_as_required(['workdir'])
  cli.run_app('samoe_jax.compress', _main, sys.argv if argv is None else list(argv))


if __name__ == '__main__':
  sys.exit(main())
