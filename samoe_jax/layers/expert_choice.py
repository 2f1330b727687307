"""Expert-choice routing (Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing", arXiv 2202.09368):
moe.routing='expert_choice'.

Each expert e of a group picks the C tokens with the largest router probability p[:, e] (C = the capacity of
the configured formula with the configured top_k; at most S): a token may be taken by 0..E experts, and every
expert is full, so no balancing loss is needed (the MoE layer reports lb_loss = 0; the z-loss still applies).
The gate of a (token, expert) pair is p[token, e] (Zhou et al.: G = TopK(S^T)).

As a Routing it has K = E "choices" per token: choice k is expert k, kept when expert k picked the token, with
slot = the token's rank among expert k's picks (ties: earlier position first).

NOT causal: whether expert e keeps token t depends on all tokens of the group, later ones included. It is an
encoder-style policy; evaluation routing and KV-cache decoding refuse it (MoeFFN).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from samoe_jax.layers.token_choice import Routing


def expert_choice_route(logits_GSE: jax.Array, token_mask_GS: jax.Array, *, capacity: int,
                        probs_GSE: jax.Array | None = None) -> Routing:
  """Every expert takes its top-min(C, S) real tokens by p (probs_GSE, else softmax(logits) in float32)."""
  logits_GSE = logits_GSE.astype(jnp.float32)
  probs_GSE = jax.nn.softmax(logits_GSE, axis=-1) if probs_GSE is None else probs_GSE.astype(jnp.float32)
  g, s, e = probs_GSE.shape
  c = min(capacity, s)
  scores_GES = jnp.where(token_mask_GS[:, None, :], jnp.swapaxes(probs_GSE, 1, 2), -1.0)
  _, picked_GEC = jax.lax.top_k(scores_GES, c)   # ties: lower token index first
  one_hot_GECS = jax.nn.one_hot(picked_GEC, s, dtype=jnp.int32)
  picked_GSE = jnp.einsum('gecs->gse', one_hot_GECS) > 0
  rank_GSE = jnp.einsum('gecs,c->gse', one_hot_GECS, jnp.arange(c, dtype=jnp.int32))
  kept_GSE = picked_GSE & token_mask_GS[..., None]
  slot_GSE = jnp.where(kept_GSE, rank_GSE, capacity)
  expert_GSE = jnp.broadcast_to(jnp.arange(e, dtype=jnp.int32), (g, s, e))
  return Routing(expert_GSK=expert_GSE, slot_GSK=slot_GSE.astype(jnp.int32),
                 gate_GSK=jnp.where(kept_GSE, probs_GSE, 0.0), kept_GSK=kept_GSE, probs_GSE=probs_GSE,
                 logits_GSE=logits_GSE, capacity=capacity, chosen_GSK=kept_GSE)
