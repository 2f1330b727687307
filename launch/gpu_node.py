#!/usr/bin/env python3
"""Train on one GPU node (all its GPUs, one process): set up the CUDA build of jax once, then run a config.

  python launch/gpu_node.py setup                                   # .venv + pins + jax[cuda12]
  python launch/gpu_node.py run --config=configs/gpt3_350m_samoe.py --workdir=/data/runs/350m \\
                                [--expert=8] -- --config.data.tfds_data_dir=/data/tfds
  python launch/gpu_node.py bench --out=bench_gpu [--steps=10 --repeats=3] [--python=python3]
  python launch/gpu_node.py suite --out=OUT --corpus_dir=CORPUS [--budget_s=420] [--python=python3]

Every subcommand takes --dry-run (print the commands and the environment, run nothing). `run` puts all local GPUs
in one mesh: `--expert` GPUs split the experts (default 1: pure data parallelism; it must divide the GPU count
and moe.num_experts), the rest is data parallelism (mesh.data=-1); XLA's latency-hiding scheduler overlaps the
collectives with compute. Not yet timed on a GPU in this project. One process drives all local GPUs, so no jax.distributed setup is needed on a single node.

`bench` runs the GPU benchmark (python -m samoe_jax.bench --preset=gpu: the bfloat16 350M-class dense, MoE-16 and
SaMoE models, MFU against the chip's peak) on one GPU, one process per model: the MoE's training state alone is
about 34 GB, and the bench keeps every model it compares in memory, so three in one process would not fit 80 GB.
The figures go to OUT/bench_gpu_{dense,moe,samoe}.json. --python runs an interpreter that already has a CUDA
build of jax instead of the .venv of `setup`.

`suite` is the one-GPU command of docs/experiments.md ("One GPU"): the budgeted h100 suite (python -m
samoe_jax.experiments.reproduce --suite=h100: timing pass, equal steps planned within --budget_s, training, report)
into OUT/suite, then `bench` into OUT/bench, about budget_s + 3 minutes of device time. Not yet run on a GPU.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from typing import Sequence

JAX_CUDA = 'jax[cuda12]==0.10.2'
# Latency-hiding scheduling overlaps the MoE all-to-all and gradient all-reduces with compute on GPUs.
XLA_GPU_FLAGS = ('--xla_gpu_enable_latency_hiding_scheduler=true',)
ENV = {'XLA_PYTHON_CLIENT_MEM_FRACTION': '0.90', 'TF_CPP_MIN_LOG_LEVEL': '2'}


def setup(args: argparse.Namespace) -> list[tuple[list[str], dict[str, str]]]:
  py = f'{args.venv}/bin/python'
  return [([sys.executable, '-m', 'venv', args.venv], {}),
          ([py, '-m', 'pip', 'install', '-q', '-r', 'requirements.txt'], {}),
          ([py, '-m', 'pip', 'install', '-q', JAX_CUDA], {}),
          ([py, '-m', 'pip', 'install', '-q', '--no-deps', '-e', '.'], {}),
          ([py, '-c', 'import jax; print(jax.devices())'], {})]


def run(args: argparse.Namespace) -> list[tuple[list[str], dict[str, str]]]:
  mesh = ['--config.mesh.data=-1', f'--config.mesh.expert={args.expert}', '--config.mesh.model=1']
  cmd = [f'{args.venv}/bin/python', '-m', 'samoe_jax.train', f'--config={args.config}',
         f'--workdir={args.workdir}', *mesh, *args.overrides]
  env = dict(ENV, XLA_FLAGS=' '.join(XLA_GPU_FLAGS))
  return [(cmd, env)]


def bench(args: argparse.Namespace) -> list[tuple[list[str], dict[str, str]]]:
  py = args.python or f'{args.venv}/bin/python'
  base = [py, '-m', 'samoe_jax.bench', '--preset=gpu', f'--steps={args.steps}', f'--repeats={args.repeats}']
  env = dict(ENV, XLA_FLAGS=' '.join(XLA_GPU_FLAGS))
  return [(['mkdir', '-p', args.out], {})] + [
      (base + [f'--only=gpu:{kind}', f'--json_out={args.out}/bench_gpu_{kind}.json'], env)
      for kind in ('dense', 'moe', 'samoe')]


def suite(args: argparse.Namespace) -> list[tuple[list[str], dict[str, str]]]:
  py = args.python or f'{args.venv}/bin/python'
  cmd = [py, '-m', 'samoe_jax.experiments.reproduce', '--suite=h100', f'--out={args.out}/suite',
         f'--budget_s={args.budget_s:g}', f'--corpus_dir={args.corpus_dir}']
  env = dict(ENV, XLA_FLAGS=' '.join(XLA_GPU_FLAGS))
  return [(['mkdir', '-p', args.out], {}), (cmd, env)] + bench(argparse.Namespace(
      venv=args.venv, python=args.python, out=f'{args.out}/bench', steps=args.steps, repeats=args.repeats))


COMMANDS = {'setup': setup, 'run': run, 'bench': bench, 'suite': suite}


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest='command', required=True)
  for name in COMMANDS:
    s = sub.add_parser(name)
    s.add_argument('--venv', default='.venv', help='virtual environment directory')
    s.add_argument('--dry-run', action='store_true', help='print the commands and environment, run nothing')
    if name == 'run':
      s.add_argument('--config', required=True, help='config file')
      s.add_argument('--workdir', required=True, help='run directory (local or gs://)')
      s.add_argument('--expert', type=int, default=1,
                     help='GPUs that split the experts (mesh.expert); must divide the GPU count and moe.num_experts')
      s.add_argument('overrides', nargs='*', help='after --: trainer flags such as --config.pool.size=4')
    if name in ('bench', 'suite'):
      s.add_argument('--out', default='bench_gpu' if name == 'bench' else 'gpu_suite',
                     help='directory for the JSON figures' if name == 'bench' else
                     'output folder: OUT/suite (runs, report, plan.json) and OUT/bench (the bench JSON)')
      s.add_argument('--steps', type=int, default=10, help='bench: timed steps per round')
      s.add_argument('--repeats', type=int, default=3, help='bench: rounds (each model reports its best)')
      s.add_argument('--python', default='', help='interpreter with a CUDA jax (default: the .venv of setup)')
    if name == 'suite':
      s.add_argument('--corpus_dir', required=True, help='the experiment corpus (carried: no network there)')
      s.add_argument('--budget_s', type=float, default=420.0, help='seconds for the h100 suite (the bench follows)')
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = parser().parse_args(argv)
  if getattr(args, 'expert', 1) < 1:
    raise SystemExit(f'--expert={args.expert}: must be >= 1')
  for key in ('steps', 'repeats'):
    if getattr(args, key, 1) < 1:
      raise SystemExit(f'--{key}={getattr(args, key)}: must be >= 1')
  if getattr(args, 'budget_s', 1) <= 0:
    raise SystemExit(f'--budget_s={args.budget_s:g}: must be > 0')
  for cmd, env in COMMANDS[args.command](args):
    print(' '.join(f'{k}={shlex.quote(v)}' for k, v in env.items()) + (' ' if env else '') + shlex.join(cmd),
          flush=True)
    if not args.dry_run:
      done = subprocess.run(cmd, env=dict(os.environ, **env), check=False)
      if done.returncode:
        return done.returncode
  return 0


if __name__ == '__main__':
  sys.exit(main())
