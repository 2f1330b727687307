"""Evaluation entrypoint: zero/few-shot tasks and perplexity of a trained run's checkpoints.

  python -m samoe_jax.evaluate --workdir=runs/tiny_samoe --eval_data_dir=data/eval \
      [--tasks=piqa,lambada_openai | deepspeed | all] [--num_fewshot=K --fewshot_seeds=5x] \
      [--checkpoint=latest | all | STEP[,STEP]] [--perplexity_files=a.txt,b.jsonl] [--validation_batches=all] \
      [--config=FILE --config.KEY=VALUE ...]

The model config is the run's WORKDIR/config.json unless --config is given. For every selected checkpoint it
restores the parameters (never the optimizer state) onto the config's mesh, scores the tasks exactly as
lm-evaluation-harness 0.4.x does (docs/evaluation.md), prints a table, and writes WORKDIR/eval/step_<N>/
{results.json, results.md, results.png}, WORKDIR/eval/{summary.json, summary.md, metrics_vs_step.png} and
TensorBoard scalars 'tasks/<task>/<metric>' at the checkpoint's step.
"""

from __future__ import annotations

import functools
import os
import shlex
import sys
from typing import Any, Sequence

from absl import app, flags, logging

from samoe_jax import cli
from samoe_jax.evaluation import checkpoints, outputs
from samoe_jax.evaluation.backend import ModelBackend
from samoe_jax.evaluation.perplexity import parse_validation_batches
from samoe_jax.evaluation.runner import EvalSettings, parse_seeds, parse_tasks, run_evaluation
from samoe_jax.evaluation.tokenization import EvalTokenizer
from samoe_jax.models.model import LanguageModel
from samoe_jax.sharding.mesh import make_mesh
from samoe_jax.sharding.partitioner import Partitioner
from samoe_jax.training.config_checks import validate_config
from samoe_jax.training.metrics_writer import EventWriter
from ml_collections import config_flags

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def settings_from_flags(config: Any) -> Any:
  f = flags.FLAGS
  settings = EvalSettings(
      tasks=parse_tasks(f.tasks), data_dir=f.eval_data_dir, num_fewshot=f.num_fewshot,
      fewshot_seeds=parse_seeds(f.fewshot_seeds), limit=f.limit or None,
      perplexity_files=tuple(p for p in f.perplexity_files.split(',') if p),
      validation_batches=parse_validation_batches(f.validation_batches, config), bootstrap_iters=f.bootstrap_iters)
  settings.check()
  return settings


def evaluate_run(config: Any, workdir: str, settings: Any, checkpoint: str, batch_size: int,
                 command: str | None = None) -> dict[int, Any]:
  """Evaluates the selected checkpoints of `workdir`; returns {step: scores}; writes the files (results.json
  records `command` per task) and TensorBoard."""
  import jax  # pylint: disable=g-import-not-at-top

  steps = checkpoints.select_steps(workdir, checkpoint)
  model = LanguageModel(config)
  partitioner = Partitioner(make_mesh(config.mesh))
  tokenizer = EvalTokenizer.from_config(config)
  primary = jax.process_index() == 0
  events = EventWriter(os.path.join(workdir, 'tensorboard')) if primary else None
  by_step = {}
  try:
    for step in steps:
      params = checkpoints.restore_params(model, partitioner, workdir, step)
      backend = ModelBackend(model, params, tokenizer, batch_size=batch_size, partitioner=partitioner)
      scores, details = run_evaluation(backend, settings, model=model, params=params, partitioner=partitioner,
                                       config=config)
      by_step[step] = scores
      if primary:
        setting = settings.setting()
        out = outputs.write_step_results(workdir, step, scores, details, setting, command)
        key = outputs.setting_key(setting)
        named = {f'{t}@{key}' if key else t: v for t, v in scores.items()}
        events.scalars(outputs.tensorboard_scalars(named), step)
        print(outputs.markdown_table(scores, f'{workdir} step {step} ({outputs.setting_label(setting)})'), flush=True)
        logging.info('results of step %d in %s', step, out)
    if primary:
      logging.info('summary: %s', outputs.write_summary(workdir))
  finally:
    if events is not None:
      events.close()
  return by_step


def _run(config_flag: flags.FlagHolder, argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  # The user's input raises ValueError or OSError: cli.run_app prints its message, exit code 1.
  config = config_flag.value if config_flag.value is not None else checkpoints.run_config(f.workdir)
  validate_config(config)
  settings = settings_from_flags(config)
  settings.check_data()                               # every task's data, all problems at once
  checkpoints.select_steps(f.workdir, f.checkpoint)   # fail before compiling anything
  if f.batch_size < 1:
    raise ValueError(f'--batch_size={f.batch_size} must be >= 1')
  command = ' '.join(['python -m samoe_jax.evaluate'] + [shlex.quote(a) for a in sys.argv[1:]])
  evaluate_run(config, f.workdir, settings, f.checkpoint, f.batch_size, command)


def main(argv: Sequence[str] | None = None) -> None:
  """The command (python -m, a console script): defines its flags here, not at import (every command module
  imports in one process), and runs through cli.run_app."""
  config_flag = config_flags.DEFINE_config_file('config', None, 'Model config file; default: WORKDIR/config.json.',
                                                lock_config=True)
  flags.DEFINE_string('workdir', None, 'A samoe_jax.train run directory.', required=True)
  flags.DEFINE_string('tasks', 'deepspeed', 'Comma-separated task names, "deepspeed" (LAMBADA, PIQA, BoolQ, '
                      'RACE-h, TriviaQA, WebQs), "all", or "" for perplexity only.')
  flags.DEFINE_string('eval_data_dir', '', 'Directory of <task>/<split>.jsonl files (docs/evaluation.md).')
  flags.DEFINE_integer('num_fewshot', 0, 'Shots per prompt.')
  flags.DEFINE_string('fewshot_seeds', '1234', 'Shot-sampling seeds, averaged: "1234,5" or a count "5x".')
  flags.DEFINE_string('checkpoint', 'latest', 'latest, all, or step numbers (500 or 500,1000).')
  flags.DEFINE_integer('limit', 0, 'Evaluate only the first N documents of each task (0: all).')
  flags.DEFINE_integer('batch_size', 16, 'Sequences per scoring batch.')
  flags.DEFINE_string('perplexity_files', '', 'Comma-separated local text (.txt: one document) or .jsonl files.')
  flags.DEFINE_string('validation_batches', 'config', 'Validation-split perplexity of the pretraining task: '
                      'config (train.eval_batches), all, none, or a number of batches.')
  flags.DEFINE_integer('bootstrap_iters', 100000, 'Bootstrap iterations for perplexity stderrs (0: none).')
  cli.run_app('samoe_jax.evaluate', functools.partial(_run, config_flag), sys.argv if argv is None else list(argv))


if __name__ == '__main__':
  sys.exit(main())
