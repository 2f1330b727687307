"""AdamW with linear warm-up + cosine decay, global-norm clipping, and weight decay on matrices only.

Which parameters decay is decided from their logical axes (see samoe_jax/sharding/rules.py), never from their
names: a parameter is a weight matrix when it touches the residual stream ('embed') and has at least one more
feature axis. Stacking axes ('pool', 'expert', 'moe_layer', 'layers') index copies of a parameter and do not
count as feature axes, so the pool's biases [P, E, F] stay undecayed like a dense bias [F]; LayerNorm scales
and biases ('embed',), attention biases (None, 'heads', 'kv') and SaMoE mixing logits ('mixing' axis: decaying
them would pull every layer towards uniform mixing) are never decayed. Without logical axes, rank >= 2 decides.

train.moment_dtype='bfloat16' stores Adam's mu and nu in bfloat16 (half their memory): each update computes in
float32 from the stored moments and rounds the new moments back (`stored_in`); 'float32' is optax.adamw itself.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax

from samoe_jax.config.checks import Problems, register

STACKING_AXES = frozenset({'pool', 'expert', 'moe_layer', 'layers'})
NO_DECAY_AXES = frozenset({'mixing', 'frozen_router'})
# Parameters with one of these logical axes are never updated (moe.router_trainable=False: a frozen random router,
# SMoE-Dropout): their updates are set to zero after AdamW, so they stay bit-exactly at their initial values.
FROZEN_AXES = frozenset({'frozen_router'})
MOMENT_DTYPES = ('float32', 'bfloat16')
Schedule = Callable[[jax.Array | int], jax.Array]


@register('train')
def check_moment_dtype(c: ml_collections.ConfigDict, problems: Problems) -> None:
  """train.moment_dtype (a registered check, config/checks.py)."""
  problems.one_of('train.moment_dtype', c.train.moment_dtype, MOMENT_DTYPES)


def is_decayed(names: tuple[str | None, ...] | None, ndim: int) -> bool:
  """Whether a parameter with these logical axis names (None: unknown) gets weight decay."""
  if names is None:
    return ndim >= 2
  if NO_DECAY_AXES.intersection(n for n in names if n):
    return False
  features = [n for n in names if n not in STACKING_AXES]
  return 'embed' in features and len(features) >= 2


def decay_mask(params: Any, logical_axes: Any | None = None) -> Any:
  """Pytree of bools, same structure as params (arrays or ShapeDtypeStructs): True where weight decay applies.

  Args:
    params: the parameters or their abstract shapes.
    logical_axes: optional tree of logical PartitionSpecs (model.param_logical_axes()).
  """
  if logical_axes is None:
    return jax.tree.map(lambda p: is_decayed(None, len(p.shape)), params)
  return jax.tree.map(lambda p, s: is_decayed(tuple(s), len(p.shape)), params, logical_axes)


def frozen_mask(params: Any, logical_axes: Any | None = None) -> Any:
  """Pytree of bools, same structure as params: True for parameters that must never change (FROZEN_AXES)."""
  if logical_axes is None:
    return jax.tree.map(lambda p: False, params)
  return jax.tree.map(lambda p, s: bool(FROZEN_AXES.intersection(n for n in tuple(s) if n)), params,
                      logical_axes)


def make_schedule(train_cfg: ml_collections.ConfigDict) -> Schedule:
  """Learning rate of the update with 0-based index `count` (the one that produces step count + 1).

  Linear warm-up reaches learning_rate at step warmup_steps; cosine decay then reaches
  learning_rate * min_lr_ratio at step decay_steps (train.decay_steps, or train.steps when 0) and stays there.
  """
  peak = float(train_cfg.learning_rate)
  floor = peak * float(train_cfg.min_lr_ratio)
  warmup = int(train_cfg.warmup_steps)
  total = int(train_cfg.decay_steps or train_cfg.steps)

  def schedule(count):
    step = jnp.asarray(count, jnp.float32) + 1.0
    warm = peak * step / max(warmup, 1)
    progress = jnp.clip((step - warmup) / max(total - warmup, 1), 0.0, 1.0)
    cosine = floor + (peak - floor) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
    return jnp.where(step <= warmup, warm, cosine)

  return schedule


def mixing_reach(train_cfg: ml_collections.ConfigDict, lr_multiplier: float, temperature: float,
                 pool_size: int) -> dict[str, float]:
  """How far AdamW can move SaMoE's mixing logits over the run (docs/model.md, "Mixing that learns").

  Adam's update of a parameter is at most about its learning rate per step, so a logit moves at most about
  R = lr_multiplier * sum_t lr_t over train.steps steps. One logit up by R and the P - 1 others down by R give the
  largest reachable weight 1 / (1 + (P - 1) exp(-2 R / tau)) from the uniform init: a bound, not a prediction.
  """
  schedule = make_schedule(train_cfg)
  reach = float(lr_multiplier) * float(jnp.sum(schedule(jnp.arange(int(train_cfg.steps)))))
  bound = 1.0 / (1.0 + (pool_size - 1) * math.exp(-2.0 * reach / temperature)) if pool_size > 1 else 1.0
  return {'reach': reach, 'max_weight_bound': bound}


def resolved_lr_multipliers(mixing: Any, train_cfg: ml_collections.ConfigDict, pool_size: int) -> dict[str, float]:
  """The optimizer's {logical axis: multiplier} for a mixing scheme (layers/mixing.py): its own, or with
  pool.target_reach = R > 0 the multiplier R / (the reach at 1x) that gives the logits reach R in this run."""
  if not mixing.learned or not mixing.target_reach:
    return dict(mixing.lr_multipliers)
  base = mixing_reach(train_cfg, 1.0, mixing.temperature, pool_size)['reach']
  return {'mixing': mixing.target_reach / base} if base > 0 else {}


def _cast_floats(tree: Any, dtype: Any) -> Any:
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def stored_in(inner: optax.GradientTransformation, dtype: Any) -> optax.GradientTransformation:
  """`inner` with its floating-point state stored in `dtype`: updated in float32, rounded back after each update.

  The state keeps inner's structure (Adam's ScaleByAdamState), so optax.tree_map_params, the state shardings
  and checkpoints see the same tree as without the cast.
  """
  def init(params):
    return _cast_floats(inner.init(params), dtype)

  def update(updates, state, params=None):
    updates, new_state = inner.update(updates, _cast_floats(state, jnp.float32), params)
    return updates, _cast_floats(new_state, dtype)

  return optax.GradientTransformation(init, update)


def _adamw(train_cfg: ml_collections.ConfigDict, schedule: Schedule, mask: Any) -> optax.GradientTransformation:
  """optax.adamw, or the same chain with its moments stored in train.moment_dtype."""
  if train_cfg.get('moment_dtype', 'float32') == 'float32':   # a bare train section (tests) has no key
    return optax.adamw(learning_rate=schedule, b1=train_cfg.b1, b2=train_cfg.b2, eps=1e-8,
                       weight_decay=train_cfg.weight_decay, mask=mask)
  adam = stored_in(optax.scale_by_adam(b1=train_cfg.b1, b2=train_cfg.b2, eps=1e-8), jnp.dtype(train_cfg.moment_dtype))
  return optax.chain(adam, optax.add_decayed_weights(train_cfg.weight_decay, mask),
                     optax.scale_by_learning_rate(schedule))


def axis_mask(params: Any, logical_axes: Any | None, axis: str) -> Any:
  """Pytree of bools, same structure as params: True for parameters with logical axis `axis`."""
  if logical_axes is None:
    return jax.tree.map(lambda p: False, params)
  return jax.tree.map(lambda p, s: axis in tuple(s), params, logical_axes)


def make_optimizer(train_cfg: ml_collections.ConfigDict, params: Any, logical_axes: Any | None = None,
                   lr_multipliers: Mapping[str, float] | None = None) -> tuple[optax.GradientTransformation, Schedule]:
  """(optimizer, schedule): clip_by_global_norm(grad_clip) then AdamW with the decay mask of `decay_mask`, its
  moments in train.moment_dtype.

  Args:
    train_cfg: config.train.
    params: parameters or abstract shapes (only their structure and ranks are used).
    logical_axes: model.param_logical_axes(); decides which parameters decay.
    lr_multipliers: {logical axis: m}: the parameters with that axis learn at m x the schedule (e.g. SaMoE's
      mixing logits, pool.lr_multiplier; layers/mixing.py). Their AdamW update is scaled by m (optax.masked
      over the partition of the parameters by axis): exactly a learning rate of m x lr, as the update is linear
      in the learning rate and these parameters carry no weight decay. Nothing is added to the chain for m = 1,
      so the optimizer state of runs without a multiplier is unchanged.
  """
  schedule = make_schedule(train_cfg)
  clip = optax.clip_by_global_norm(train_cfg.grad_clip) if train_cfg.grad_clip > 0 else optax.identity()
  chain = [clip, _adamw(train_cfg, schedule, decay_mask(params, logical_axes))]
  frozen = frozen_mask(params, logical_axes)
  if any(jax.tree.leaves(frozen)):   # nothing is added for models without frozen parameters
    chain.append(optax.masked(optax.set_to_zero(), frozen))
  for axis, multiplier in sorted((lr_multipliers or {}).items()):
    mask = axis_mask(params, logical_axes, axis)
    if multiplier != 1.0 and any(jax.tree.leaves(mask)):
      chain.append(optax.masked(optax.scale(float(multiplier)), mask))
  return optax.chain(*chain), schedule
