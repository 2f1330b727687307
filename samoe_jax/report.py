"""A run's report from its workdir: loss_curves.png, mixing_weights.png, mixing_trajectories.png and report.md
(what each holds: samoe_jax/analysis/run_report.py). No model or checkpoint is loaded, so it is instant and can be
rerun any time:

  python -m samoe_jax.report --workdir=DIR
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import app, flags

from samoe_jax import cli
from samoe_jax.analysis.run_report import write_report

PROG = 'samoe_jax.report'


def _run(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  workdir = flags.FLAGS.workdir
  if not os.path.isfile(os.path.join(workdir, 'metrics.jsonl')):
    raise ValueError(f'--workdir={workdir!r} holds no metrics.jsonl: give a directory written by samoe_jax.train')
  print(write_report(workdir))


def main(argv: Sequence[str] | None = None) -> None:
  """The command (python -m, a console script): defines its flags here, not at import (every command module
  imports in one process), and runs through cli.run_app."""
  flags.DEFINE_string('workdir', None, 'A training run directory (holding metrics.jsonl).', required=True)
  cli.run_app(PROG, _run, sys.argv if argv is None else list(argv))


if __name__ == '__main__':
  sys.exit(main())
