"""The active-k schedule of SMoE-Dropout (docs/methods/smoe_dropout.md; Chen et al., ICLR 2023, `calculate_gate_number`).

The number of experts each token uses, k(s), changes with the training step s. The MoE layers are built with
their static maximum k_max = moe.top_k (dispatch buffers, slots); the train step passes the traced k(s) as
`active_k` (only the first k(s) of a token's top_k choices are used, layers/token_choice.py).

The schedule is config.moe.smoe_dropout (kind, k_min, k_max, steps). With a = k_max - k_min, S = steps
(0: train.steps), s clamped to [0, S] (k is held at k(S) after step S) and `round` rounding half to even
(Python's round, np.round, as the official code):

  constant          k = moe.top_k                                      (the default: nothing changes)
  linear_increase   k = round( a s / S) + k_min                        (the paper's schedule, k_min -> k_max)
  linear_decrease   k = round(-a s / S) + k_max
  cosine_increase   k = round(-a cos(pi s / (2 S))) + k_max
  cosine_decrease   k = round( a cos(pi s / (2 S))) + k_min
  exp_increase      k = round(-a 0.99^c) + k_max,  c = s // max(S // 300, 1)
  exp_decrease      k = round( a 0.99^c) + k_min                       (the mirror of exp_increase; not in the repo)

and k is finally clipped to [k_min, k_max]. Deviations from the repo: s is clamped to [0, S] (the repo's cosine
would rise again after 2 S) and exp's S // 300 is at least 1 (the repo divides by zero for S < 300).

`schedule_numpy` is the formula in float64 numpy (the reference). `KSchedule.__call__(step)` is the jnp function
for a traced step: it adds the schedule's integer jumps at the steps where the reference changes value (found once
in numpy over s = 0..S), so it equals the reference exactly at every step, with no float32 rounding at the .5
boundaries; the schedules are monotone, so there are at most k_max - k_min jumps.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from samoe_jax.config.checks import Problems, is_int, register
from samoe_jax.config.layer_plan import moe_layer_indices
from samoe_jax.config.pyramid import parse_experts_per_layer
from samoe_jax.config.sections import MoeSection
from samoe_jax.layers.token_choice import GATES

KINDS = ('constant', 'linear_increase', 'linear_decrease', 'cosine_increase', 'cosine_decrease', 'exp_increase',
         'exp_decrease')
EXP_BASE = 0.99     # the repo's decay per period
EXP_PERIODS = 300   # the repo's number of periods over S


def schedule_numpy(kind: str, steps: Any, k_min: int, k_max: int, total_steps: int) -> np.ndarray:
  """k at each step (int64 array like `steps`): the formulas of the module docstring in float64 numpy."""
  if kind not in KINDS:
    raise ValueError(f'moe.smoe_dropout.kind={kind!r} is not one of {KINDS}')
  if total_steps < 1:
    raise ValueError(f'k schedule: total_steps={total_steps} must be >= 1')
  s = np.clip(np.asarray(steps, np.int64), 0, total_steps).astype(np.float64)
  a, S = float(k_max - k_min), float(total_steps)
  if kind == 'constant':
    k = np.full(s.shape, float(k_max))
  elif kind == 'linear_increase':
    k = np.round(a * s / S) + k_min
  elif kind == 'linear_decrease':
    k = np.round(-a * s / S) + k_max
  elif kind in ('cosine_increase', 'cosine_decrease'):
    cosine = np.cos(np.pi * s / (2.0 * S))
    k = np.round(-a * cosine) + k_max if kind == 'cosine_increase' else np.round(a * cosine) + k_min
  else:
    periods = np.floor_divide(s, max(total_steps // EXP_PERIODS, 1))
    decay = EXP_BASE ** periods
    k = np.round(-a * decay) + k_max if kind == 'exp_increase' else np.round(a * decay) + k_min
  return np.clip(k, k_min, k_max).astype(np.int64)


@register('moe', moe_only=True)
def check_k_schedule(c: Any, problems: Problems) -> None:
  """SMoE-Dropout keys (docs/methods/smoe_dropout.md; a registered check, config/checks.py): the k schedule and
  the evaluation k / gate; the schedule's bounds only when a schedule is on."""
  moe = c.moe
  if not (is_int(moe.num_experts) and is_int(moe.top_k)):
    return
  top_k, experts = moe.top_k, moe.num_experts
  eval_k = moe.eval_top_k
  if not is_int(eval_k) or not 0 <= eval_k <= experts:
    problems.add('moe.eval_top_k', eval_k, f'must be an integer in [0, moe.num_experts={experts}] (0 = moe.top_k)')
  elif eval_k and moe.experts_per_layer:   # Pyramid-MoE: every layer needs eval_top_k experts
    try:
      fewest = min(parse_experts_per_layer(moe.experts_per_layer, problems.num_moe, experts))
    except ValueError:
      fewest = eval_k   # reported by config/section_checks.check_pyramid
    if eval_k > fewest:
      problems.add('moe.eval_top_k', eval_k, f'must be <= {fewest}, the fewest experts of a layer in '
                   f'moe.experts_per_layer={moe.experts_per_layer!r}')
  if moe.eval_gate != '':
    problems.one_of('moe.eval_gate', moe.eval_gate, ('',) + tuple(GATES))
  sd = moe.smoe_dropout
  kind = sd.kind
  if not problems.one_of('moe.smoe_dropout.kind', kind, KINDS) or kind == 'constant':
    return
  k_min, k_max, steps = sd.k_min, sd.k_max, sd.steps
  if is_int(k_max) and k_max not in (0, top_k):
    problems.add('moe.smoe_dropout.k_max', k_max, f"must be 0 or moe.top_k={top_k}: top_k is the MoE layers' "
                 f'static maximum k, so set moe.top_k={k_max} (and moe.smoe_dropout.k_max=0) to schedule up to '
                 f'{k_max} experts')
  elif not is_int(k_max):
    problems.add('moe.smoe_dropout.k_max', k_max, f'must be an integer (0 = moe.top_k={top_k})')
  if not is_int(k_min) or not 1 <= k_min <= top_k:
    problems.add('moe.smoe_dropout.k_min', k_min, f'must be an integer in [1, moe.top_k={top_k}] (k_min <= k_max '
                 f'= top_k <= moe.num_experts={experts}) with moe.smoe_dropout.kind={kind!r}')
  if not is_int(steps) or steps < 0:
    problems.add('moe.smoe_dropout.steps', steps, 'must be an integer >= 0 (0 = train.steps)')


@dataclasses.dataclass(frozen=True)
class KSchedule:
  """k(step) for the schedule `kind` (moe.smoe_dropout.kind) between k_min and k_max over total_steps (module
  docstring)."""
  kind: str
  k_min: int
  k_max: int
  total_steps: int

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'moe.smoe_dropout.kind={self.kind!r} is not one of {KINDS}')
    if not 1 <= self.k_min <= self.k_max:
      raise ValueError(f'k schedule: need 1 <= moe.smoe_dropout.k_min={self.k_min} <= k_max={self.k_max}')
    if self.total_steps < 1:
      raise ValueError(f'k schedule: total_steps={self.total_steps} must be >= 1')

  @property
  def constant(self) -> bool:
    return self.kind == 'constant' or self.k_min == self.k_max

  def numpy(self, steps: Any) -> np.ndarray:
    """The reference: k at each of `steps` (int64)."""
    return schedule_numpy(self.kind, steps, self.k_min, self.k_max, self.total_steps)

  @functools.cached_property
  def jumps(self) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """(k at step 0, the steps where k changes, the change at each of them), from the reference over 0..S."""
    k_S1 = self.numpy(np.arange(self.total_steps + 1))
    where = np.flatnonzero(np.diff(k_S1)) + 1
    return int(k_S1[0]), tuple(int(w) for w in where), tuple(int(d) for d in np.diff(k_S1)[where - 1])

  def __call__(self, step: jax.Array | int) -> jax.Array:
    """k at a (traced) step: int32 [] in [k_min, k_max], equal to `numpy(step)` at every step."""
    k0, where, deltas = self.jumps
    step = jnp.asarray(step, jnp.int32)
    if not where:
      return jnp.full((), k0, jnp.int32)
    passed_J = step >= jnp.asarray(where, jnp.int32)
    return (k0 + jnp.sum(jnp.where(passed_J, jnp.asarray(deltas, jnp.int32), 0))).astype(jnp.int32)

  def mean_k(self, num_steps: int) -> float:
    """The average k over steps 0 .. num_steps - 1 (what the training FLOPs scale with)."""
    return float(np.mean(self.numpy(np.arange(max(num_steps, 1)))))

  def describe(self) -> str:
    if self.kind == 'constant':
      return f'constant k = {self.k_max}'
    return (f'{self.kind} from k = {self.numpy(0)} to k = {self.numpy(self.total_steps)} over {self.total_steps} '
            f'steps (k_min {self.k_min}, k_max {self.k_max})')

  @classmethod
  def from_config(cls, config: Any) -> 'KSchedule':
    """The schedule of config.moe.smoe_dropout (kind, k_min, k_max, steps), moe.top_k and train.steps."""
    moe = MoeSection.of(config)
    sd = moe.smoe_dropout
    k_max = sd.k_max or moe.top_k
    k_min = moe.top_k if sd.kind == 'constant' else sd.k_min
    total = sd.steps or config.train.steps
    return cls(sd.kind, int(k_min), int(k_max), int(total))


def train_active_k(config: Any | None, step: jax.Array) -> jax.Array | None:
  """The active k of the train step at `step` (int32 []), or None for moe.smoe_dropout.kind='constant' (then
  nothing is passed to the model and the forward pass is the one without a schedule), for dense models and without
  a config."""
  if config is None or MoeSection.of(config).smoe_dropout.kind == 'constant' or not moe_layer_indices(
      config.model):
    return None
  return KSchedule.from_config(config)(step)
