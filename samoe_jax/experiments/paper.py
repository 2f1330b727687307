"""The 'paper' suite: the GPT-3 350M / 1.3B + MoE-128 recipes (DeepSpeed-MoE, Rajbhandari et al. 2022) as the
SaMoE paper compares them (dense, standard MoE-128, PR-MoE, SaMoE at several pool sizes), on Cloud TPU slices.

Never run here: it prints, per run, the launcher commands (launch/tpu_vm.py: create a slice, copy the checkout,
set it up, start training) and, with --launch, runs them, one slice per run. Training reads a prepared TFDS
corpus (data.tfds_data_dir) and records gradient statistics every 1000 steps.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from typing import Sequence

from samoe_jax import cli

BASES = ('350m', '1p3b')
POOL_SIZES = (1, 2, 4)
GRAD_STATS_EVERY = 1000


def runs(seeds: int = 1) -> list[tuple[str, str]]:
  """(run name, config argument) of every paper run: per base dense, MoE-128, PR-MoE and SaMoE P in POOL_SIZES."""
  out = []
  for base in BASES:
    out += [(f'{base}_dense', f'configs/gpt3_{base}_dense.py'), (f'{base}_moe128', f'configs/gpt3_{base}_moe128.py'),
            (f'{base}_prmoe', f'configs/gpt3_{base}_prmoe.py')]
    out += [(f'{base}_samoe_p{p}', f'configs/gpt3_{base}_samoe.py:{p}') for p in POOL_SIZES]
  return [(f'{name}_seed{s}', config) for s in range(seeds) for name, config in out]


def commands(tpu_prefix: str, zone: str, bucket: str, tfds_data_dir: str, accelerator: str,
             seeds: int = 1) -> list[list[str]]:
  """The launcher commands of every run (one TPU slice per run, named TPU_PREFIX-RUN)."""
  for value, flag in ((tpu_prefix, '--tpu_prefix'), (zone, '--zone'), (bucket, '--bucket'),
                      (tfds_data_dir, '--tfds_data_dir')):
    if not value:
      raise ValueError(f'{flag} is empty: the paper suite needs --tpu_prefix, --zone, --bucket (gs://...) and '
                       '--tfds_data_dir (a prepared TFDS corpus)')
  if not bucket.startswith('gs://'):
    raise ValueError(f'--bucket={bucket!r}: use a gs:// path, so every worker of a slice shares the checkpoints')
  launcher = [sys.executable, 'launch/tpu_vm.py']
  out = []
  for run, config in runs(seeds):
    name = f'{tpu_prefix}-{run.replace("_", "-")}'
    where = [f'--name={name}', f'--zone={zone}']
    seed = run.rsplit('_seed', 1)[1]
    out += [launcher + ['create', *where, f'--accelerator={accelerator}'],
            launcher + ['copy', *where], launcher + ['setup', *where],
            launcher + ['run', *where, f'--config={config}', f'--workdir={bucket.rstrip("/")}/samoe-paper/{run}',
                        '--', f'--config.data.tfds_data_dir={tfds_data_dir}',
                        f'--config.train.grad_stats_every={GRAD_STATS_EVERY}', f'--config.train.seed={seed}',
                        f'--config.data.shuffle_seed={seed}']]
  return out


def print_or_launch(cmds: Sequence[list[str]], launch: bool) -> int:
  """Prints every command; with `launch` runs them in order, stopping at the first failure."""
  for cmd in cmds:
    print(shlex.join(cmd), flush=True)
    if launch:
      done = subprocess.run(cmd, check=False)
      if done.returncode:
        print(f'{cli.prog_name()}: error: the command above exited with {done.returncode}; stopped', file=sys.stderr)
        return done.returncode
  return 0
