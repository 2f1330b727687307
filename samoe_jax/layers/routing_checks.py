"""The routing keys of the moe config section: their checks and their one-line description.

  moe.routing          'token_choice' (default) | 'expert_choice' (Zhou et al. 2022; not causal) | 'hash' (Roller
                       et al. 2021; causal, no router)
  moe.gate             'softmax' (default) | 'topk_softmax' | 'uniform'
  moe.gate_renorm      'auto' (default) | 'none' | 'before_drop' | 'after_drop'
  moe.second_policy    'all' (default) | 'sampling' | 'random'        (training only)
  moe.noise            'none' (default) | 'jitter' | 'gumbel' | 'gaussian'   (training only); moe.noise_eps 0.01
  moe.capacity_formula 'deepspeed' (default) | 'switch' | 'fairseq' | 'none'   (layers/capacity.py)
  moe.router_bias      False (default); moe.router_trainable True (default; False: frozen random router)

The strategies these keys build are in layers/routing_strategies.py; docs/methods/routing.md has the formulas.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from samoe_jax.config.checks import Problems, register
from samoe_jax.layers.capacity import CAPACITY_FORMULAS
from samoe_jax.layers.router_noise import NOISE_KINDS
from samoe_jax.layers.routing_strategies import ROUTING_KINDS, strategy_for
from samoe_jax.layers.token_choice import GATE_RENORMS, GATES, SECOND_POLICIES, SLOT_PRIORITIES

__all__ = ['ROUTING_KINDS', 'GATES', 'GATE_RENORMS', 'SECOND_POLICIES', 'SLOT_PRIORITIES', 'NOISE_KINDS',
           'CAPACITY_FORMULAS', 'check_routing_config', 'describe_policy']


@register('moe', moe_only=True)
def check_routing_config(c: ml_collections.ConfigDict, errors: Problems) -> None:
  """The routing keys of config.moe (a registered check, config/checks.py)."""
  moe = c.moe
  kind = moe.routing
  if 'slot_priority' in moe:
    errors.one_of('moe.slot_priority', moe.slot_priority, SLOT_PRIORITIES)
  errors.one_of('moe.routing', kind, ROUTING_KINDS)
  errors.one_of('moe.gate', moe.gate, GATES)
  errors.one_of('moe.gate_renorm', moe.gate_renorm, GATE_RENORMS)
  errors.one_of('moe.second_policy', moe.second_policy, SECOND_POLICIES)
  errors.one_of('moe.noise', moe.noise, NOISE_KINDS)
  errors.one_of('moe.capacity_formula', moe.capacity_formula, CAPACITY_FORMULAS)
  eps = moe.noise_eps
  if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 < eps < 1.0:
    errors.add('moe.noise_eps', eps, 'a number in (0, 1) (jitter multiplies the router input by U[1-eps, 1+eps])')
  for key, default in (('router_bias', False), ('router_trainable', True)):
    if not isinstance(moe.get(key, default), bool):
      errors.add(f'moe.{key}', moe.get(key, default), 'True or False')
  shared = bool(c.pool.share_router)
  if shared and (moe.router_bias or not moe.router_trainable):
    errors.add('pool.share_router', True, 'False when moe.router_bias=True or moe.router_trainable=False (the '
               "shared WideNet router has no bias and is always trained)")
  if kind == 'hash':
    if moe.top_k != 1:
      errors.add('moe.top_k', moe.top_k, "1 with moe.routing='hash' (Hash Layers send a token to one expert)")
    if shared:
      errors.add('pool.share_router', True, "False with moe.routing='hash' (hash routing has no router)")
  if kind != 'token_choice':
    for key, default in (('second_policy', 'all'), ('gate', 'softmax'), ('gate_renorm', 'auto')):
      if moe.get(key, default) != default:
        errors.add(f'moe.{key}', moe.get(key, default), f"{default!r} with moe.routing={kind!r} (it applies to "
                   'token-choice routing only)')
    if moe.slot_priority != 'position':
      errors.add('moe.slot_priority', moe.slot_priority, f"'position' with moe.routing={kind!r}")
  if kind == 'hash' and moe.noise != 'none':
    errors.add('moe.noise', moe.noise, "'none' with moe.routing='hash' (there is no router)")
  if kind == 'expert_choice' and moe.noise in ('gumbel', 'gaussian'):
    errors.add('moe.noise', moe.noise, "'none' or 'jitter' with moe.routing='expert_choice' (gumbel and "
               'gaussian noise perturb token-choice selection only)')


def describe_policy(moe: Any) -> str | None:
  """One line naming the non-default routing keys (None for the standard top-k MoE), for `describe`."""
  strategy = strategy_for(moe)
  default = type(strategy).with_defaults(strategy.num_experts, strategy.top_k)
  parts = [] if moe.routing == 'token_choice' else [f'routing={moe.routing!r}']
  parts += [f'{f.name}={getattr(strategy, f.name)!r}' for f in dataclasses.fields(strategy)
            if getattr(strategy, f.name) != getattr(default, f.name)]
  if moe.routing != 'token_choice' and moe.slot_priority != 'position':
    parts.append(f'slot_priority={moe.slot_priority!r}')
  if moe.capacity_formula != 'deepspeed':
    parts.append(f'capacity_formula={moe.capacity_formula!r}')
  if not parts:
    return None
  causal = 'causal' if strategy.causal else 'NOT causal: no evaluation routing / decoding'
  return ', '.join(parts) + f' ({causal})'
