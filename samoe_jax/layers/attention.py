"""Causal multi-head self-attention (GPT-3 style, with biases).

Einsum letters: B batch, L query length, M key length, D model width, H heads, K head width.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from samoe_jax.layers import initializers


class CausalSelfAttention(nn.Module):
  """x_BLD -> y_BLD; position t attends to positions <= t only."""
  num_heads: int
  init_std: float
  out_init_std: float
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BLD: jax.Array, *, train: bool) -> jax.Array:
    d = x_BLD.shape[-1]
    k_dim = d // self.num_heads
    w_qkv = self.param('qkv_kernel', initializers.normal(self.init_std, ('embed', None, 'heads', 'kv')),
                       (d, 3, self.num_heads, k_dim))
    b_qkv = self.param('qkv_bias', initializers.zeros((None, 'heads', 'kv')), (3, self.num_heads, k_dim))
    w_out = self.param('out_kernel', initializers.normal(self.out_init_std, ('heads', 'kv', 'embed')),
                       (self.num_heads, k_dim, d))
    b_out = self.param('out_bias', initializers.zeros(('embed',)), (d,))
    x_BLD = x_BLD.astype(self.dtype)
    qkv_BL3HK = jnp.einsum('bld,dthk->blthk', x_BLD, w_qkv.astype(self.dtype)) + b_qkv.astype(self.dtype)
    q_BLHK, k_BMHK, v_BMHK = qkv_BL3HK[:, :, 0], qkv_BL3HK[:, :, 1], qkv_BL3HK[:, :, 2]
    q_BLHK = nn.with_logical_constraint(q_BLHK, ('batch', 'length', 'heads', 'kv'))
    scores_BHLM = jnp.einsum('blhk,bmhk->bhlm', q_BLHK, k_BMHK).astype(jnp.float32) / jnp.sqrt(k_dim)
    length = x_BLD.shape[1]
    causal_LM = jnp.tril(jnp.ones((length, length), jnp.bool_))
    scores_BHLM = jnp.where(causal_LM, scores_BHLM, jnp.finfo(jnp.float32).min)
    probs_BHLM = jax.nn.softmax(scores_BHLM, axis=-1).astype(self.dtype)
    if train and self.dropout_rate > 0:
      probs_BHLM = nn.Dropout(self.dropout_rate)(probs_BHLM, deterministic=False)
    out_BLHK = jnp.einsum('bhlm,bmhk->blhk', probs_BHLM, v_BMHK)
    return jnp.einsum('blhk,hkd->bld', out_BLHK, w_out.astype(self.dtype)) + b_out.astype(self.dtype)
