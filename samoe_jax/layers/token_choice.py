"""Token-choice top-k routing with expert capacity (GShard / Switch / fairseq / DeepSpeed), as pure functions.

Einsum letters: G routing groups, S tokens per group, E experts, K choices per token, C capacity (slots per
expert per group). Full description with formulas and sources: docs/methods/routing.md.

Routing of one group (docs/methods/routing.md):
  p = softmax(router logits) (or probs_GSE given by the caller)   # float32 ("selective precision", Switch)
  e_1 = argmax p, e_2 = argmax of the rest, ...                   # top-k without replacement
    second_policy 'sampling': e_2.. = argmax over the remaining experts of h + Gumbel noise (GShard/fairseq)
    second_policy 'random':   choice k >= 2 is used only when 2 g_k > U(0, 1), g the renormalised gate (fairseq)
    noise 'gumbel': e_1.. use h + Gumbel noise (DeepSpeed RSample); 'gaussian': p = softmax(h + N(0, 1/E^2))
  active_k: choices with index >= active_k are not used (SMoE-Dropout's k schedule; a traced scalar)
  gates (moe.gate): 'softmax' p[e_k], renormalised per gate_renorm ('auto': top-1 raw, k >= 2 over the active
    choices before dropping; 'none'; 'before_drop'; 'after_drop': over the choices that got a slot);
    'topk_softmax' softmax over the active choices' logits (= p renormalised over them, also for k = 1);
    'uniform' 1 / (number of active choices). "Active": the first active_k choices of a real token; choices
    discarded by second_policy 'random' count as dropped for the gates (fairseq keeps g1 = p1 / (p1 + p2)).
  slots (a slot >= C is dropped), priorities:
    'position' (default): a (token, choice) ranks after every choice of the earlier tokens of its group. A
        token's slot depends only on earlier tokens, so routing is causal: the decoder default.
    'choice' (fairseq / GShard top-2): all first choices of the group rank before all second choices, so first
        choices always win; but a later token's first choice can displace an earlier token's second choice,
        which is NOT causal in a decoder (kept for encoders and for comparison).
    'bpr' (batch-prioritised routing, Riquelme et al. 2021 / fairseq): like 'choice', tokens ordered by
        decreasing max p (ties: position). NOT causal.
    'random' (DeepSpeed RTS, use_rts): like 'choice', tokens in a random order (training). NOT causal.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from samoe_jax.layers import router_noise
from samoe_jax.layers.capacity import expert_capacity  # noqa: F401  (re-exported: routing.expert_capacity)


@dataclasses.dataclass(frozen=True)
class Routing:
  """Routing decisions of G groups of S tokens.

  expert_GSK: int32 expert chosen by each token for each of its K choices.
  slot_GSK:   int32 position of that choice in the expert's buffer (may be >= capacity: dropped).
  gate_GSK:   float32 combine weight; zero for dropped, unused choices and masked tokens.
  kept_GSK:   bool, the choice got a slot (and the token is a real token).
  probs_GSE:  float32 router probabilities.
  logits_GSE: float32 router logits.
  capacity:   slots per expert per group (static).
  chosen_GSK: bool, the choice was made at all (real token, index < active_k, not discarded by second_policy
              'random'); None: every choice of every real token. Unchosen choices are not kept but not dropped.
  """
  expert_GSK: jax.Array
  slot_GSK: jax.Array
  gate_GSK: jax.Array
  kept_GSK: jax.Array
  probs_GSE: jax.Array
  logits_GSE: jax.Array
  capacity: int
  chosen_GSK: jax.Array | None = None


jax.tree_util.register_dataclass(
    Routing,
    data_fields=['expert_GSK', 'slot_GSK', 'gate_GSK', 'kept_GSK', 'probs_GSE', 'logits_GSE', 'chosen_GSK'],
    meta_fields=['capacity'])

SLOT_PRIORITIES = ('position', 'choice', 'bpr', 'random')
CAUSAL_PRIORITIES = ('position',)
GATES = ('softmax', 'topk_softmax', 'uniform')
GATE_RENORMS = ('auto', 'none', 'before_drop', 'after_drop')
SECOND_POLICIES = ('all', 'sampling', 'random')
ROUTE_NOISES = ('none', 'gumbel', 'gaussian')   # noise on the router probabilities ('jitter': router_noise.py)


@dataclasses.dataclass(frozen=True)
class RouteOptions:
  """The static choices of token-choice routing, checked once when built (TokenChoice builds one for training
  and one for evaluation per MoE layer, layers/routing_strategies.py): top_k (K), priority (slots), gate, gate_renorm,
  second_policy and noise; see the module docstring. Frozen and hashable."""
  top_k: int
  priority: str = 'position'
  gate: str = 'softmax'
  gate_renorm: str = 'auto'
  second_policy: str = 'all'
  noise: str = 'none'

  def __post_init__(self):
    for name, value, allowed in (('priority', self.priority, SLOT_PRIORITIES), ('gate', self.gate, GATES),
                                 ('gate_renorm', self.gate_renorm, GATE_RENORMS),
                                 ('second_policy', self.second_policy, SECOND_POLICIES),
                                 ('noise', self.noise, ROUTE_NOISES)):
      if value not in allowed:
        raise ValueError(f'RouteOptions: {name}={value!r} is not one of {allowed}')

  @property
  def draws_rng(self) -> bool:
    """Whether routing draws random numbers (second_policy 'sampling' / 'random', noise, priority 'random')."""
    return self.second_policy != 'all' or self.noise != 'none' or self.priority == 'random'


def top_k_experts(probs_GSE: jax.Array, top_k: int, first_scores_GSE: jax.Array | None = None,
                  later_scores_GSE: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Returns (expert_GSK, prob_GSK): experts in order of decreasing score (ties: lowest index) and their p.

  The first choice maximises first_scores_GSE (default p), later choices later_scores_GSE (default: the first
  scores) over the experts not chosen yet.
  """
  first = probs_GSE if first_scores_GSE is None else first_scores_GSE
  later = first if later_scores_GSE is None else later_scores_GSE
  experts, chosen = [], []
  taken_GSE = jnp.zeros(probs_GSE.shape, jnp.bool_)
  for i in range(top_k):
    scores_GSE = jnp.where(taken_GSE, -jnp.inf, first if i == 0 else later)
    e = jnp.argmax(scores_GSE, axis=-1)
    one_hot = jax.nn.one_hot(e, probs_GSE.shape[-1], dtype=jnp.bool_)
    experts.append(e.astype(jnp.int32))
    chosen.append(jnp.sum(jnp.where(one_hot, probs_GSE, 0.0), axis=-1))
    taken_GSE = taken_GSE | one_hot
  return jnp.stack(experts, axis=-1), jnp.stack(chosen, axis=-1)


def token_assignments(expert_GSK: jax.Array, token_mask_GS: jax.Array, num_experts: int,
                      chosen_GSK: jax.Array | None = None) -> jax.Array:
  """How many of each token's choices went to each expert (0 or 1; 0 for masked tokens and unchosen choices):
  int32 [G, S, E]."""
  mask_GSKE = jax.nn.one_hot(expert_GSK, num_experts, dtype=jnp.int32)
  use_GSK = _use_mask(expert_GSK, token_mask_GS, chosen_GSK)
  return jnp.sum(mask_GSKE * use_GSK[..., None].astype(jnp.int32), axis=2)


def _use_mask(expert_GSK: jax.Array, token_mask_GS: jax.Array, chosen_GSK: jax.Array | None) -> jax.Array:
  use_GSK = jnp.broadcast_to(token_mask_GS[..., None], expert_GSK.shape)
  return use_GSK if chosen_GSK is None else use_GSK & chosen_GSK


def assign_slots(expert_GSK: jax.Array, token_mask_GS: jax.Array, num_experts: int,
                 priority: str = 'position', counts_GE: jax.Array | None = None,
                 chosen_GSK: jax.Array | None = None, order_key_GS: jax.Array | None = None) -> jax.Array:
  """Slot of every (token, choice) in its expert's buffer. Returns int32 [G, S, K].

  priority (one of SLOT_PRIORITIES, checked by RouteOptions): 'position' ranks by (position, choice); 'choice'
  ranks by (choice, position); 'bpr' / 'random' rank by (choice, order_key_GS ascending, position) (see the module
  docstring). Unchosen choices (chosen_GSK False) and masked tokens take no slot. counts_GE ('position' only):
  int32 [G, E] assignments that earlier tokens of each group (not in this call) already made; every slot is offset
  by them, so a group can be routed in pieces.
  """
  use_GSK = _use_mask(expert_GSK, token_mask_GS, chosen_GSK).astype(jnp.int32)
  if priority == 'position':
    mask_GSKE = jax.nn.one_hot(expert_GSK, num_experts, dtype=jnp.int32) * use_GSK[..., None]
    per_token_GSE = jnp.sum(mask_GSKE, axis=2)   # a token picks an expert at most once
    earlier_GSE = jnp.cumsum(per_token_GSE, axis=1) - per_token_GSE
    if counts_GE is not None:
      earlier_GSE = earlier_GSE + counts_GE[:, None, :].astype(jnp.int32)
    return jnp.einsum('gse,gske->gsk', earlier_GSE, mask_GSKE).astype(jnp.int32)
  if counts_GE is not None:
    raise ValueError(f'slot priority {priority!r} cannot route a group in pieces (counts_GE): it is not causal')
  if priority == 'choice':
    order_GS = jnp.broadcast_to(jnp.arange(expert_GSK.shape[1]), expert_GSK.shape[:2])
  else:
    if order_key_GS is None:
      raise ValueError(f'slot priority {priority!r} needs order_key_GS (token priorities)')
    order_GS = jnp.argsort(order_key_GS, axis=1, stable=True)   # order_GS[g, r] = token ranked r-th
  inverse_GS = jnp.argsort(order_GS, axis=1)
  slots = []
  offset_GE = jnp.zeros((expert_GSK.shape[0], num_experts), jnp.int32)
  for i in range(expert_GSK.shape[-1]):
    mask_GSE = jax.nn.one_hot(expert_GSK[..., i], num_experts, dtype=jnp.int32) * use_GSK[..., i, None]
    sorted_GSE = jnp.take_along_axis(mask_GSE, order_GS[..., None], axis=1)
    rank_GSE = jnp.take_along_axis(jnp.cumsum(sorted_GSE, axis=1), inverse_GS[..., None], axis=1)
    rank_GSE = rank_GSE - 1 + offset_GE[:, None, :]
    slots.append(jnp.sum(rank_GSE * mask_GSE, axis=-1))
    offset_GE = offset_GE + jnp.sum(mask_GSE, axis=1)
  return jnp.stack(slots, axis=-1).astype(jnp.int32)


def _renormalise(gate_GSK: jax.Array, over_GSK: jax.Array) -> jax.Array:
  """gate / sum of the gates where over_GSK (0 where not over; a token with none keeps zeros)."""
  g = jnp.where(over_GSK, gate_GSK, 0.0)
  return g / jnp.maximum(jnp.sum(g, axis=-1, keepdims=True), 1e-30)


def route(logits_GSE: jax.Array, token_mask_GS: jax.Array, options: RouteOptions, *, capacity: int,
          counts_GE: jax.Array | None = None, active_k: jax.Array | None = None,
          probs_GSE: jax.Array | None = None, rng: jax.Array | None = None) -> Routing:
  """Top-k token-choice routing with capacity (the static choices in `options`); logits are cast to float32 first.

  capacity: slots per expert per group (static). counts_GE: see assign_slots (the tokens continue groups that
    already made these assignments).
  active_k: traced int32 scalar in [1, top_k]: choices with index >= active_k are not used (no slot, gate 0,
    not dropped); the gates are computed over the first active_k choices only.
  probs_GSE: router probabilities to use instead of softmax(logits) for selection, gates and the losses.
  rng: a PRNG key, needed when options.draws_rng (second_policy 'sampling' / 'random', noise 'gumbel' /
    'gaussian', priority 'random').
  """
  top_k, priority, gate, gate_renorm = options.top_k, options.priority, options.gate, options.gate_renorm
  second_policy, noise, needs_rng = options.second_policy, options.noise, options.draws_rng
  if needs_rng and rng is None:
    raise ValueError(f'route: second_policy={second_policy!r}, noise={noise!r}, priority={priority!r} draw '
                     'random numbers: pass rng')
  rngs = list(jax.random.split(rng, 4)) if needs_rng else [None] * 4
  logits_GSE = logits_GSE.astype(jnp.float32)
  num_experts = logits_GSE.shape[-1]
  probs_GSE = jax.nn.softmax(logits_GSE, axis=-1) if probs_GSE is None else probs_GSE.astype(jnp.float32)
  log_p = lambda p_GSE: jnp.log(jnp.maximum(p_GSE, 1e-30))
  if noise == 'gaussian':   # V-MoE: p = softmax(h + N(0, 1/E^2)) for selection and gates
    probs_GSE = jax.nn.softmax(
        log_p(probs_GSE) + router_noise.gaussian_std(num_experts) * jax.random.normal(rngs[0], probs_GSE.shape), -1)
  first = log_p(probs_GSE) + router_noise.gumbel(rngs[0], probs_GSE.shape) if noise == 'gumbel' else None
  later = None
  if second_policy == 'sampling':   # argmax of h + Gumbel over the remaining experts (log p = h - logsumexp h)
    later = log_p(probs_GSE) + router_noise.gumbel(rngs[1], probs_GSE.shape)
  elif first is not None:
    later = first
  expert_GSK, prob_GSK = top_k_experts(probs_GSE, top_k, first, later)

  k_K = jnp.arange(top_k)
  active_GSK = jnp.broadcast_to(token_mask_GS[..., None], expert_GSK.shape)   # gates are computed over these
  if active_k is not None:
    active_GSK = active_GSK & (k_K < active_k)
  chosen_GSK = active_GSK
  if second_policy == 'random':   # fairseq top2gating: keep choice k >= 2 when 2 * renormalised gate > U(0, 1)
    sampled_GSK = 2.0 * _renormalise(prob_GSK, active_GSK) > jax.random.uniform(rngs[2], prob_GSK.shape)
    chosen_GSK = active_GSK & ((k_K == 0) | sampled_GSK)

  order_key_GS = None
  if priority == 'bpr':
    order_key_GS = -jnp.max(probs_GSE, axis=-1)
  elif priority == 'random':
    order_key_GS = jax.random.uniform(rngs[3], token_mask_GS.shape)
  slot_GSK = assign_slots(expert_GSK, token_mask_GS, num_experts, priority, counts_GE, chosen_GSK, order_key_GS)
  kept_GSK = (slot_GSK < capacity) & chosen_GSK

  if gate == 'uniform':
    gate_GSK = jnp.where(active_GSK, 1.0, 0.0)
    gate_GSK = gate_GSK / jnp.maximum(jnp.sum(gate_GSK, axis=-1, keepdims=True), 1.0)
  elif gate == 'topk_softmax' or gate_renorm == 'before_drop':
    gate_GSK = _renormalise(prob_GSK, active_GSK)
  elif gate_renorm == 'auto' and top_k > 1 and active_k is None:
    gate_GSK = prob_GSK / jnp.sum(prob_GSK, axis=-1, keepdims=True)   # GShard / fairseq top-k (the default)
  elif gate_renorm == 'auto' and top_k > 1:   # renormalise unless only one choice is active (top-1 stays raw)
    gate_GSK = jnp.where(active_k > 1, _renormalise(prob_GSK, active_GSK), prob_GSK)
  else:
    gate_GSK = prob_GSK
  if gate_renorm == 'after_drop':
    gate_GSK = _renormalise(gate_GSK, kept_GSK)
  gate_GSK = jnp.where(kept_GSK, gate_GSK, 0.0)
  return Routing(expert_GSK=expert_GSK, slot_GSK=slot_GSK, gate_GSK=gate_GSK, kept_GSK=kept_GSK,
                 probs_GSE=probs_GSE, logits_GSE=logits_GSE, capacity=capacity,
                 chosen_GSK=chosen_GSK if (active_k is not None or second_policy == 'random') else None)


def load_balancing_loss(routing: Routing, token_mask_GS: jax.Array) -> jax.Array:
  """Switch loss E * sum_e f_e P_e over real tokens (f: first-choice fraction, P: mean probability); 1 if balanced."""
  num_experts = routing.probs_GSE.shape[-1]
  w_GS = token_mask_GS.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(w_GS), 1.0)
  first_GSE = jax.nn.one_hot(routing.expert_GSK[..., 0], num_experts, dtype=jnp.float32)
  f_E = jnp.einsum('gse,gs->e', first_GSE, w_GS) / n
  p_E = jnp.einsum('gse,gs->e', routing.probs_GSE, w_GS) / n
  return num_experts * jnp.sum(f_E * p_E)


def router_z_loss(routing: Routing, token_mask_GS: jax.Array) -> jax.Array:
  """ST-MoE z-loss: mean over real tokens of logsumexp(logits)^2."""
  w_GS = token_mask_GS.astype(jnp.float32)
  z_GS = jax.nn.logsumexp(routing.logits_GSE, axis=-1)
  return jnp.sum(jnp.square(z_GS) * w_GS) / jnp.maximum(jnp.sum(w_GS), 1.0)


def routing_metrics(routing: Routing, token_mask_GS: jax.Array) -> dict[str, jax.Array]:
  """expert_load [E]: share of chosen (token, choice) assignments per expert before dropping; dropped_fraction:
  share of chosen assignments that found no slot; router_entropy: mean entropy of p (nats) over real tokens."""
  num_experts = routing.probs_GSE.shape[-1]
  w_GSK = _use_mask(routing.expert_GSK, token_mask_GS, routing.chosen_GSK).astype(jnp.float32)
  n = jnp.maximum(jnp.sum(w_GSK), 1.0)
  load_E = jnp.einsum('gske,gsk->e', jax.nn.one_hot(routing.expert_GSK, num_experts), w_GSK) / n
  dropped = jnp.sum(w_GSK * (1.0 - routing.kept_GSK.astype(jnp.float32))) / n
  w_GS = token_mask_GS.astype(jnp.float32)
  p = routing.probs_GSE
  entropy_GS = -jnp.sum(p * jnp.log(jnp.maximum(p, 1e-20)), axis=-1)
  entropy = jnp.sum(entropy_GS * w_GS) / jnp.maximum(jnp.sum(w_GS), 1.0)
  return {'expert_load': load_E, 'dropped_fraction': dropped, 'router_entropy': entropy}
