"""MomentumSMoE and AdamSMoE: a momentum state threaded across the MoE layers of one forward pass.

Teo & Nguyen, "MomentumSMoE: Integrating Momentum into Sparse Mixture of Experts", NeurIPS 2024, arXiv 2410.14574
(docs/methods/momentum.md). Einsum letters: B batch, L length, D width.

A stack of residual MoE updates x_{l+1} = x_l + f_l(x_l) reads as gradient descent with the MoE output as the
(negative) gradient; the paper replaces it by heavy-ball momentum or Adam carried from one MoE layer to the next.
Here f_l = Dropout(MoE_l(LN(x_l))) is the l-th MoE block's FFN branch of this repository's pre-LN decoder (residual
dropout applied as before, so the state accumulates the dropped-out outputs, as in the official code):

  heavy ball ('heavy_ball'):   p_l = mu p_{l-1} + gamma f_l                       x_{l+1} = x_l + p_l
  Adam ('adam'):               m_l = b1 m_{l-1} + (1 - b1) f_l
                               v_l = b2 v_{l-1} + (1 - b2) f_l^2
                               x_{l+1} = x_l + gamma m_l / sqrt(v_l + eps)

with p_0 = m_0 = v_0 = 0, reset at the start of every forward pass. The paper writes x_{l+1} = x_l - p_l (descent
along the gradient f); the minus sign is absorbed by the learnable experts (f -> -f), so the plus sign keeps the
block's usual residual form and mu = 0, gamma = 1 is exactly the plain MoE block. No bias correction (as in the
paper and the code). Dense FFN blocks are untouched and leave the state as it is.

moe.momentum_smoe.adam_layers says where Adam is used:
  'first'  the official code (`CustomizedMoEPositionwiseFFAdam`, `layerth < 1`): Adam in the first MoE layer, which
           also advances the heavy-ball state (p_1 = gamma f_1); every later MoE layer is a heavy-ball layer on p
           (m, v are then carried unchanged).
  'all'    the paper's formula in every MoE layer (no heavy-ball state at all).

The state is per position (elementwise over [B, L, D]), so a token's state depends only on its own position's
MoE outputs: the model stays causal, and a KV-cache decoding step threads the state of its one position through
the layers without any new cache. It is kept in float32 (like the router) whatever the compute dtype; the step
added to the residual stream is cast to the stream's dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from samoe_jax.config.checks import Problems, register
from samoe_jax.config.sections import MoeSection

KINDS = ('none', 'heavy_ball', 'adam')
ADAM_LAYERS = ('first', 'all')


@register('moe')
def check_momentum(c: Any, problems: Problems) -> None:
  """The keys of config.moe.momentum_smoe (a registered check, config/checks.py); the coefficients only when
  its kind is not 'none'."""
  mo = c.moe.momentum_smoe
  kind = mo.kind
  if not problems.one_of('moe.momentum_smoe.kind', kind, KINDS) or kind == 'none':
    return
  if problems.moe_layers is not None and not problems.moe_layers:
    problems.add('moe.momentum_smoe.kind', kind, "needs MoE layers (the state is carried across them); this "
                 "model.layer_plan has none: use moe.momentum_smoe.kind='none' or a layer plan with MoE blocks")
  problems.in_range('moe.momentum_smoe.mu', mo.mu, 0.0, 1.0, hi_open=True)
  problems.positive('moe.momentum_smoe.gamma', mo.gamma)
  if kind == 'adam':
    problems.in_range('moe.momentum_smoe.beta1', mo.beta1, 0.0, 1.0, hi_open=True)
    problems.in_range('moe.momentum_smoe.beta2', mo.beta2, 0.0, 1.0, hi_open=True)
    problems.positive('moe.momentum_smoe.eps', mo.eps)
    problems.one_of('moe.momentum_smoe.adam_layers', mo.adam_layers, ADAM_LAYERS)


@dataclasses.dataclass(frozen=True)
class MomentumConfig:
  """config.moe.momentum_smoe, field by field (config/defaults.py); kind 'none' turns the feature off."""
  kind: str            # 'none' | 'heavy_ball' | 'adam'
  mu: float
  gamma: float
  beta1: float
  beta2: float
  eps: float
  adam_layers: str     # 'first' | 'all'

  @classmethod
  def off(cls) -> 'MomentumConfig':
    """The defaults (config/defaults.py): momentum off."""
    return cls.from_moe_section(MoeSection.defaults())

  @classmethod
  def from_moe_section(cls, moe: Any) -> 'MomentumConfig':
    """From moe.momentum_smoe of a config/sections.MoeSection or of a config's moe section (its old flat keys
    count, config/aliases.py)."""
    section = moe if isinstance(moe, MoeSection) else MoeSection.of(ml_collections.ConfigDict({'moe': moe}))
    return cls(**section.momentum_smoe)

  @property
  def enabled(self) -> bool:
    return self.kind != 'none'


@dataclasses.dataclass(frozen=True)
class LayerRule:
  """How one MoE layer uses the state (static; a Block attribute).

  step: 'heavy_ball' adds p_l to the residual stream, 'adam' adds gamma m_l / sqrt(v_l + eps).
  advance_heavy_ball / advance_adam: which parts of the state this layer updates.
  """
  step: str
  advance_heavy_ball: bool
  advance_adam: bool
  mu: float
  gamma: float
  beta1: float
  beta2: float
  eps: float


class MomentumState(NamedTuple):
  """float32 [B, L, D] arrays; None where the configuration keeps no such state."""
  p_BLD: jax.Array | None
  m_BLD: jax.Array | None
  v_BLD: jax.Array | None


# -------------------------------------------------------------------------------------------- pure updates
def heavy_ball_update(p_BLD: jax.Array, f_BLD: jax.Array, mu: float, gamma: float) -> jax.Array:
  """p_l = mu p_{l-1} + gamma f_l (docs/methods/momentum.md)."""
  return mu * p_BLD + gamma * f_BLD


def adam_moments(m_BLD: jax.Array, v_BLD: jax.Array, f_BLD: jax.Array, beta1: float,
                 beta2: float) -> tuple[jax.Array, jax.Array]:
  """m_l = b1 m_{l-1} + (1 - b1) f_l,  v_l = b2 v_{l-1} + (1 - b2) f_l^2 (docs/methods/momentum.md; no bias correction)."""
  return beta1 * m_BLD + (1.0 - beta1) * f_BLD, beta2 * v_BLD + (1.0 - beta2) * jnp.square(f_BLD)


def adam_step(m_BLD: jax.Array, v_BLD: jax.Array, gamma: float, eps: float) -> jax.Array:
  """gamma m_l / sqrt(v_l + eps): what an Adam layer adds to the residual stream (eps inside the root, as in the
  official code)."""
  return gamma * m_BLD / jnp.sqrt(v_BLD + eps)


# ------------------------------------------------------------------------------------------ the whole model
def layer_rules(config: MomentumConfig, num_moe: int) -> tuple[LayerRule, ...]:
  """One rule per MoE layer, in MoE-layer order (empty when the feature is off)."""
  if not config.enabled:
    return ()
  coefficients = dict(mu=config.mu, gamma=config.gamma, beta1=config.beta1, beta2=config.beta2, eps=config.eps)
  heavy = LayerRule('heavy_ball', advance_heavy_ball=True, advance_adam=False, **coefficients)
  if config.kind == 'heavy_ball':
    return (heavy,) * num_moe
  if config.adam_layers == 'all':
    return (LayerRule('adam', advance_heavy_ball=False, advance_adam=True, **coefficients),) * num_moe
  first = LayerRule('adam', advance_heavy_ball=True, advance_adam=True, **coefficients)
  return (first,) + (heavy,) * (num_moe - 1)


def init_state(config: MomentumConfig, num_moe: int, shape_BLD: tuple[int, ...]) -> MomentumState | None:
  """Zeros for the parts the layers use (None when the feature is off): p_0 = m_0 = v_0 = 0."""
  rules = layer_rules(config, num_moe)
  if not rules:
    return None
  zeros = lambda used: jnp.zeros(shape_BLD, jnp.float32) if used else None
  adam = any(r.advance_adam for r in rules)
  return MomentumState(zeros(any(r.advance_heavy_ball for r in rules)), zeros(adam), zeros(adam))


def apply_rule(rule: LayerRule, state: MomentumState, f_BLD: jax.Array) -> tuple[jax.Array, MomentumState]:
  """One MoE layer: its FFN output f_BLD (after residual dropout) -> (step to add to x, float32; new state)."""
  f_BLD = f_BLD.astype(jnp.float32)
  p_BLD, m_BLD, v_BLD = state
  if rule.advance_heavy_ball:
    p_BLD = heavy_ball_update(p_BLD, f_BLD, rule.mu, rule.gamma)
  if rule.advance_adam:
    m_BLD, v_BLD = adam_moments(m_BLD, v_BLD, f_BLD, rule.beta1, rule.beta2)
  step_BLD = p_BLD if rule.step == 'heavy_ball' else adam_step(m_BLD, v_BLD, rule.gamma, rule.eps)
  return step_BLD, MomentumState(p_BLD, m_BLD, v_BLD)


def state_vectors(config: MomentumConfig, num_moe: int) -> int:
  """How many [D] float32 vectors of state a token carries through the layers: p (heavy ball), m and v (Adam)."""
  rules = layer_rules(config, num_moe)
  return any(r.advance_heavy_ball for r in rules) + 2 * any(r.advance_adam for r in rules)


def elementwise_flops_per_token(config: MomentumConfig, num_moe: int, d_model: int) -> int:
  """Elementwise FLOPs per token of the state updates, forward (informational: accounting counts matmuls only):
  heavy ball 3 D (two scalings, one add); Adam moments 7 D (m: 3, v: square + 3) and step 4 D (add eps, square root,
  divide, multiply)."""
  total = 0
  for rule in layer_rules(config, num_moe):
    total += 3 * d_model * rule.advance_heavy_ball + 7 * d_model * rule.advance_adam
    total += 4 * d_model * (rule.step == 'adam')
  return total


def describe_momentum(config: MomentumConfig) -> str:
  """One line for describe: the update rule and its coefficients."""
  if not config.enabled:
    return 'none'
  heavy = f'heavy-ball p = {config.mu:g} p + {config.gamma:g} f, x += p'
  if config.kind == 'heavy_ball':
    return f'MomentumSMoE: {heavy}'
  adam = (f'Adam m, v (b1 {config.beta1:g}, b2 {config.beta2:g}), x += {config.gamma:g} m / sqrt(v + '
          f'{config.eps:g})')
  if config.adam_layers == 'all':
    return f'AdamSMoE (every MoE layer): {adam}'
  return f'AdamSMoE (official code: Adam in the first MoE layer, then {heavy})'
