"""Fine-tuning a trained run on one evaluation task (docs/training.md, "Fine-tuning on a task").

  python -m samoe_jax.finetune --workdir=runs/piqa_ft --init_from=runs/tiny_moe --task=piqa \
      --eval_data_dir=data/eval [--steps=200 --learning_rate=1e-4 --batch_size=16 --eval_every=50] \
      [--distill --distill_alpha=0.2 --distill_temperature=2.0] [--set=train.weight_decay=0.01 ...]

An ordinary training run (checkpoints, exact resume, metrics, TensorBoard, report.md) whose config is the source
run's WORKDIR/config.json with these keys set (every flag is one of them):

  data.task='task_finetune', data.finetune_task=TASK, data.finetune_data_dir=DIR   (samoe_jax/evaluation/task_finetune.py:
                      the evaluator's prompt + the gold continuation, loss on the continuation tokens only)
  init.from_workdir=INIT_FROM, init.step, init.mode='same'      (the trained parameters; fresh Adam moments)
  eval.tasks=TASK, eval.data_dir=DIR, eval.every, eval.limit    (the evaluator at intervals and at the end)
  train.steps, train.learning_rate, train.warmup_steps, data.batch_size
  distill.teacher_workdir=INIT_FROM with --distill              (the uncompressed model as teacher)

The validation loss (train.eval_batches) is the gold continuations' loss on the task's evaluated split. Rerun the
same command to resume. `--set=KEY=VALUE` sets any other config key (a Python literal or a plain string). Bad input
(a task with fewer training documents than one batch, a --set that changes the model's parameter shapes, every
check of an ordinary run) is refused with one line before anything is written: a new workdir is not created.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import app, flags, logging

from samoe_jax import cli
from samoe_jax.analysis import run_report
from samoe_jax.evaluation.checkpoints import run_config
from samoe_jax.training import loop
from samoe_jax.training.finetune_config import finetune_config

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def _run(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  if os.path.abspath(f.workdir) == os.path.abspath(f.init_from):
    raise ValueError(f'--workdir={f.workdir!r} is the --init_from run itself: fine-tune into a new directory '
                     '(the source run is never written to)')
  source = run_config(f.init_from)
  if 'model' not in source or 'moe' not in source:
    raise ValueError(f'--init_from={f.init_from!r}: its config.json has no model/moe sections')
  config = finetune_config(
      source, task=f.task, eval_data_dir=f.eval_data_dir, init_from=f.init_from, init_step=f.init_step,
      steps=f.steps, learning_rate=f.learning_rate, warmup_steps=f.warmup_steps, batch_size=f.batch_size,
      eval_every=f.eval_every, eval_limit=f.eval_limit, eval_batches=f.eval_batches, distill=f.distill,
      distill_alpha=f.distill_alpha, distill_temperature=f.distill_temperature, overrides=f.set or ())
  final = loop.train(config, f.workdir)   # validates the config once, before anything is written
  if final.get('already_finished'):
    return
  path = run_report.write_report(f.workdir)
  logging.info('fine-tuned %s on %s: validation loss %s; report: %s', f.init_from, f.task, final.get('eval/loss'),
               path)


def main(argv: Sequence[str] | None = None) -> None:
  """The command (python -m, a console script): defines its flags here, not at import (every command module
  imports in one process), and runs through cli.run_app."""
  flags.DEFINE_string('workdir', None, 'The fine-tuning run directory (new, or one to resume).')
  flags.DEFINE_string('init_from', None, 'The trained run (its workdir) whose checkpoint is fine-tuned.')
  flags.DEFINE_string('task', None, 'An evaluation task with a training split, e.g. piqa.')
  flags.DEFINE_string('eval_data_dir', None, 'Directory of <task>/<split>.jsonl files (docs/evaluation.md).')
  flags.DEFINE_integer('init_step', 0, 'Checkpoint step of --init_from; 0 = latest.')
  flags.DEFINE_integer('steps', 200, 'train.steps of the fine-tuning run.')
  flags.DEFINE_float('learning_rate', 1e-4, 'train.learning_rate (peak; warm-up then cosine decay).')
  flags.DEFINE_integer('warmup_steps', -1, 'train.warmup_steps; -1 = min(16, --steps) (MC-SMoE warms up 16 '
                       'steps).')
  flags.DEFINE_integer('batch_size', 0, 'data.batch_size; 0 = the source run\'s.')
  flags.DEFINE_integer('eval_every', 0, 'Steps between task evaluations (also validation and checkpoints); '
                       '0 = only at the end.')
  flags.DEFINE_integer('eval_limit', 0, 'eval.limit: documents evaluated per task evaluation; 0 = all.')
  flags.DEFINE_integer('eval_batches', 8, 'train.eval_batches of gold-continuation validation loss.')
  flags.DEFINE_bool('distill', False, 'Distil from --init_from (the uncompressed model) while fine-tuning.')
  flags.DEFINE_float('distill_alpha', 0.2, 'distill.alpha (MC-SMoE: 0.2).')
  flags.DEFINE_float('distill_temperature', 2.0, 'distill.temperature (MC-SMoE: 2.0).')
  flags.DEFINE_multi_string('set', None, 'KEY=VALUE for any other config key, e.g. train.weight_decay=0.01.')
  flags.mark_flags_as_required(['workdir', 'init_from', 'task', 'eval_data_dir'])
  cli.run_app('samoe_jax.finetune', _run, sys.argv if argv is None else list(argv))


if __name__ == '__main__':
  sys.exit(main())
