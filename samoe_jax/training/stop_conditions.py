"""How a training run stops early: divergence (a NaN/Inf loss or gradient norm) and signals (SIGTERM, Ctrl-C).

check_finite turns the per-step scalars the step computes anyway into a FloatingPointError that names the first bad
step, the last (finite) checkpoint and a hint; StopSignal turns SIGTERM and a first Ctrl-C into a request the loop
honours at the next step boundary (save, then stop with exit code 143 / 130), and a second Ctrl-C into an
immediate stop, as after a kill.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from samoe_jax import cli

FINITE_KEYS = ('loss', 'grad_norm')   # per-step scalars the train step computes anyway


def check_finite(steps: list[int], host: list[dict[str, Any]], latest: int | None, directory: str = 'checkpoints',
                 train_cfg: Any = None) -> None:
  """Raises FloatingPointError naming the first step whose loss or gradient norm is NaN or Inf, the last
  checkpoint (`latest` in `directory`: checkpoints are saved only after their steps were checked, so it is
  finite) and a hint with the config's learning rate, warm-up and clipping. host: per-step {'loss', 'grad_norm'}."""
  for step, metrics in zip(steps, host):
    bad = [k for k in FINITE_KEYS if k in metrics and not np.all(np.isfinite(metrics[k]))]
    if not bad:
      continue
    what = ' and '.join(f'the {"gradient norm" if k == "grad_norm" else k} is {float(metrics[k])}' for k in bad)
    other = [f'{k} {float(metrics[k]):.4g}' for k in FINITE_KEYS if k in metrics and k not in bad]
    kept = (f'the last finite checkpoint, step {latest} in {directory}, is kept and a rerun resumes from it'
            if latest is not None else 'no checkpoint had been saved yet')
    hint = ('Lower train.learning_rate, raise train.warmup_steps or lower train.grad_clip (0 = off)'
            if train_cfg is None else f'Lower train.learning_rate (now {train_cfg.learning_rate}), raise train.warmup_steps (now '
                 f'{train_cfg.warmup_steps}) or lower train.grad_clip (now {train_cfg.grad_clip}; 0 = off)')
    raise FloatingPointError(f'training diverged at step {step}: {what}'
                             + (f' ({", ".join(other)})' if other else '')
                             + f'; the run stopped ({kept}). {hint}.')


def compile_finite_check(abstract_state: Any) -> Any:
  """AOT-compiled state -> bool scalar: every float leaf of the train state finite (run before each save, so no
  compilation happens while training). abstract_state: ShapeDtypeStructs with the state's shardings."""
  def finite(state):
    leaves = [x for x in jax.tree_util.tree_leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.array(True)
  return jax.jit(finite).lower(abstract_state).compile()


class StopSignal:
  """SIGTERM (a preempted VM) and a first Ctrl-C (SIGINT) become a request the loop honours at the next step
  boundary: save a checkpoint, then stop (exit code 143 / 130). A second Ctrl-C stops at once without saving,
  like a kill: the run resumes from its last checkpoint. Installed in the main thread only."""

  SIGNALS = {signal.SIGTERM: ('SIGTERM', 143), signal.SIGINT: ('Ctrl-C', 130)}

  def __init__(self):
    self.requested: tuple[str, int] | None = None   # (what, exit code)
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> 'StopSignal':
    if threading.current_thread() is threading.main_thread():
      self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
    return self

  def _handle(self, signum, frame) -> None:
    del frame
    what, code = self.SIGNALS[signum]
    if self.requested is not None:
      if signum == signal.SIGINT:   # the second Ctrl-C: at once, as after a kill
        sys.stderr.write(f'{cli.prog_name()}: error: interrupted again (Ctrl-C): stopped at once without saving; '
                         'a rerun resumes from the last checkpoint\n')
        sys.stderr.flush()
        os._exit(code)   # pylint: disable=protected-access
      return
    logging.warning('%s received: saving a checkpoint after the current step, then stopping%s', what,
                    ' (Ctrl-C again stops at once, without saving)' if signum == signal.SIGINT else '')
    self.requested = (what, code)

  def __exit__(self, *exc) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
