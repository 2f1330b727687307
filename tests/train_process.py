"""Real `python -m samoe_jax.train` processes for the tests: the command, a run (optionally under a file-size limit,
what a full disk looks like to the writer), a SIGKILL at a log line, and the checks of a run whose save failed."""

from __future__ import annotations

import os
import pathlib
import resource
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from samoe_jax.checkpointing import integrity

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A run whose checksum files cannot be written (their sync fails with ENOSPC, as on a full disk), then the trainer.
CHECKSUMS_DISK_FULL = '''
import errno, os, runpy
from samoe_jax.checkpointing import integrity
def disk_full(f):
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
integrity._sync = disk_full
runpy.run_module('samoe_jax.train', run_name='__main__', alter_sys=True)
'''


def environment(cache_dir: pathlib.Path | None = None) -> dict[str, str]:
  """CPU jax, this checkout on the path and, given a directory, a persistent compilation cache there."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  if cache_dir is not None:
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  return env


def train_command(config_file: Any, workdir: Any, *extra: str, checksums_disk_full: bool = False) -> list[str]:
  program = ['-c', CHECKSUMS_DISK_FULL] if checksums_disk_full else ['-m', 'samoe_jax.train']
  return [sys.executable, *program, f'--config={config_file}', f'--workdir={workdir}', *extra]


def run(cmd: list[str], env: dict[str, str], file_size_limit: int | None = None) -> subprocess.CompletedProcess:
  """Runs cmd to its end. With file_size_limit (bytes), files over it cannot be written (RLIMIT_FSIZE: Python
  ignores SIGXFSZ, the write fails with EFBIG), as on a full disk; the compilation cache is then only read (its
  entries would be truncated)."""
  kwargs: dict[str, Any] = {}
  if file_size_limit is not None:
    env = dict(env, JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=str(2**50))

    def limit():
      resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    kwargs['preexec_fn'] = limit
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False, **kwargs)


def kill_when(cmd: list[str], env: dict[str, str], pattern: str) -> str:
  """Starts cmd, SIGKILLs it as soon as a stderr line contains `pattern`; returns the stderr read so far."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  lines: list[str] = []
  seen = threading.Event()

  def read():
    for line in proc.stderr:
      lines.append(line)
      if pattern in line:
        proc.send_signal(signal.SIGKILL)
        seen.set()

  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  proc.wait(timeout=300)
  reader.join(timeout=10)
  assert seen.is_set(), ''.join(lines)[-3000:]
  assert proc.returncode == -signal.SIGKILL
  return ''.join(lines)


def temporaries(workdir: pathlib.Path) -> list[str]:
  """Files and folders under workdir that a finished or failed save must not leave: '*.tmp', orbax's '-tmp'."""
  return [os.path.join(root, name) for root, dirs, files in os.walk(workdir) for name in dirs + files
          if '.tmp' in name or 'orbax-checkpoint-tmp' in name]


def checksummed_steps(workdir: pathlib.Path) -> list[int]:
  checkpoints = workdir / 'checkpoints'
  return sorted(int(n) for n in os.listdir(checkpoints)
                if n.isdigit() and integrity.has_checksums(str(checkpoints / n)))


def assert_save_failed(proc: subprocess.CompletedProcess, workdir: pathlib.Path, step: int, kept: list[int]) -> str:
  """The run stopped with exit code 1 and one line naming the failed save's step, the checkpoint directory, the
  free space and the kept checkpoints (which verify), without a traceback or a temporary file; returns the line."""
  assert proc.returncode == 1, proc.stderr[-5000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-5000:]
  errors = [line for line in proc.stderr.splitlines() if ': error: ' in line]
  assert len(errors) == 1, proc.stderr[-5000:]
  line = errors[0]
  assert line.startswith(f'samoe_jax.train: error: saving the checkpoint of step {step} in '
                         f'{workdir / "checkpoints"} failed'), line
  assert ' free on that disk' in line and f'Intact earlier checkpoints: steps {kept}' in line, line
  assert line.endswith(f'rerun the same command to resume from step {kept[-1]}.'), line
  assert not temporaries(workdir)
  for earlier in kept:
    assert integrity.problems(str(workdir / 'checkpoints' / str(earlier))) == [], earlier
  return line


def wait_for_steps(workdir: pathlib.Path, proc: subprocess.Popen, steps: int = 3, timeout: float = 240) -> None:
  """Returns once the training process `proc` has logged `steps` train records in workdir/metrics.jsonl."""
  from samoe_jax.training.metrics_writer import read_metrics  # pylint: disable=g-import-not-at-top
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if (workdir / 'metrics.jsonl').exists() and len(read_metrics(str(workdir), 'train')) >= steps:
      return
    time.sleep(0.2)
  raise AssertionError(f'the trainer did not reach step {steps}: {proc.stderr.read()[-3000:] if proc.stderr else ""}')
