"""StepOptions: the static choices of one train step, built once by the trainer (training/loop.py).

The traced per-step values (the state, the batch, the run's rng, a teacher's params) stay arguments of the step
(training/step.py); everything else the step needs is here, frozen and hashable, so that one StepOptions is one
compiled program.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import optax

from samoe_jax.models.model import LanguageModel
from samoe_jax.training import accumulate
from samoe_jax.training.distill import DistillSpec
from samoe_jax.training.grad_stats import GradStats


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """model, optimizer, schedule: the LanguageModel, its optax update and learning-rate schedule (step -> lr).

  microbatches: M >= 1 gradient-accumulation passes (train.microbatches; B divisible by M x rows per routing group).
  teacher, distill: knowledge distillation (training/distill.py): the teacher's LanguageModel and the KD settings,
    both or neither; the teacher's params are the step's argument (never updated).
  grad_stats: also return the gradient-flow statistics 'grad/...' (training/grad_stats.py) from the same backward
    pass, which then also differentiates with respect to zero probes on every MoE layer's effective experts.
  """
  model: LanguageModel
  optimizer: optax.GradientTransformation
  schedule: Callable
  microbatches: int = 1
  teacher: LanguageModel | None = None
  distill: DistillSpec | None = None
  grad_stats: GradStats | None = None

  def __post_init__(self):
    accumulate.check_microbatches(self.microbatches)
    if (self.teacher is None) != (self.distill is None):
      raise ValueError('StepOptions: knowledge distillation needs both teacher and distill (or neither)')
