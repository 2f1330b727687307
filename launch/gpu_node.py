#!/usr/bin/env python3
"""Train on one GPU node (all its GPUs, one process): set up the CUDA build of jax once, then run a config.

  python launch/gpu_node.py setup                                   # .venv + pins + jax[cuda12]
  python launch/gpu_node.py run --config=configs/gpt3_350m_samoe.py --workdir=/data/runs/350m \\
                                [--expert=8] -- --config.data.tfds_data_dir=/data/tfds

Every subcommand takes --dry-run (print the commands and the environment, run nothing). `run` puts all local GPUs
in one mesh: `--expert` GPUs split the experts (default 1: pure data parallelism; it must divide the GPU count
and moe.num_experts), the rest is data parallelism (mesh.data=-1); XLA's latency-hiding scheduler overlaps the
collectives with compute. Not yet timed on a GPU in this project. One process drives all local GPUs, so no jax.distributed setup is needed on a single node.
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


COMMANDS = {'setup': setup, 'run': run}


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
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = parser().parse_args(argv)
  if getattr(args, 'expert', 1) < 1:
    raise SystemExit(f'--expert={args.expert}: must be >= 1')
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
