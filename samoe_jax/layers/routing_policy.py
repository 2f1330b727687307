"""RoutingPolicy: the routing options of the moe config section (docs/methods/routing.md, §6; docs/methods/routing.md), as
one frozen value that ModelSpec carries and make_moe_ffn passes to every MoeFFN.

  moe.routing          'token_choice' (default) | 'expert_choice' (Zhou et al. 2022; not causal) | 'hash' (Roller
                       et al. 2021; causal, no router)
  moe.gate             'softmax' (default) | 'topk_softmax' | 'uniform'
  moe.gate_renorm      'auto' (default) | 'none' | 'before_drop' | 'after_drop'
  moe.second_policy    'all' (default) | 'sampling' | 'random'        (training only)
  moe.noise            'none' (default) | 'jitter' | 'gumbel' | 'gaussian'   (training only); moe.noise_eps 0.01
  moe.capacity_formula 'deepspeed' (default) | 'switch' | 'fairseq' | 'none'   (layers/capacity.py)
  moe.router_bias      False (default); moe.router_trainable True (default; False: frozen random router)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from samoe_jax.layers.capacity import CAPACITY_FORMULAS
from samoe_jax.layers.router_noise import NOISE_KINDS
from samoe_jax.layers.routing import CAUSAL_PRIORITIES, GATE_RENORMS, GATES, SECOND_POLICIES, SLOT_PRIORITIES

ROUTING_KINDS = ('token_choice', 'expert_choice', 'hash')
CAUSAL_ROUTING_KINDS = ('token_choice', 'hash')


@dataclasses.dataclass(frozen=True)
class RoutingPolicy:
  """The routing options (see the module docstring); the defaults are the standard top-k MoE."""
  routing_kind: str = 'token_choice'
  gate: str = 'softmax'
  gate_renorm: str = 'auto'
  second_policy: str = 'all'
  noise: str = 'none'
  noise_eps: float = 0.01
  capacity_formula: str = 'deepspeed'
  router_bias: bool = False
  router_trainable: bool = True

  @classmethod
  def from_moe_section(cls, moe: ml_collections.ConfigDict) -> 'RoutingPolicy':
    d = cls()
    return cls(routing_kind=moe.get('routing', d.routing_kind), gate=moe.get('gate', d.gate),
               gate_renorm=moe.get('gate_renorm', d.gate_renorm),
               second_policy=moe.get('second_policy', d.second_policy), noise=moe.get('noise', d.noise),
               noise_eps=float(moe.get('noise_eps', d.noise_eps)),
               capacity_formula=moe.get('capacity_formula', d.capacity_formula),
               router_bias=bool(moe.get('router_bias', d.router_bias)),
               router_trainable=bool(moe.get('router_trainable', d.router_trainable)))

  def moe_kwargs(self) -> dict[str, Any]:
    """Keyword arguments of MoeFFN."""
    return dataclasses.asdict(self)


def needs_routing_rng(policy: RoutingPolicy, slot_priority: str) -> bool:
  """Whether training draws random numbers for routing (the 'routing' rng stream)."""
  if policy.routing_kind == 'hash':
    return False
  if policy.noise != 'none':
    return True
  return policy.routing_kind == 'token_choice' and (policy.second_policy != 'all' or slot_priority == 'random')


def is_causal(policy: RoutingPolicy, slot_priority: str) -> bool:
  """Whether a token's routing depends only on itself and earlier tokens (decoder-safe)."""
  if policy.routing_kind == 'hash':
    return True
  return policy.routing_kind in CAUSAL_ROUTING_KINDS and slot_priority in CAUSAL_PRIORITIES


__all__ = ['RoutingPolicy', 'ROUTING_KINDS', 'GATES', 'GATE_RENORMS', 'SECOND_POLICIES', 'SLOT_PRIORITIES',
           'NOISE_KINDS', 'CAPACITY_FORMULAS', 'needs_routing_rng', 'is_causal']


def check_routing_config(c: ml_collections.ConfigDict, errors: Any) -> None:
  """Validates the routing keys of config.moe (called by config/validate.py for MoE models); `errors` is
  validate's collector (add / one_of / in_range)."""
  moe = c.moe
  kind = moe.get('routing', 'token_choice')
  errors.one_of('moe.routing', kind, ROUTING_KINDS)
  errors.one_of('moe.gate', moe.get('gate', 'softmax'), GATES)
  errors.one_of('moe.gate_renorm', moe.get('gate_renorm', 'auto'), GATE_RENORMS)
  errors.one_of('moe.second_policy', moe.get('second_policy', 'all'), SECOND_POLICIES)
  errors.one_of('moe.noise', moe.get('noise', 'none'), NOISE_KINDS)
  errors.one_of('moe.capacity_formula', moe.get('capacity_formula', 'deepspeed'), CAPACITY_FORMULAS)
  eps = moe.get('noise_eps', 0.01)
  if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 < eps < 1.0:
    errors.add('moe.noise_eps', eps, 'a number in (0, 1) (jitter multiplies the router input by U[1-eps, 1+eps])')
  for key, default in (('router_bias', False), ('router_trainable', True)):
    if not isinstance(moe.get(key, default), bool):
      errors.add(f'moe.{key}', moe.get(key, default), 'True or False')
  shared = bool(c.pool.get('share_router', False))
  if shared and (moe.get('router_bias', False) or not moe.get('router_trainable', True)):
    errors.add('pool.share_router', True, 'False when moe.router_bias=True or moe.router_trainable=False (the '
               "shared WideNet router has no bias and is always trained)")
  if kind == 'hash':
    if moe.get('top_k') != 1:
      errors.add('moe.top_k', moe.get('top_k'), "1 with moe.routing='hash' (Hash Layers send a token to one expert)")
    if shared:
      errors.add('pool.share_router', True, "False with moe.routing='hash' (hash routing has no router)")
  if kind != 'token_choice':
    for key, default in (('second_policy', 'all'), ('gate', 'softmax'), ('gate_renorm', 'auto')):
      if moe.get(key, default) != default:
        errors.add(f'moe.{key}', moe.get(key, default), f"{default!r} with moe.routing={kind!r} (it applies to "
                   'token-choice routing only)')
    if moe.get('slot_priority', 'position') != 'position':
      errors.add('moe.slot_priority', moe.get('slot_priority'), f"'position' with moe.routing={kind!r}")
  if kind == 'hash' and moe.get('noise', 'none') != 'none':
    errors.add('moe.noise', moe.get('noise'), "'none' with moe.routing='hash' (there is no router)")


def describe_policy(moe: ml_collections.ConfigDict) -> str | None:
  """One line naming the non-default routing options (None for the standard top-k MoE), for `describe`."""
  policy = RoutingPolicy.from_moe_section(moe)
  default = RoutingPolicy()
  parts = [f'{f.name}={getattr(policy, f.name)!r}' for f in dataclasses.fields(policy)
           if getattr(policy, f.name) != getattr(default, f.name)]
  priority = moe.get('slot_priority', 'position')
  if priority != 'position':
    parts.append(f'slot_priority={priority!r}')
  if not parts:
    return None
  causal = 'causal' if is_causal(policy, priority) else 'NOT causal: no evaluation routing / decoding'
  return ', '.join(parts) + f' ({causal})'
