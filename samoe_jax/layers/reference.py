"""Slow, obviously correct references for the MoE fast path (tests and debugging only).

No dispatch tensors, no capacity: every expert runs on every token in a plain Python loop, and a token's output is
the gate-weighted sum of its chosen experts. The fast path must equal this (outputs and gradients) whenever the
capacity is large enough that nothing is dropped. Pool mixing is a plain loop over pool entries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from samoe_jax.layers.experts import ExpertWeights


def reference_mix(pool: ExpertWeights, alpha: jax.Array, temperature: float) -> ExpertWeights:
  """sum_j softmax(alpha/tau)_j W_j with a loop over j. alpha: [P] or [E, P]; pool: leading [P, E]."""
  weights = jax.nn.softmax(alpha / temperature, axis=-1)
  pool_size = alpha.shape[-1]

  def mix(a):
    total = jnp.zeros(a.shape[1:], a.dtype)
    for j in range(pool_size):
      w = weights[j] if weights.ndim == 1 else weights[:, j].reshape((-1,) + (1,) * (a.ndim - 2))
      total = total + w * a[j]
    return total

  return jax.tree.map(mix, pool)


def reference_expert(x_TD: jax.Array, w: ExpertWeights, e: int) -> jax.Array:
  """Expert e on every token: [T, D] -> [T, D]."""
  return jax.nn.gelu(x_TD @ w.w_in[e] + w.b_in[e]) @ w.w_out[e] + w.b_out[e]


def reference_moe(x_TD: jax.Array, router_DE: jax.Array, experts: ExpertWeights, top_k: int) -> jax.Array:
  """Top-k MoE without capacity: y_t = sum_{e in topk(p_t)} g_{t,e} u_e(x_t). x_TD: [T, D] -> [T, D].

  Gates: top-1 keeps p[e1]; k >= 2 renormalises over the chosen experts (docs/methods/routing.md).
  """
  probs_TE = jax.nn.softmax(x_TD.astype(jnp.float32) @ router_DE, axis=-1)
  top_p_TK, top_e_TK = jax.lax.top_k(probs_TE, top_k)
  if top_k > 1:
    top_p_TK = top_p_TK / jnp.sum(top_p_TK, axis=-1, keepdims=True)
  y_TD = jnp.zeros_like(x_TD)
  for e in range(router_DE.shape[-1]):
    gate_T = jnp.sum(jnp.where(top_e_TK == e, top_p_TK, 0.0), axis=-1)
    y_TD = y_TD + gate_T[:, None] * reference_expert(x_TD, experts, e)
  return y_TD


def reference_slots(expert_SK: np.ndarray, mask_S: np.ndarray, num_experts: int,
                    priority: str = 'position') -> np.ndarray:
  """Slot of each (token, choice) in one group by explicit counting. 'position': tokens in order, each with its
  choices in order; 'choice': all first choices in position order, then all second choices, and so on. Masked
  tokens get slot 0 (they are never kept)."""
  s_count, k_count = expert_SK.shape
  order = ([(s, k) for s in range(s_count) for k in range(k_count)] if priority == 'position' else
           [(s, k) for k in range(k_count) for s in range(s_count)])
  slots = np.zeros((s_count, k_count), np.int64)
  used = np.zeros(num_experts, np.int64)
  for s, k in order:
    if mask_S[s]:
      e = expert_SK[s, k]
      slots[s, k] = used[e]
      used[e] += 1
  return slots
