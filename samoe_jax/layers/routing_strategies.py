"""Routing strategies: token choice, expert choice and hash routing as small objects with one hook each.

Einsum letters: G routing groups, S tokens per group, D width, E experts, K choices per token.

The MoE layer (layers/moe.py) owns grouping, capacity, dispatch and the experts; what differs between routing
methods lives here. A strategy is a frozen dataclass (a static MoeFFN field) whose fields are the config keys of
the moe section it reads (config/defaults.py), so `strategy_for(config.moe)` builds it with no renaming:

  RoutingStrategy   the shared work: the router (own, frozen, biased, or WideNet's shared kernel), 'jitter'
                    noise on the router input, the 'routing' rng, the z-loss and the Switch balancing loss.
    TokenChoice     top-k per token with capacity, gates, second-expert policies, noise and slot priorities
                    (GShard / Switch / fairseq / DeepSpeed; layers/token_choice.py). Graph routing (Similarity- /
                    Attention-Aware SMoE, layers/graph_routing.py) is a probability transform handed to it.
    ExpertChoice    every expert takes its top-C tokens (Zhou et al. 2022, layers/expert_choice.py); NOT causal;
                    balanced by construction (no balancing loss).
    HashRouting     expert = hash of the token id (Roller et al. 2021, layers/hash_routing.py); no router, no
                    auxiliary losses; needs the token ids.

A new routing method is a new subclass that overrides `select` (or `route` when it has no router) and is added to
STRATEGIES; docs/architecture.md shows where it plugs in.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from samoe_jax.config.sections import MoeSection
from samoe_jax.layers import expert_choice, hash_routing, initializers, router_noise
from samoe_jax.layers import token_choice

ProbsTransform = Callable[[jax.Array], jax.Array]   # logits_GSE -> p~_GSE (graph routing)


class Router(nn.Module):
  """Router logits in float32: x_GSD -> logits_GSE (no bias by default, as in fairseq's Top2Gate).

  use_bias (moe.router_bias): + b_E, as SMoE-Dropout's Linear router. trainable=False (moe.router_trainable):
  a frozen random router (SMoE-Dropout --freeze_gate): stop_gradient in the forward pass, and its parameters
  carry the logical axis 'frozen_router' instead of 'router', which the optimizer maps to "no update"
  (training/optimizer.py), so they stay exactly at their initial values.
  """
  num_experts: int
  init_std: float
  use_bias: bool = False
  trainable: bool = True

  @nn.compact
  def __call__(self, x_GSD: jax.Array) -> jax.Array:
    axis = 'router' if self.trainable else 'frozen_router'
    w_DE = self.param('kernel', initializers.normal(self.init_std, ('embed', axis)),
                      (x_GSD.shape[-1], self.num_experts))
    if not self.trainable:
      w_DE = jax.lax.stop_gradient(w_DE)
    logits_GSE = jnp.einsum('gsd,de->gse', x_GSD.astype(jnp.float32), w_DE)
    if self.use_bias:
      b_E = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros_init(), (axis,)),
                       (self.num_experts,))
      logits_GSE = logits_GSE + (b_E if self.trainable else jax.lax.stop_gradient(b_E))
    return logits_GSE


@dataclasses.dataclass(frozen=True)
class RouteInputs:
  """One routing call's tokens: x_GSD, mask_GS (real tokens), the capacity C, and optionally
  counts_GE (assignments the groups already made: decoding continues a run), tokens_GS (token ids, hash routing),
  active_k (SMoE-Dropout's traced k) and probs (graph routing's logits -> p~ transform)."""
  x_GSD: jax.Array
  mask_GS: jax.Array
  capacity: int
  counts_GE: jax.Array | None = None
  tokens_GS: jax.Array | None = None
  active_k: jax.Array | None = None
  probs: ProbsTransform | None = None


@dataclasses.dataclass(frozen=True)
class RoutingStrategy:
  """Base strategy: a learned router, optional 'jitter' input noise, z-loss and Switch balancing loss.

  Fields are moe-section keys: num_experts (this layer's E), top_k, noise, noise_eps, router_bias,
  router_trainable; they have no defaults of their own (from_section / with_defaults read config/defaults.py).
  Random choices act only in training and draw from the 'routing' rng stream.
  """
  num_experts: int
  top_k: int
  noise: str
  noise_eps: float
  router_bias: bool
  router_trainable: bool

  name: ClassVar[str] = ''
  has_router: ClassVar[bool] = True       # False: no router parameters (hash routing)
  needs_tokens: ClassVar[bool] = False    # True: route() reads RouteInputs.tokens_GS
  balanced: ClassVar[bool] = False        # True: balanced by construction, lb_loss = 0
  fixed_capacity: ClassVar[bool] = False  # True: the capacity is the routing itself (no dropless dispatch)

  @classmethod
  def from_section(cls, moe: Any, num_experts: int | None = None) -> 'RoutingStrategy':
    """The strategy of a moe config section (ConfigDict or config/sections.MoeSection): its fields by key."""
    values = {f.name: getattr(moe, f.name) for f in dataclasses.fields(cls) if f.name != 'num_experts'}
    return cls(num_experts=num_experts or moe.num_experts, **values)

  @classmethod
  def with_defaults(cls, num_experts: int, top_k: int, **keys: Any) -> 'RoutingStrategy':
    """This strategy with E experts, top_k, `keys` and every other moe key at its default (config/defaults.py)."""
    return cls.from_section(dataclasses.replace(MoeSection.defaults(), top_k=top_k, **keys), num_experts)

  # ------------------------------------------------------------------------------------------ properties
  @property
  def causal(self) -> bool:
    """Whether a token's routing depends only on itself and earlier tokens (decoder-safe)."""
    return self.noncausal_setting is None

  @property
  def noncausal_setting(self) -> str | None:
    """The config setting that makes routing non-causal, e.g. "moe.slot_priority='choice'" (None: causal)."""
    return None

  @property
  def noncausal_reason(self) -> str | None:
    """What causal routing would need, naming the config key (None: causal)."""
    return None

  def draws_rng(self, train: bool) -> bool:
    """Whether routing draws from the 'routing' rng stream (training only): 'jitter' on the router input, or the
    `select` hook's own randomness."""
    return train and (self.noise == 'jitter' or self._select_draws(train))

  def for_evaluation(self, top_k: int, gate: str) -> 'RoutingStrategy':
    """The strategy of a train=False pass with moe.eval_top_k / moe.eval_gate (0 / '': unchanged)."""
    del gate
    return dataclasses.replace(self, top_k=top_k or self.top_k)

  def with_experts(self, num_experts: int) -> 'RoutingStrategy':
    return dataclasses.replace(self, num_experts=num_experts)

  # ------------------------------------------------------------------------------------------ routing
  def make_router(self, init_std: float) -> Router | None:
    """The layer's own router module (created inside MoeFFN, so its parameters are `moe/router/*`)."""
    return Router(self.num_experts, init_std, self.router_bias, self.router_trainable, name='router')

  def route(self, module: nn.Module, router: Callable[[jax.Array], jax.Array] | None, inputs: RouteInputs,
            train: bool) -> token_choice.Routing:
    """Shared work, then the `select` hook: 'jitter' (DeepSpeed: x * U[1-eps, 1+eps]) on the router input,
    router logits, the 'routing' rng when the strategy draws one."""
    x_GSD = inputs.x_GSD
    if train and self.noise == 'jitter':
      x_GSD = router_noise.jitter(x_GSD, module.make_rng('routing'), self.noise_eps)
    logits_GSE = router(x_GSD)
    rng = module.make_rng('routing') if self._select_draws(train) else None
    return self.select(logits_GSE, inputs, train=train, rng=rng)

  def _select_draws(self, train: bool) -> bool:
    """Whether the `select` hook needs an rng (beyond 'jitter')."""
    return False

  def select(self, logits_GSE: jax.Array, inputs: RouteInputs, *, train: bool,
             rng: jax.Array | None) -> token_choice.Routing:
    """The hook every strategy with a router overrides: router logits -> Routing."""
    raise NotImplementedError(f'{type(self).__name__} must override select() (or route() without a router)')

  def aux_losses(self, routing: token_choice.Routing, mask_GS: jax.Array) -> dict[str, jax.Array]:
    """'lb_loss' (Switch; 0 when balanced by construction) and 'z_loss' (ST-MoE)."""
    lb = (jnp.zeros((), jnp.float32) if self.balanced else token_choice.load_balancing_loss(routing, mask_GS))
    return {'lb_loss': lb, 'z_loss': token_choice.router_z_loss(routing, mask_GS)}


@dataclasses.dataclass(frozen=True)
class TokenChoice(RoutingStrategy):
  """Top-k token choice with capacity (layers/token_choice.py has the formulas): gate, gate_renorm, second_policy
  (training), noise 'gumbel' / 'gaussian' (training) and slot_priority ('position' is the only causal one).

  Built, it holds its token_choice.RouteOptions for training and for evaluation (`route_options`), which checks
  the string options once: evaluation has second_policy 'all', no noise, and ranks 'random' priority by position.
  """
  gate: str
  gate_renorm: str
  second_policy: str
  slot_priority: str

  name: ClassVar[str] = 'token_choice'

  def __post_init__(self):
    noise = self.noise if self.noise in token_choice.ROUTE_NOISES else 'none'   # 'jitter' acts on the input
    train = token_choice.RouteOptions(self.top_k, self.slot_priority, self.gate, self.gate_renorm,
                                     self.second_policy, noise)
    evaluation = dataclasses.replace(train, second_policy='all', noise='none',
                                     priority='position' if self.slot_priority == 'random' else self.slot_priority)
    object.__setattr__(self, '_route_options', {True: train, False: evaluation})   # not a field (moe keys only)

  def route_options(self, train: bool) -> token_choice.RouteOptions:
    """The RouteOptions of a training (train=True) or evaluation pass."""
    return self._route_options[train]

  @property
  def noncausal_setting(self) -> str | None:
    return None if self.slot_priority in token_choice.CAUSAL_PRIORITIES else f'moe.slot_priority={self.slot_priority!r}'

  @property
  def noncausal_reason(self) -> str | None:
    return None if self.causal else f"needs moe.slot_priority='position' (causal), got {self.slot_priority!r}"

  def _select_draws(self, train: bool) -> bool:
    return self.route_options(train).draws_rng

  def for_evaluation(self, top_k: int, gate: str) -> 'TokenChoice':
    return dataclasses.replace(self, top_k=top_k or self.top_k, gate=gate or self.gate)

  def select(self, logits_GSE: jax.Array, inputs: RouteInputs, *, train: bool,
             rng: jax.Array | None) -> token_choice.Routing:
    return token_choice.route(
        logits_GSE, inputs.mask_GS, self.route_options(train), capacity=inputs.capacity,
        counts_GE=inputs.counts_GE, active_k=inputs.active_k,
        probs_GSE=inputs.probs(logits_GSE) if inputs.probs is not None else None, rng=rng)


@dataclasses.dataclass(frozen=True)
class ExpertChoice(RoutingStrategy):
  """Each expert picks its top-C tokens of the group by p (Zhou et al. 2022). NOT causal."""
  name: ClassVar[str] = 'expert_choice'
  balanced: ClassVar[bool] = True
  fixed_capacity: ClassVar[bool] = True

  @property
  def noncausal_setting(self) -> str | None:
    return "moe.routing='expert_choice'"

  @property
  def noncausal_reason(self) -> str | None:
    return "needs moe.routing 'token_choice' or 'hash', got 'expert_choice'"

  def select(self, logits_GSE: jax.Array, inputs: RouteInputs, *, train: bool,
             rng: jax.Array | None) -> token_choice.Routing:
    return expert_choice.expert_choice_route(logits_GSE, inputs.mask_GS, capacity=inputs.capacity)


@dataclasses.dataclass(frozen=True)
class HashRouting(RoutingStrategy):
  """One expert per token from a fixed hash of its id (Roller et al. 2021): no router, gate 1, causal
  'position' slots, zero auxiliary losses."""
  name: ClassVar[str] = 'hash'
  has_router: ClassVar[bool] = False
  needs_tokens: ClassVar[bool] = True
  balanced: ClassVar[bool] = True

  def draws_rng(self, train: bool) -> bool:
    return False

  def make_router(self, init_std: float) -> None:
    return None

  def route(self, module: nn.Module, router: Callable[[jax.Array], jax.Array] | None, inputs: RouteInputs,
            train: bool) -> token_choice.Routing:
    if inputs.tokens_GS is None:
      raise ValueError("MoeFFN: moe.routing='hash' needs the token ids (MoeCall.tokens_BL)")
    return hash_routing.hash_route(inputs.tokens_GS, inputs.mask_GS, num_experts=self.num_experts,
                                   capacity=inputs.capacity, counts_GE=inputs.counts_GE)

  def aux_losses(self, routing: token_choice.Routing, mask_GS: jax.Array) -> dict[str, jax.Array]:
    return {'lb_loss': jnp.zeros((), jnp.float32), 'z_loss': jnp.zeros((), jnp.float32)}


STRATEGIES: dict[str, type[RoutingStrategy]] = {cls.name: cls for cls in (TokenChoice, ExpertChoice, HashRouting)}
ROUTING_KINDS = tuple(STRATEGIES)


def strategy_for(moe: Any, num_experts: int | None = None) -> RoutingStrategy:
  """The routing strategy named by moe.routing, built from the section's keys."""
  if moe.routing not in STRATEGIES:
    raise ValueError(f'moe.routing={moe.routing!r} is not one of {ROUTING_KINDS}')
  return STRATEGIES[moe.routing].from_section(moe, num_experts)
