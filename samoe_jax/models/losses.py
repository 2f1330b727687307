"""Cross-entropy against the (tied) output embedding, fused with its gradient.

Einsum letters: T tokens (B*L flattened), D width, V vocabulary.

The [T, V] logits are the largest tensor of a small-width LM (2048 x 32000 floats = 262 MB for the reference
workload), and materialising them plus their gradient costs more time than the output matmul itself on a CPU.
`output_cross_entropy` processes rows in chunks and computes d(loss)/d(hidden) and d(loss)/d(embedding) in the
forward pass (softmax - one_hot per chunk, while the chunk is in cache), so the backward pass only scales them.
FLOPs are those of the plain version: one forward and two gradient matmuls. `plain_output_cross_entropy` is the
obviously correct reference it is tested against.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

MAX_ROWS_PER_CHUNK = 512


def num_chunks(tokens: int) -> int:
  """Smallest divisor c of `tokens` with tokens / c <= MAX_ROWS_PER_CHUNK."""
  for c in range(max(1, -(-tokens // MAX_ROWS_PER_CHUNK)), tokens + 1):
    if tokens % c == 0:
      return c
  return tokens


def plain_output_cross_entropy(h_TD: jax.Array, emb_VD: jax.Array, targets_T: jax.Array,
                               weights_T: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Reference: (sum_t w_t * CE_t, sum_t w_t * [argmax logits_t == target_t]) with full logits.

  (The fused version counts a token as correct when its target's logit is the maximum, so it differs only for
  exact ties.)
  """
  logits_TV = jnp.dot(h_TD, emb_VD.T, preferred_element_type=jnp.float32)
  target_logit_T = jnp.take_along_axis(logits_TV, targets_T[:, None], axis=-1)[:, 0]
  ce_T = jax.nn.logsumexp(logits_TV, axis=-1) - target_logit_T
  correct_T = (jnp.argmax(logits_TV, axis=-1) == targets_T).astype(jnp.float32)
  return jnp.sum(ce_T * weights_T), jax.lax.stop_gradient(jnp.sum(correct_T * weights_T))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fused(h_TD, emb_VD, targets_T, weights_T, chunks):
  return _fused_fwd(h_TD, emb_VD, targets_T, weights_T, chunks)[0]


def _fused_fwd(h_TD, emb_VD, targets_T, weights_T, chunks):
  t_count, d = h_TD.shape
  emb_f32 = emb_VD.astype(jnp.float32)

  def chunk(d_emb_VD, inputs):
    h_CD, targets_C, w_C = inputs
    h_CD = h_CD.astype(jnp.float32)
    logits_CV = h_CD @ emb_f32.T
    max_C = jnp.max(logits_CV, axis=-1)
    lse_C = max_C + jnp.log(jnp.sum(jnp.exp(logits_CV - max_C[:, None]), axis=-1))
    target_logit_C = jnp.take_along_axis(logits_CV, targets_C[:, None], axis=-1)[:, 0]
    # 'target logit is the maximum' instead of argmax: XLA's variadic argmax reduce is ~10x slower on CPU.
    correct_C = (target_logit_C >= max_C).astype(jnp.float32)
    one_hot_CV = jax.nn.one_hot(targets_C, logits_CV.shape[-1], dtype=jnp.float32)
    d_logits_CV = (jnp.exp(logits_CV - lse_C[:, None]) - one_hot_CV) * w_C[:, None]
    d_h_CD = d_logits_CV @ emb_f32
    d_emb_VD = d_emb_VD + d_logits_CV.T @ h_CD
    return d_emb_VD, (jnp.sum((lse_C - target_logit_C) * w_C), jnp.sum(correct_C * w_C), d_h_CD)

  inputs = (h_TD.reshape(chunks, t_count // chunks, d), targets_T.reshape(chunks, -1),
            weights_T.astype(jnp.float32).reshape(chunks, -1))
  d_emb_VD, (ce_C, correct_C, d_h) = jax.lax.scan(chunk, jnp.zeros_like(emb_f32), inputs)
  out = (jnp.sum(ce_C), jnp.sum(correct_C))
  return out, (d_h.reshape(t_count, d).astype(h_TD.dtype), d_emb_VD.astype(emb_VD.dtype))


def _fused_bwd(chunks, residuals, cotangents):
  del chunks
  d_h_TD, d_emb_VD = residuals
  g_ce, _ = cotangents   # the accuracy output carries no gradient
  return g_ce.astype(d_h_TD.dtype) * d_h_TD, g_ce.astype(d_emb_VD.dtype) * d_emb_VD, None, None


_fused.defvjp(_fused_fwd, _fused_bwd)


def output_cross_entropy(h_TD: jax.Array, emb_VD: jax.Array, targets_T: jax.Array,
                         weights_T: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum_t w_t * CE_t, sum_t w_t * correct_t) with logits_TV = h_TD @ emb_VD^T, never stored whole.

  Differentiable in h_TD and emb_VD (the weights and targets get no gradient).
  """
  return _fused(h_TD, emb_VD, targets_T, jax.lax.stop_gradient(weights_T), num_chunks(h_TD.shape[0]))
