"""Training entrypoint.

  python -m samoe_jax.train --config=configs/tiny_samoe.py --workdir=runs/tiny_samoe \
      [--config.train.steps=1000 --config.pool.size=4 ...]
  python -m samoe_jax.train --gin_file=configs/gin/tiny_samoe.gin --workdir=runs/tiny_samoe \
      [--gin.samoe.train.steps=1000 --gin.POOL_SIZE=4 ...]     (gin front end: samoe_jax/config/gin_config.py)

The config is locked: an override of a key that does not exist is an error. Rerunning with the same workdir
resumes from its latest checkpoint (see docs/training.md). At the end, report.md, loss_curves.png and
mixing_weights.png are written into the workdir.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from samoe_jax import cli
from samoe_jax.analysis import run_report
from samoe_jax.config import gin_config
from samoe_jax.config.gin_config import rewrite_gin_args
from samoe_jax.training import distributed, loop

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow (a TFDS corpus's pipeline) stays quiet


def resolve_config(config_flag: flags.FlagHolder) -> Any:
  """The run's ConfigDict from --config (ml-collections) or --gin_file/--gin_bindings (gin); exactly one."""
  gin_files, gin_bindings = flags.FLAGS.gin_file or [], flags.FLAGS.gin_bindings or []
  config = config_flag.value
  if config is not None and (gin_files or gin_bindings):
    raise ValueError('give either --config=FILE or --gin_file=FILE (with --gin.KEY=VALUE bindings), not both')
  if config is not None:
    return config
  if not gin_files:
    raise ValueError('give --config=FILE (e.g. configs/tiny_samoe.py) or --gin_file=FILE (e.g. '
                     'configs/gin/tiny_samoe.gin)')
  return gin_config.config_from_gin(gin_files, gin_bindings)


def _write_gin_config(workdir: str) -> None:
  if flags.FLAGS.gin_file:
    with open(os.path.join(workdir, 'config.gin'), 'w') as f:
      f.write(gin_config.operative_config())


def _run(config_flag: flags.FlagHolder, workdir_flag: flags.FlagHolder, argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  import jax  # pylint: disable=g-import-not-at-top

  workdir = workdir_flag.value
  config = resolve_config(config_flag)   # bad input raises; cli.run_app prints its message, exit code 1
  distributed.initialize(flags.FLAGS.coordinator_address, flags.FLAGS.num_processes, flags.FLAGS.process_id)
  final = loop.train(config, workdir)   # validates the config (once), then every check before writing
  if jax.process_index() != 0 or final.get('already_finished'):   # process 0 writes the report, once
    return
  _write_gin_config(workdir)
  path = run_report.write_report(workdir)
  loss, perplexity = final.get('eval/loss'), final.get('eval/perplexity')
  if loss is not None and perplexity is not None:
    logging.info('final validation loss %.4f, perplexity %.2f', loss, perplexity)
  logging.info('report: %s', path)


def main(argv: Sequence[str] | None = None) -> None:
  """The command (python -m, a console script): defines its flags here, not at import (every command module
  imports in one process), and runs through cli.run_app."""
  config_flag = config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/tiny_samoe.py.',
                                                lock_config=True)
  flags.DEFINE_multi_string('gin_file', None, 'gin front end instead of --config: gin files, e.g. '
                            'configs/gin/tiny_samoe.gin.')
  flags.DEFINE_multi_string('gin_bindings', None, 'gin bindings; --gin.KEY=VALUE is shorthand for these.')
  workdir_flag = flags.DEFINE_string('workdir', None, 'Run directory: config, metrics, TensorBoard, checkpoints.')
  flags.DEFINE_string('coordinator_address', '', 'Multi-process runs without a scheduler: host:port of process 0.')
  flags.DEFINE_integer('num_processes', 0, 'Multi-process runs without a scheduler: the number of processes.')
  flags.DEFINE_integer('process_id', -1, 'Multi-process runs without a scheduler: this process, 0-based.')
  flags.mark_flags_as_required(['workdir'])
  cli.run_app('samoe_jax.train', functools.partial(_run, config_flag, workdir_flag),
              rewrite_gin_args(sys.argv if argv is None else list(argv)))


if __name__ == '__main__':
  sys.exit(main())
