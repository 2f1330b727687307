#!/usr/bin/env python3
"""Cloud TPU VM lifecycle for samoe-jax: create, copy the code, set up, run on every worker, stream logs, delete.

  python launch/tpu_vm.py create --name=samoe-v4 --zone=us-central2-b --accelerator=v4-32 [--spot] [--queued]
  python launch/tpu_vm.py copy   --name=samoe-v4 --zone=us-central2-b            # this checkout -> every worker
  python launch/tpu_vm.py setup  --name=samoe-v4 --zone=us-central2-b            # venv + TPU build of jax
  python launch/tpu_vm.py run    --name=samoe-v4 --zone=us-central2-b --config=configs/gpt3_350m_samoe.py \\
                                 --workdir=gs://BUCKET/runs/350m_samoe -- --config.pool.size=4
  python launch/tpu_vm.py logs   --name=samoe-v4 --zone=us-central2-b [--worker=0]
  python launch/tpu_vm.py delete --name=samoe-v4 --zone=us-central2-b [--queued]

Every subcommand takes --dry-run (print the gcloud commands, run nothing) and --project. A pod slice runs one
training process per worker (`--worker=all`); the trainer detects the multi-host slice from the TPU environment
and calls jax.distributed.initialize itself. The workdir must be on GCS so all workers share checkpoints.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from typing import Sequence

REMOTE_DIR = '~/samoe-jax'
RUNTIME = 'tpu-ubuntu2204-base'
JAX_TPU = 'jax[tpu]==0.10.2'   # the TPU build of the pinned jax (libtpu comes from the package index)


def _common(args: argparse.Namespace) -> list[str]:
  out = [f'--zone={args.zone}']
  if args.project:
    out.append(f'--project={args.project}')
  return out


def _ssh(args: argparse.Namespace, remote: str, worker: str = 'all') -> list[str]:
  return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', args.name, *_common(args), f'--worker={worker}',
          f'--command={remote}']


def create(args: argparse.Namespace) -> list[list[str]]:
  if args.queued:   # queued resources: waits for capacity instead of failing
    cmd = ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', args.name, f'--node-id={args.name}',
           *_common(args), f'--accelerator-type={args.accelerator}', f'--runtime-version={args.runtime}']
  else:
    cmd = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', args.name, *_common(args),
           f'--accelerator-type={args.accelerator}', f'--version={args.runtime}']
  if args.spot:
    cmd.append('--spot')
  return [cmd]


def copy(args: argparse.Namespace) -> list[list[str]]:
  if args.git_url:
    return [_ssh(args, f'rm -rf {REMOTE_DIR} && git clone --depth=1 {shlex.quote(args.git_url)} {REMOTE_DIR}')]
  return [_ssh(args, f'mkdir -p {REMOTE_DIR}'),
          ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', '--recurse', *[f'{args.source}/{p}' for p in
           ('samoe_jax', 'configs', 'launch', 'requirements.txt', 'pyproject.toml', 'README.md')],
           f'{args.name}:{REMOTE_DIR}/', *_common(args), '--worker=all']]


def setup(args: argparse.Namespace) -> list[list[str]]:
  remote = (f'cd {REMOTE_DIR} && python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt && '
            f'.venv/bin/pip install -q "{JAX_TPU}" && .venv/bin/pip install -q --no-deps -e . && '
            f'.venv/bin/python -c "import jax; print(jax.process_index(), jax.local_devices())"')
  return [_ssh(args, remote)]


def run(args: argparse.Namespace) -> list[list[str]]:
  if not args.workdir.startswith('gs://'):
    raise SystemExit(f'--workdir={args.workdir!r}: use a gs:// path so that every worker shares the checkpoints')
  train = ['.venv/bin/python', '-m', 'samoe_jax.train', f'--config={args.config}', f'--workdir={args.workdir}',
           *args.overrides]
  remote = (f'cd {REMOTE_DIR} && nohup {" ".join(shlex.quote(a) for a in train)} > ~/train.log 2>&1 &')
  return [_ssh(args, remote)]


def logs(args: argparse.Namespace) -> list[list[str]]:
  return [_ssh(args, 'tail -n 100 -f ~/train.log', worker=args.worker)]


def delete(args: argparse.Namespace) -> list[list[str]]:
  if args.queued:
    return [['gcloud', 'compute', 'tpus', 'queued-resources', 'delete', args.name, *_common(args), '--force',
             '--quiet']]
  return [['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', args.name, *_common(args), '--quiet']]


COMMANDS = {'create': create, 'copy': copy, 'setup': setup, 'run': run, 'logs': logs, 'delete': delete}


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest='command', required=True)
  for name, fn in COMMANDS.items():
    s = sub.add_parser(name, help=fn.__name__)
    s.add_argument('--name', required=True, help='TPU VM (or queued resource) name')
    s.add_argument('--zone', required=True, help='e.g. us-central2-b')
    s.add_argument('--project', default='', help='GCP project (default: gcloud config)')
    s.add_argument('--dry-run', action='store_true', help='print the gcloud commands, run nothing')
    if name in ('create', 'delete'):
      s.add_argument('--queued', action='store_true', help='use queued resources')
    if name == 'create':
      s.add_argument('--accelerator', required=True, help='e.g. v4-8 (one host), v4-32 (pod slice), v5litepod-8')
      s.add_argument('--runtime', default=RUNTIME, help='TPU software version')
      s.add_argument('--spot', action='store_true', help='spot (preemptible) capacity')
    if name == 'copy':
      s.add_argument('--source', default='.', help='local checkout to copy')
      s.add_argument('--git_url', default='', help='clone this repository on every worker instead of copying')
    if name == 'run':
      s.add_argument('--config', required=True, help='config file, relative to the checkout')
      s.add_argument('--workdir', required=True, help='gs:// run directory')
      s.add_argument('overrides', nargs='*', help='after --: trainer flags such as --config.pool.size=4')
    if name == 'logs':
      s.add_argument('--worker', default='0', help='which worker to follow')
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = parser().parse_args(argv)
  commands = COMMANDS[args.command](args)
  for cmd in commands:
    print(shlex.join(cmd), flush=True)
    if not args.dry_run:
      done = subprocess.run(cmd, check=False)
      if done.returncode:
        return done.returncode
  return 0


if __name__ == '__main__':
  sys.exit(main())
