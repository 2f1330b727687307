"""A quiet console (samoe_jax/console.py, data/tf_setup.py): short lines of our own, no CUDA or TPU probe lines on a
CPU machine, orbax's INFO chatter only at debug verbosity, real warnings kept.

One `train` run in a subprocess with the environment of a plain shell (no TF_CPP_MIN_LOG_LEVEL, no JAX_PLATFORMS),
one TensorFlow import in a subprocess, and the filters and formatter on records made here.
"""

from __future__ import annotations

import logging as std_logging
import os
import pathlib
import re
import subprocess
import sys

import pytest
from absl import logging

from samoe_jax import console
from samoe_jax.data import tf_setup

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROBE_TEXTS = ('cuInit', 'Could not find cuda drivers', 'absl::InitializeLog', console.TPU_PROBE)
PROGRESS_BOUND = 120   # characters of a step / eval line of configs/test_tiny.py, prefix included
OURS = re.compile(r'^[IWEF] \d\d:\d\d:\d\d ')


def _plain_shell_env() -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in ('TF_CPP_MIN_LOG_LEVEL', 'JAX_PLATFORMS')}
  return dict(env, PYTHONPATH=str(ROOT))


def _python(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=_plain_shell_env(), cwd=ROOT,
                        timeout=600)


def test_train_console_has_no_probe_lines_and_short_progress_lines(tmp_path):
  result = _python('-m', 'samoe_jax.train', '--config=configs/test_tiny.py', f'--workdir={tmp_path / "run"}')
  assert result.returncode == 0, result.stderr[-4000:]
  lines = result.stderr.splitlines()
  assert not [line for line in lines if any(text in line for text in PROBE_TEXTS)]
  progress = [line for line in lines if re.match(r'^I \d\d:\d\d:\d\d (step \d+/4 |eval at step \d+: )', line)]
  assert len(progress) == 6   # 4 steps (train.log_every=1) and 2 validations
  assert max(map(len, progress)) <= PROGRESS_BOUND, max(progress, key=len)
  assert all(OURS.match(line) for line in lines), [line for line in lines if not OURS.match(line)]
  assert len(lines) <= 20 and not [line for line in lines if 'orbax' in line or 'Restoring' in line]


def test_importing_tensorflow_writes_no_cuda_probe_lines():
  code = ('import sys; from samoe_jax.data import tf_setup; import tensorflow as tf; '
          'print(len(tf.config.get_visible_devices("GPU")), file=sys.stderr)')
  result = _python('-c', code)
  assert result.returncode == 0, result.stderr[-4000:]
  assert result.stderr.strip().splitlines() == ['0']   # TensorFlow sees no GPU, and says nothing else


def test_held_back_stderr_keeps_every_other_line(capfd):
  if tf_setup.has_nvidia_driver():
    pytest.skip('a machine with an NVIDIA driver holds nothing back')
  with tf_setup.without_cuda_probe_lines():
    os.write(2, b'W0000 00:00:1.0 7 real.cc:1] a real warning\n'
                b'E0000 00:00:1.0 7 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error (303)\n'
                b'I0000 00:00:1.0 7 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be '
                b'used.\n')
    print('a Python line', file=sys.stderr)
  assert sorted(capfd.readouterr().err.splitlines()) == ['W0000 00:00:1.0 7 real.cc:1] a real warning',
                                                         'a Python line']


def _record(path: str, level: int, msg: str, name: str = 'absl', exc_info=None) -> std_logging.LogRecord:
  return std_logging.LogRecord(name, level, path, 12, msg, None, exc_info)


def test_compact_prefix_for_our_records_only():
  formatter = console.CompactFormatter()
  ours = os.path.join(console.PACKAGE_DIR, 'training', 'loop.py')
  info = formatter.format(_record(ours, std_logging.INFO, 'step 1/4 (25%)'))
  assert re.fullmatch(r'I \d\d:\d\d:\d\d step 1/4 \(25%\)', info)
  warning = formatter.format(_record(ours, std_logging.WARNING, 'disk almost full'))
  assert re.fullmatch(r'W \d\d:\d\d:\d\d loop\.py:12\] disk almost full', warning)
  theirs = formatter.format(_record('/site-packages/orbax/checkpoint/x.py', std_logging.INFO, 'saved'))
  assert re.fullmatch(r'I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ x\.py:12\] saved', theirs)


def test_orbax_info_only_at_debug_verbosity_and_errors_in_one_line():
  chatter = console.DropLibraryChatter()
  orbax = '/site-packages/orbax/checkpoint/checkpointer.py'
  before = logging.get_verbosity()
  try:
    logging.set_verbosity(logging.INFO)
    assert not chatter.filter(_record(orbax, std_logging.INFO, 'Restoring checkpoint from /x/4/state.'))
    logging.set_verbosity(logging.DEBUG)
    assert chatter.filter(_record(orbax, std_logging.INFO, 'Restoring checkpoint from /x/4/state.'))
  finally:
    logging.set_verbosity(before)
  assert chatter.filter(_record(orbax, std_logging.WARNING, 'slow save'))
  try:
    raise OSError('disk full')
  except OSError:
    error = _record(orbax, std_logging.ERROR, 'save failed: disk full\n  at step 4', exc_info=sys.exc_info())
  assert chatter.filter(error) and error.getMessage() == 'save failed: disk full' and error.exc_info is None
  assert chatter.filter(_record(os.path.join(console.PACKAGE_DIR, 'train.py'), std_logging.INFO, 'ours'))


def test_tpu_probe_dropped_only_without_jax_platforms_and_tpu_chips(monkeypatch):
  probe = console.DropTpuProbe()
  line = _record('/jax/_src/xla_bridge.py', std_logging.INFO, f"{console.TPU_PROBE}: INTERNAL: Failed to open "
                 'libtpu.so', name='jax._src.xla_bridge')
  monkeypatch.delenv('JAX_PLATFORMS', raising=False)
  monkeypatch.setattr(console, 'has_tpu_chips', lambda: False)
  assert not probe.filter(line)
  assert probe.filter(_record('/jax/_src/xla_bridge.py', std_logging.INFO, "Unable to initialize backend 'cuda': x"))
  monkeypatch.setattr(console, 'has_tpu_chips', lambda: True)   # a TPU machine without its runtime: keep it
  assert probe.filter(line)
  monkeypatch.setattr(console, 'has_tpu_chips', lambda: False)
  monkeypatch.setenv('JAX_PLATFORMS', 'tpu,cpu')
  assert probe.filter(line)
