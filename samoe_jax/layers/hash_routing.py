"""Hash routing (Roller et al. 2021, "Hash Layers For Large Sparse Models", arXiv 2106.04426): moe.routing='hash'.

Each token goes to ONE expert fixed by its token id: e(t) = fmix32(id_t + seed) mod E, a fixed random hash
(MurmurHash3's finaliser; the same map in training, evaluation and decoding, for every layer). There is no
router (no parameters), the gate is 1, and slots use the causal 'position' priority with the usual capacity, so
the layer is causal and can be decoded with the KV cache (the id of the current token is all it needs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from samoe_jax.layers.token_choice import Routing, assign_slots

HASH_SEED = 0x9E3779B9


def fmix32(x: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser on uint32 values."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def hash_experts(tokens_xS: jax.Array, num_experts: int) -> jax.Array:
  """Expert of every token id: int32, same shape as tokens."""
  h = fmix32(tokens_xS.astype(jnp.uint32) + jnp.uint32(HASH_SEED))
  return (h % jnp.uint32(num_experts)).astype(jnp.int32)


def hash_experts_numpy(token_ids: np.ndarray, num_experts: int) -> np.ndarray:
  """The same map in plain numpy integer arithmetic (the tests' reference)."""
  out = []
  for t in np.asarray(token_ids).reshape(-1).tolist():
    x = (int(t) + HASH_SEED) & 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & 0xFFFFFFFF
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & 0xFFFFFFFF
    x ^= x >> 16
    out.append(x % num_experts)
  return np.asarray(out, np.int32).reshape(np.shape(token_ids))


def hash_route(tokens_GS: jax.Array, token_mask_GS: jax.Array, *, num_experts: int, capacity: int,
               counts_GE: jax.Array | None = None) -> Routing:
  """Routing with K = 1 from the token ids; gate 1 where kept. probs are uniform (1/E) and logits zero: there is no
  router, and the MoE layer reports zero auxiliary losses for hash routing."""
  expert_GSK = hash_experts(tokens_GS, num_experts)[..., None]
  slot_GSK = assign_slots(expert_GSK, token_mask_GS, num_experts, 'position', counts_GE)
  kept_GSK = (slot_GSK < capacity) & token_mask_GS[..., None]
  g, s = tokens_GS.shape
  return Routing(expert_GSK=expert_GSK, slot_GSK=slot_GSK, gate_GSK=kept_GSK.astype(jnp.float32),
                 kept_GSK=kept_GSK, probs_GSE=jnp.full((g, s, num_experts), 1.0 / num_experts, jnp.float32),
                 logits_GSE=jnp.zeros((g, s, num_experts), jnp.float32), capacity=capacity)
