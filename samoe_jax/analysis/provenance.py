"""Where a report was made: the checkout's commit and the machine, one line each."""

from __future__ import annotations

import os
import platform
import subprocess

import jax

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def commit() -> str:
  """HEAD of the checkout this package runs from, '+ uncommitted changes' when the tree is dirty."""
  try:
    head = subprocess.run(['git', '-C', REPO_ROOT, 'rev-parse', 'HEAD'], capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = subprocess.run(['git', '-C', REPO_ROOT, 'status', '--porcelain', '--untracked-files=no'],
                           capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return 'unknown (not a git checkout)'
  return head + (' + uncommitted changes' if dirty else '')


def machine() -> str:
  """CPU model, cores, memory, the jax devices and versions, in one line."""
  cpu = platform.processor() or platform.machine()
  memory = ''
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), cpu)
    with open('/proc/meminfo') as f:
      kib = int(next(line.split()[1] for line in f if line.startswith('MemTotal')))
      memory = f', {kib / 2**20:.0f} GiB RAM'
  except (OSError, StopIteration, ValueError):
    pass
  devices = jax.devices()
  return (f'{cpu}, {os.cpu_count()} cores{memory}; jax {jax.__version__} on {len(devices)} '
          f'{devices[0].platform} device(s); Python {platform.python_version()}')
