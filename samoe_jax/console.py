"""The console of the command-line tools: short lines of our own, library chatter out, real warnings kept.

`quiet_library_logs()` (samoe_jax/cli.py's run_app calls it for every entry point once its flags are parsed) sets
up absl's stderr handler:

* records of our own code (files under samoe_jax/) get a short prefix, 'I 16:01:53 ' (warnings and errors
  'W 16:01:53 checkpoint.py:120] '), instead of absl's 45 characters 'I1207 16:01:53.097766 139818898705280
  metrics_writer.py:137] '; every other library keeps absl's prefix;
* orbax-checkpoint's INFO records (a dozen per save or restore) show only at --verbosity=1 (debug); its warnings
  and errors show as one line each, without the tracebacks of its background threads (the trainer reports a
  failed save itself: CheckpointSaveError), and asyncio's copies of them are dropped;
* jax's INFO line "Unable to initialize backend 'tpu': ... libtpu.so ..." is dropped only where JAX_PLATFORMS is
  unset and the machine has no TPU chip (jax warns by itself when one is present without a runtime);
* SentencePiece's INFO log is off, and the 'Event loop is closed' tracebacks that TensorStore callbacks print
  after a failed async save are not printed.
TensorFlow, where a TFDS corpus or the seqio tasks load it, is quieted by data/tf_setup.py.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
import time

from absl import logging

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
TPU_PROBE = "Unable to initialize backend 'tpu'"
_DONE = []   # set up once per process


def is_ours(record: std_logging.LogRecord) -> bool:
  """Whether `record` was logged from a file of this package."""
  return os.path.abspath(record.pathname).startswith(PACKAGE_DIR + os.sep)


class CompactFormatter(logging.PythonFormatter):
  """absl's formatter, with 'I HH:MM:SS ' (INFO) or 'W HH:MM:SS file.py:line] ' (other levels) for our records."""

  def format(self, record: std_logging.LogRecord) -> str:
    if not is_ours(record):
      return super().format(record)
    prefix = f'{record.levelname[:1]} {time.strftime("%H:%M:%S", time.localtime(record.created))} '
    if record.levelno != std_logging.INFO:
      prefix += f'{os.path.basename(record.pathname)}:{record.lineno}] '
    return prefix + std_logging.Formatter.format(self, record)


class DropLibraryChatter(std_logging.Filter):
  """orbax's INFO records unless absl's verbosity is debug; its warnings and errors as one line; asyncio's
  'exception was never retrieved' copies of a failed write (once per array, from orbax's abandoned futures)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.name == 'asyncio' and 'exception was never retrieved' in str(record.msg):
      return False
    if 'orbax' not in record.pathname:
      return True
    if record.levelno < std_logging.WARNING:
      return logging.get_verbosity() >= logging.DEBUG
    if record.exc_info or record.levelno >= std_logging.ERROR:
      first = (record.getMessage().strip().splitlines() or [''])[0]
      record.msg, record.args, record.exc_info, record.exc_text = first[:300], None, None, None
    return True


def has_tpu_chips() -> bool:
  """Whether the machine shows a TPU chip (jax's own check; True when it cannot tell)."""
  try:
    from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top
    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
  except Exception:  # pylint: disable=broad-except  (a jax without it: keep the line)
    return True


class DropTpuProbe(std_logging.Filter):
  """jax's INFO record of a failed TPU probe, where JAX_PLATFORMS is unset and there is no TPU chip."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if not str(record.msg).startswith(TPU_PROBE) or os.environ.get('JAX_PLATFORMS'):
      return True
    return has_tpu_chips()


def _is_closed_loop_noise(exc_type: type, value: BaseException) -> bool:
  return exc_type is RuntimeError and str(value) == 'Event loop is closed'


def quiet_library_logs() -> None:
  """Sets up the console as the module docstring says (once per process; later calls do nothing)."""
  if _DONE:
    return
  _DONE.append(True)
  handler = logging.get_absl_handler()
  handler.addFilter(DropLibraryChatter())
  handler.setFormatter(CompactFormatter())
  std_logging.getLogger('jax._src.xla_bridge').addFilter(DropTpuProbe())
  import sentencepiece  # pylint: disable=g-import-not-at-top
  sentencepiece.set_min_log_level(1)   # its normalizer's INFO line on every model load
  previous = sys.excepthook

  def excepthook(exc_type, value, tb):
    if not _is_closed_loop_noise(exc_type, value):
      previous(exc_type, value, tb)
  sys.excepthook = excepthook
  previous_unraisable = sys.unraisablehook

  def unraisablehook(unraisable):
    if not _is_closed_loop_noise(unraisable.exc_type, unraisable.exc_value):
      previous_unraisable(unraisable)
  sys.unraisablehook = unraisablehook
