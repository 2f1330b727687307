"""Token-choice top-k routing with expert capacity (GShard / Switch / fairseq), as pure functions.

Einsum letters: G routing groups, S tokens per group, E experts, K choices per token, C capacity (slots per
expert per group).

Routing of one group (methods.md §1.1):
  p = softmax(router logits)                            # float32 ("selective precision", Switch)
  e_1 = argmax p, e_2 = argmax of the rest, ...         # top-k without replacement
  gates: top-1 keeps p[e_1]; k >= 2 renormalises over the chosen experts (GShard / fairseq)
  slots (a slot >= C is dropped), two priorities:
    'position' (default): a (token, choice) ranks after every choice of the earlier tokens of its group. A
        token's slot depends only on earlier tokens, so routing is causal: the decoder default.
    'choice' (fairseq / GShard top-2): all first choices of the group rank before all second choices, so first
        choices always win; but a later token's first choice can displace an earlier token's second choice,
        which is NOT causal in a decoder (kept for encoders and for comparison).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Routing:
  """Routing decisions of G groups of S tokens.

  expert_GSK: int32 expert chosen by each token for each of its K choices.
  slot_GSK:   int32 position of that choice in the expert's buffer (may be >= capacity: dropped).
  gate_GSK:   float32 combine weight; zero for dropped choices and masked tokens.
  kept_GSK:   bool, the choice got a slot (and the token is a real token).
  probs_GSE:  float32 router probabilities.
  logits_GSE: float32 router logits.
  capacity:   slots per expert per group (static).
  """
  expert_GSK: jax.Array
  slot_GSK: jax.Array
  gate_GSK: jax.Array
  kept_GSK: jax.Array
  probs_GSE: jax.Array
  logits_GSE: jax.Array
  capacity: int


jax.tree_util.register_dataclass(
    Routing,
    data_fields=['expert_GSK', 'slot_GSK', 'gate_GSK', 'kept_GSK', 'probs_GSE', 'logits_GSE'],
    meta_fields=['capacity'])


def expert_capacity(tokens_per_group: int, num_experts: int, top_k: int, capacity_factor: float,
                    min_capacity: int) -> int:
  """C = max(ceil(k * T * CF / E), min_capacity), never more than k * T (every choice fits)."""
  c = math.ceil(top_k * tokens_per_group * capacity_factor / num_experts)
  return int(min(max(c, min_capacity), top_k * tokens_per_group))


def top_k_experts(probs_GSE: jax.Array, top_k: int) -> tuple[jax.Array, jax.Array]:
  """Returns (expert_GSK, prob_GSK): experts in order of decreasing probability (ties: lowest index)."""
  experts, chosen = [], []
  remaining = probs_GSE
  for _ in range(top_k):
    e = jnp.argmax(remaining, axis=-1)
    one_hot = jax.nn.one_hot(e, probs_GSE.shape[-1], dtype=jnp.bool_)
    experts.append(e.astype(jnp.int32))
    chosen.append(jnp.sum(jnp.where(one_hot, probs_GSE, 0.0), axis=-1))
    remaining = jnp.where(one_hot, -jnp.inf, remaining)
  return jnp.stack(experts, axis=-1), jnp.stack(chosen, axis=-1)


SLOT_PRIORITIES = ('position', 'choice')


def token_assignments(expert_GSK: jax.Array, token_mask_GS: jax.Array, num_experts: int) -> jax.Array:
  """How many of each token's choices went to each expert (0 or 1; 0 for masked tokens): int32 [G, S, E]."""
  mask_GSKE = jax.nn.one_hot(expert_GSK, num_experts, dtype=jnp.int32)
  return jnp.sum(mask_GSKE * token_mask_GS[..., None, None].astype(jnp.int32), axis=2)


def assign_slots(expert_GSK: jax.Array, token_mask_GS: jax.Array, num_experts: int,
                 priority: str = 'position', counts_GE: jax.Array | None = None) -> jax.Array:
  """Slot of every (token, choice) in its expert's buffer. Returns int32 [G, S, K].

  'position' ranks by (position, choice); 'choice' ranks by (choice, position) (see the module docstring).
  counts_GE ('position' only): int32 [G, E] assignments that earlier tokens of each group (not in this call)
  already made; every slot is offset by them, so a group can be routed in consecutive pieces.
  """
  if priority == 'position':
    mask_GSKE = jax.nn.one_hot(expert_GSK, num_experts, dtype=jnp.int32)
    mask_GSKE = mask_GSKE * token_mask_GS[..., None, None].astype(jnp.int32)
    per_token_GSE = jnp.sum(mask_GSKE, axis=2)   # a token picks an expert at most once
    earlier_GSE = jnp.cumsum(per_token_GSE, axis=1) - per_token_GSE
    if counts_GE is not None:
      earlier_GSE = earlier_GSE + counts_GE[:, None, :].astype(jnp.int32)
    return jnp.einsum('gse,gske->gsk', earlier_GSE, mask_GSKE).astype(jnp.int32)
  if priority != 'choice':
    raise ValueError(f'slot priority {priority!r} is not one of {SLOT_PRIORITIES}')
  if counts_GE is not None:
    raise ValueError("slot priority 'choice' cannot route a group in pieces (counts_GE): it is not causal")
  slots = []
  offset_GE = jnp.zeros((expert_GSK.shape[0], num_experts), jnp.int32)
  for i in range(expert_GSK.shape[-1]):
    mask_GSE = jax.nn.one_hot(expert_GSK[..., i], num_experts, dtype=jnp.int32)
    mask_GSE = mask_GSE * token_mask_GS[..., None].astype(jnp.int32)
    rank_GSE = jnp.cumsum(mask_GSE, axis=1) - 1 + offset_GE[:, None, :]
    slots.append(jnp.sum(rank_GSE * mask_GSE, axis=-1))
    offset_GE = offset_GE + jnp.sum(mask_GSE, axis=1)
  return jnp.stack(slots, axis=-1).astype(jnp.int32)


def route(logits_GSE: jax.Array, token_mask_GS: jax.Array, *, top_k: int, capacity: int,
          priority: str = 'position', counts_GE: jax.Array | None = None) -> Routing:
  """Top-k token-choice routing with capacity; logits are cast to float32 first.

  counts_GE: see assign_slots (the tokens continue groups that already made these assignments).
  """
  logits_GSE = logits_GSE.astype(jnp.float32)
  probs_GSE = jax.nn.softmax(logits_GSE, axis=-1)
  expert_GSK, prob_GSK = top_k_experts(probs_GSE, top_k)
  if top_k > 1:
    prob_GSK = prob_GSK / jnp.sum(prob_GSK, axis=-1, keepdims=True)
  slot_GSK = assign_slots(expert_GSK, token_mask_GS, probs_GSE.shape[-1], priority, counts_GE)
  kept_GSK = (slot_GSK < capacity) & token_mask_GS[..., None]
  gate_GSK = jnp.where(kept_GSK, prob_GSK, 0.0)
  return Routing(expert_GSK=expert_GSK, slot_GSK=slot_GSK, gate_GSK=gate_GSK, kept_GSK=kept_GSK,
                 probs_GSE=probs_GSE, logits_GSE=logits_GSE, capacity=capacity)


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
  """expert_load [E]: share of (token, choice) assignments per expert before dropping; dropped_fraction: share
  of assignments that found no slot; router_entropy: mean entropy of p (nats) over real tokens."""
  num_experts = routing.probs_GSE.shape[-1]
  w_GSK = jnp.broadcast_to(token_mask_GS[..., None], routing.expert_GSK.shape).astype(jnp.float32)
  n = jnp.maximum(jnp.sum(w_GSK), 1.0)
  load_E = jnp.einsum('gske,gsk->e', jax.nn.one_hot(routing.expert_GSK, num_experts), w_GSK) / n
  dropped = jnp.sum(w_GSK * (1.0 - routing.kept_GSK.astype(jnp.float32))) / n
  w_GS = token_mask_GS.astype(jnp.float32)
  p = routing.probs_GSE
  entropy_GS = -jnp.sum(p * jnp.log(jnp.maximum(p, 1e-20)), axis=-1)
  entropy = jnp.sum(entropy_GS * w_GS) / jnp.maximum(jnp.sum(w_GS), 1.0)
  return {'expert_load': load_E, 'dropped_fraction': dropped, 'router_entropy': entropy}
