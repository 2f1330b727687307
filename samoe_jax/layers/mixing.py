"""SaMoE's mixing schemes: how each MoE layer's experts come from its pool (Zhang et al. 2022; docs/model.md).

A scheme is built once from the pool section (`mixing_for(pool)`, kept on the model spec as `spec.mixing`); the
model, the trainer, the optimizer, the scorer, accounting, describe and the analyses ask it instead of comparing
the pool section's strings:

  pool.mixing='fixed'    FixedMixing: MoE layer l uses pool entry assignment(l) (a one-hot alpha_l): the standard
                         MoE (P = L_moe), fully tied experts (P = 1), manual sharing (in between). No parameters.
  pool.mixing='learned'  LearnedMixing: W^(l) = sum_j softmax(alpha_l / tau)_j W_j with alpha_l [P] per layer
                         (pool.granularity='layer') or [E, P] per expert ('expert'); in weight space
                         (pool.space='weight': the cost of one MoE) or output space ('output', an ablation).

What lets a learned mixture move (docs/model.md, "Mixing that learns"): the temperature tau (pool.temperature),
the initialisation of alpha (pool.init, MIXING_INITS) and the logits' learning rate relative to the schedule
(pool.lr_multiplier; training/optimizer.py applies it to every parameter with the 'mixing' logical axis).
Adding a scheme: a subclass registered in MIXING_SCHEMES (docs/architecture.md, "Adding a mixing scheme").
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from samoe_jax.config.checks import Problems, register
from samoe_jax.config.layer_plan import ASSIGNMENTS, pool_assignment
from samoe_jax.config.pyramid import ExpertGroup

MIXING_INITS = ('uniform', 'one_hot', 'random')
MIXING_AXIS = 'mixing'   # the logical axis of the mixing logits (no weight decay; pool.lr_multiplier)


def mixing_weights(alpha: jax.Array, temperature: float) -> jax.Array:
  """softmax(alpha / tau) over the last (pool) axis: [..., P] -> [..., P], float32."""
  return jax.nn.softmax(alpha.astype(jnp.float32) / temperature, axis=-1)


def mixing_statistics(weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per MoE layer: the entropy (nats) and the largest weight of its mixture, each [L].

  weights: [L, P] (layer-level) or [L, E, P] (expert-level: means over the experts). Zero entries (padding of
  Pyramid-MoE groups, layers/pool.py:pad_stack) add nothing. Uniform mixing gives entropy log P and max 1/P.
  """
  w = weights.astype(jnp.float32)
  plogp = jnp.where(w > 0, w * jnp.log(jnp.where(w > 0, w, 1.0)), 0.0)
  entropy, largest = -jnp.sum(plogp, axis=-1), jnp.max(w, axis=-1)
  if w.ndim == 3:
    entropy, largest = jnp.mean(entropy, axis=-1), jnp.mean(largest, axis=-1)
  return entropy, largest


def mixing_metrics(weights: jax.Array, blocks: Sequence[int]) -> dict[str, jax.Array]:
  """The logged mixing metrics: 'pool/mixing_weights' ([L, (E,) P]) and, per MoE layer at block b,
  'pool/layer{b}/mixing_entropy' and 'pool/layer{b}/mixing_max' (mixing_statistics)."""
  entropy_L, largest_L = mixing_statistics(weights)
  out = {'pool/mixing_weights': weights}
  for i, block in enumerate(blocks):
    out[f'pool/layer{block}/mixing_entropy'] = entropy_L[i]
    out[f'pool/layer{block}/mixing_max'] = largest_L[i]
  return out


class MixingLogits(nn.Module):
  """Every MoE layer's own mixing logits, stored stacked: alpha [L_moe, P] (layer-level) or [L_moe, E, P]
  (expert-level). Row l belongs to MoE layer l. Returns softmax(alpha / tau) over the pool axis.

  init_mode: 'uniform' (alpha = 0), 'one_hot' (alpha = one_hot_scale on each layer's own entry,
  init_entries[l]) or 'random' (alpha ~ N(0, random_std^2), from the params rng).
  """
  num_moe_layers: int
  pool_size: int
  num_experts: int
  granularity: str          # 'layer' or 'expert'
  temperature: float
  init_mode: str
  init_entries: tuple[int, ...]   # per MoE layer: the pool entry a one-hot init favours
  one_hot_scale: float
  random_std: float = 1.0

  @nn.compact
  def __call__(self) -> jax.Array:
    l, p = self.num_moe_layers, self.pool_size
    if self.granularity == 'layer':
      shape, names = (l, p), ('moe_layer', MIXING_AXIS)
    else:
      shape, names = (l, self.num_experts, p), ('moe_layer', 'expert', MIXING_AXIS)

    def init_fn(key, shape, dtype=jnp.float32):
      if self.init_mode == 'uniform':
        return jnp.zeros(shape, dtype)
      if self.init_mode == 'random':
        return self.random_std * jax.random.normal(key, shape, dtype)
      one_hot_LP = self.one_hot_scale * jax.nn.one_hot(jnp.asarray(self.init_entries), p, dtype=dtype)
      return one_hot_LP if len(shape) == 2 else jnp.broadcast_to(one_hot_LP[:, None, :], shape)

    alpha = self.param('alpha', nn.with_logical_partitioning(init_fn, names), shape)
    return mixing_weights(alpha, self.temperature)


@dataclasses.dataclass(frozen=True)
class Mixing(abc.ABC):
  """A mixing scheme. granularity: 'layer' or 'expert'; space: 'weight' or 'output' (learned schemes only)."""
  name: ClassVar[str] = ''
  learned: ClassVar[bool] = False   # whether the scheme has trainable mixing logits
  granularity: str = 'layer'
  space: str = 'weight'

  @property
  def mixes_weights(self) -> bool:
    """Each layer's effective experts are a weighted sum of the pool, formed once per step (weight space)."""
    return self.learned and self.space == 'weight'

  @property
  def mixes_outputs(self) -> bool:
    """Each layer gets the whole pool and its weights and mixes the P experts' outputs (output space)."""
    return self.learned and self.space == 'output'

  @property
  def selects_entries(self) -> bool:
    """Each layer's experts ARE one pool entry (a one-hot mixture): no mixing is computed."""
    return not self.learned

  @property
  def lr_multipliers(self) -> dict[str, float]:
    """{logical axis: learning-rate multiplier} for the optimizer (training/optimizer.py); {} = none."""
    return {}

  @abc.abstractmethod
  def logits_module(self, group: ExpertGroup) -> MixingLogits | None:
    """The group's mixing-logits module (unnamed), or None when the scheme has no parameters."""

  @abc.abstractmethod
  def describe(self, pool_size: int, num_moe: int, assignment: str) -> str:
    """One line for `describe`: what the model's sharing is."""

  @classmethod
  def from_pool(cls, pool: Any) -> 'Mixing':
    """The scheme with the pool section's keys (config.pool or config/sections.PoolSection)."""
    return cls(pool.granularity, pool.space)

  @classmethod
  def check_keys(cls, pool: Any, errors: Problems) -> None:
    """The values of the scheme's own keys, checked whichever scheme is chosen (a bad value is a typo either
    way; config/checks.py's collector)."""

  @classmethod
  def check(cls, pool: Any, num_moe: int, errors: Problems) -> None:
    """The scheme's rules on the pool section when pool.mixing chooses it."""


@dataclasses.dataclass(frozen=True)
class FixedMixing(Mixing):
  """One-hot mixing: MoE layer l uses pool entry pool_assignment(l) (standard MoE, tied experts, manual)."""
  name: ClassVar[str] = 'fixed'
  learned: ClassVar[bool] = False

  def logits_module(self, group: ExpertGroup) -> None:
    return None

  def describe(self, pool_size: int, num_moe: int, assignment: str) -> str:
    if pool_size == 1:
      return 'fully tied experts (pool of 1, fixed)'
    if pool_assignment(num_moe, pool_size, assignment) == list(range(num_moe)):
      return 'standard MoE (one pool entry per MoE layer, fixed)'
    return f'manual sharing ({pool_size} pool entries, fixed {assignment!r} assignment)'

  @classmethod
  def check(cls, pool: Any, num_moe: int, errors: Problems) -> None:
    size, assignment = pool.size, pool.assignment
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or assignment not in ASSIGNMENTS:
      return   # config/section_checks.py names a bad size or assignment itself
    used = set(pool_assignment(num_moe, size, assignment))
    if len(used) < size:
      errors.add('pool.size', size,
                 f"with pool.mixing='fixed' and pool.assignment={assignment!r} only {len(used)} of the {size} "
                 f'entries are used by the {num_moe} MoE layer(s); use pool.size <= {num_moe} (= {num_moe}: '
                 "standard MoE, 1: fully tied, between: manual sharing) or pool.mixing='learned'")


@dataclasses.dataclass(frozen=True)
class LearnedMixing(Mixing):
  """softmax(alpha / tau) over the pool, per layer or per expert, in weight or output space."""
  name: ClassVar[str] = 'learned'
  learned: ClassVar[bool] = True
  temperature: float = 1.0
  init: str = 'uniform'
  one_hot_scale: float = 3.0
  random_std: float = 1.0
  lr_multiplier: float = 1.0
  target_reach: float = 0.0   # > 0: the multiplier that gives the logits this reach (training/optimizer.py)

  @classmethod
  def from_pool(cls, pool: Any) -> 'LearnedMixing':
    return cls(pool.granularity, pool.space, float(pool.temperature), pool.init, float(pool.one_hot_scale),
               float(pool.random_init_std), float(pool.lr_multiplier), float(pool.target_reach))

  @property
  def lr_multipliers(self) -> dict[str, float]:
    return {} if self.lr_multiplier == 1.0 else {MIXING_AXIS: self.lr_multiplier}

  def logits_module(self, group: ExpertGroup) -> MixingLogits:
    return MixingLogits(len(group.layers), group.pool_size, group.num_experts, self.granularity, self.temperature,
                        self.init, group.entries, self.one_hot_scale, self.random_std)

  def describe(self, pool_size: int, num_moe: int, assignment: str) -> str:
    knobs = [f'init {self.init!r}'] if self.init != 'uniform' else []
    knobs += [f'tau {self.temperature:g}'] if self.temperature != 1.0 else []
    knobs += [f'logits lr x{self.lr_multiplier:g}'] if self.lr_multiplier != 1.0 else []
    knobs += [f'logits reach {self.target_reach:g}'] if self.target_reach else []
    line = f'SaMoE: learned {self.granularity}-level {self.space}-space mixing of a pool of {pool_size}'
    return line + (f' ({", ".join(knobs)})' if knobs else '')

  @classmethod
  def check_keys(cls, pool: Any, errors: Problems) -> None:
    errors.positive('pool.temperature', pool.temperature)
    errors.one_of('pool.init', pool.init, MIXING_INITS)
    errors.non_negative('pool.one_hot_scale', pool.one_hot_scale)
    errors.positive('pool.random_init_std', pool.random_init_std)
    lr = pool.lr_multiplier
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
      errors.add('pool.lr_multiplier', lr, 'a finite number > 0: the mixing logits\' learning rate relative to '
                 'the schedule (1.0: the same as every other parameter)')
    reach = pool.target_reach
    if isinstance(reach, bool) or not isinstance(reach, (int, float)) or not math.isfinite(reach) or reach < 0:
      errors.add('pool.target_reach', reach, 'a finite number >= 0 (0: off; R > 0: the logits\' learning-rate '
                 'multiplier is set so that their summed learning rates over the run are R)')
    elif reach and lr != 1.0:
      errors.add('pool.target_reach', reach, f'0 when pool.lr_multiplier is set (got {lr!r}): set one of them')


MIXING_SCHEMES: dict[str, type[Mixing]] = {'learned': LearnedMixing, 'fixed': FixedMixing}


def is_learned(mixing: Any) -> bool:
  """Whether pool.mixing names a scheme with trainable mixing logits."""
  return mixing in MIXING_SCHEMES and MIXING_SCHEMES[mixing].learned


@register('pool', moe_only=True)
def check_mixing(c: ml_collections.ConfigDict, problems: Problems) -> None:
  """pool.mixing, every scheme's own keys, the chosen scheme's rules and the mixing-entropy regulariser (a
  registered check, config/checks.py)."""
  pool = c.pool
  mixing_ok = problems.one_of('pool.mixing', pool.mixing, tuple(MIXING_SCHEMES))
  for scheme in MIXING_SCHEMES.values():
    scheme.check_keys(pool, problems)
  if mixing_ok:
    MIXING_SCHEMES[pool.mixing].check(pool, problems.num_moe, problems)
  coef = pool.entropy_coef
  if isinstance(coef, bool) or not isinstance(coef, (int, float)) or coef != coef or abs(coef) == float('inf'):
    problems.add('pool.entropy_coef', coef, 'must be a finite number (> 0: towards one pool entry per layer, < 0: '
                 'towards uniform mixing, 0: off)')
  elif coef and mixing_ok and not is_learned(pool.mixing):
    problems.add('pool.entropy_coef', coef, f"needs pool.mixing='learned' (got {pool.mixing!r}: fixed one-hot "
                 'mixing has no mixing logits to regularise); use 0.0')
  elif coef and isinstance(pool.size, int) and not isinstance(pool.size, bool) and pool.size < 2:
    problems.add('pool.entropy_coef', coef, f'needs pool.size >= 2 (got {pool.size}: the mixture over one entry '
                 'has zero entropy); use 0.0')


def mixing_for(pool: Any) -> Mixing:
  """The scheme of a pool section (config.pool or config/sections.PoolSection), by pool.mixing."""
  if pool.mixing not in MIXING_SCHEMES:
    raise ValueError(f'pool.mixing={pool.mixing!r}: must be one of {", ".join(map(repr, MIXING_SCHEMES))}')
  return MIXING_SCHEMES[pool.mixing].from_pool(pool)
