"""Imports TensorFlow quietly and keeps it off accelerators (JAX owns them).

The modules that need TensorFlow (the seqio tasks, TFDS, seqio vocabularies) import this first, so that
TF_CPP_MIN_LOG_LEVEL=2 is set before TensorFlow loads and TensorFlow never allocates GPU memory beside JAX. On a
machine without an NVIDIA driver (no libcuda.so.1) TensorFlow's CUDA build still probes for one while it is
imported and lists its devices, and writes lines that no environment variable stops ('Could not find cuda drivers
on your machine', 'failed call to cuInit: ...', absl's 'All log messages before absl::InitializeLog() ...'):
those lines are dropped there, and every other line written to stderr meanwhile is written out afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import tempfile
from collections.abc import Iterator

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

CUDA_PROBE_LINES = re.compile(r'All log messages before absl::InitializeLog\(\) is called are written to STDERR'
                              r'|cudart_stub\.cc:\d+\] Could not find cuda drivers'
                              r'|failed call to cuInit')


def has_nvidia_driver() -> bool:
  """Whether the NVIDIA driver library can be loaded (a machine where CUDA can work)."""
  try:
    ctypes.CDLL('libcuda.so.1')
  except OSError:
    return False
  return True


@contextlib.contextmanager
def without_cuda_probe_lines() -> Iterator[None]:
  """Holds back what is written to file descriptor 2 in the block and writes it out afterwards, without the lines
  of a failed CUDA probe; a no-op where the NVIDIA driver is present (there, nothing is held back)."""
  if has_nvidia_driver():
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      kept = [line for line in captured.read().splitlines(keepends=True)
              if not CUDA_PROBE_LINES.search(line.decode('utf-8', 'replace'))]
      if kept:
        os.write(2, b''.join(kept))


with without_cuda_probe_lines():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position


def hide_accelerators() -> None:
  """Makes TensorFlow see no GPU; a no-op once TensorFlow has initialised its devices."""
  with without_cuda_probe_lines():   # listing the devices is what calls cuInit
    try:
      tf.config.set_visible_devices([], 'GPU')
    except (RuntimeError, ValueError):  # devices already initialised: too late to change, keep going
      pass


hide_accelerators()
