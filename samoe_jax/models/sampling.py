"""Choosing the next token from logits_BV: greedy, or sampling with temperature, top-k and top-p (nucleus).

The filters apply in the order of Hugging Face's logits warpers: the logits are divided by the temperature, then
only the top_k largest are kept (Fan et al. 2018, "Hierarchical Neural Story Generation"), then only the
smallest set of the remaining tokens whose probabilities (softmax of the filtered logits) sum to at least top_p
(Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"); the token is drawn from the softmax of
what is left (jax.random.categorical). Tokens tied with the last kept one are kept too (both filters compare
against a threshold). temperature == 0 is greedy decoding: the argmax of the raw logits, no key used.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
  """How the decoder picks each token (the decode loop gets `greedy` as a static argument, the rest as arrays).

  temperature: 0 = greedy (argmax); > 0 divides the logits before softmax (< 1 sharper, > 1 flatter).
  top_k: keep only the k most likely tokens; 0 = off.
  top_p: keep only the smallest set of most likely tokens with total probability >= top_p; 1.0 = off.
  """
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  @property
  def greedy(self) -> bool:
    return self.temperature == 0

  def check(self, vocab_size: int | None = None) -> SamplingSettings:
    """Raises ValueError naming the bad value and what is allowed; returns self."""
    t, k, p = self.temperature, self.top_k, self.top_p
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < float('inf'):
      raise ValueError(f'temperature={t!r} must be a finite number >= 0 (0 = greedy decoding)')
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
      raise ValueError(f'top_k={k!r} must be an int >= 0 (0 = keep every token)')
    if vocab_size is not None and k > vocab_size:
      raise ValueError(f'top_k={k!r} must be at most the vocabulary size {vocab_size} (0 = keep every token)')
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
      raise ValueError(f'top_p={p!r} must be in (0, 1] (1 = keep every token)')
    return self


GREEDY = SamplingSettings(temperature=0.0)


def as_knobs(settings: SamplingSettings) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(temperature f32, top_k int32, top_p f32) as arrays: traced arguments of the decode loop, so that one
  compiled loop serves every sampling setting (only greedy or not is static)."""
  return (jnp.float32(settings.temperature), jnp.int32(settings.top_k), jnp.float32(settings.top_p))


def filter_logits(logits_BV: jax.Array, knobs: tuple[jax.Array, jax.Array, jax.Array] | SamplingSettings
                  ) -> jax.Array:
  """float32 [B, V]: logits / temperature, -inf outside the top_k, then -inf outside the top_p nucleus (sampling
  knobs as arrays, or settings; temperature > 0)."""
  if isinstance(knobs, SamplingSettings):
    knobs = as_knobs(knobs)
  temperature, top_k, top_p = knobs
  v = logits_BV.shape[-1]
  logits_BV = logits_BV.astype(jnp.float32) / temperature
  sorted_BV = -jnp.sort(-logits_BV, axis=-1)                       # descending
  k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
  kth_B1 = jax.lax.dynamic_index_in_dim(sorted_BV, k - 1, axis=-1)   # [B, 1]
  logits_BV = jnp.where(logits_BV >= kth_B1, logits_BV, -jnp.inf)
  sorted_BV = jnp.where(sorted_BV >= kth_B1, sorted_BV, -jnp.inf)
  probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
  before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV              # mass of the tokens more likely than each
  kept_BV = (before_BV < top_p) | (top_p >= 1)                      # the first token is always kept
  cutoff_B1 = jnp.min(jnp.where(kept_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits_BV >= cutoff_B1, logits_BV, -jnp.inf)


def next_tokens(logits_BV: jax.Array, greedy: bool, knobs: tuple[jax.Array, jax.Array, jax.Array],
                keys_B: jax.Array) -> jax.Array:
  """int32 [B]: each row's token, the argmax when `greedy` (static), else drawn with the row's own key (so a
  row's draws do not depend on the other rows)."""
  if greedy:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  return jax.vmap(jax.random.categorical)(keys_B, filter_logits(logits_BV, knobs)).astype(jnp.int32)
