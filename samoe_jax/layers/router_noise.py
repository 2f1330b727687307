"""Training-time router noise (moe.noise, docs/methods/routing.md), applied only when training.

  'none'      nothing.
  'jitter'    DeepSpeed noisy_gate_policy='Jitter': the router INPUT is multiplied elementwise by
              U[1 - eps, 1 + eps] (eps = moe.noise_eps, 1e-2); selection and gates both see the jittered logits.
  'gumbel'    DeepSpeed 'RSample': Gumbel(0, 1) noise is added to the logits used for the argmax only; the gates
              come from the clean probabilities p = softmax(h).
  'gaussian'  V-MoE (Riquelme et al. 2021) / WideNet: h + N(0, sigma^2) with sigma = 1 / E as in V-MoE
              (moe.noise_eps is not used); selection AND gates use softmax(h + noise).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NOISE_KINDS = ('none', 'jitter', 'gumbel', 'gaussian')


def jitter(x_GSD: jax.Array, rng: jax.Array, eps: float) -> jax.Array:
  """x * U[1 - eps, 1 + eps] elementwise (DeepSpeed `multiplicative_jitter`)."""
  u = jax.random.uniform(rng, x_GSD.shape, jnp.float32, 1.0 - eps, 1.0 + eps)
  return (x_GSD.astype(jnp.float32) * u).astype(x_GSD.dtype)


def gumbel(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Standard Gumbel(0, 1) noise, float32."""
  return jax.random.gumbel(rng, shape, jnp.float32)


def gaussian_std(num_experts: int) -> float:
  """V-MoE's noise scale 1 / E."""
  return 1.0 / num_experts
