"""Causal multi-head self-attention (GPT-3 style, with biases).

Einsum letters: B batch, L query length, M key length, D model width, H heads, K head width, T = B*L.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from samoe_jax.layers import initializers
from samoe_jax.layers.attention_kernel import fused_causal_attention
from samoe_jax.layers.inference import InferenceMode


class CausalSelfAttention(nn.Module):
  """x_BLD -> y_BLD; position t attends to positions <= t only.

  inference (layers/inference.py) 'prefill' also stores the keys and values in the 'cache' collection ('key',
  'value': [B, H, M, K], M = cache_len, positions >= L zero); 'step' takes one token per row (x_B1D at positions
  index_B), writes its key and value at that position and attends to the cached positions <= it.

  kernel (layers/attention_kernel.py): 'einsum' materializes the scores; 'cudnn' (or 'xla', jax's reference of the
  same fused call) runs jax.nn.dot_product_attention for training and scoring; KV-cache decoding and return_probs
  always take the einsum path.
  """
  num_heads: int
  init_std: float
  out_init_std: float
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  kernel: str = 'einsum'

  @nn.compact
  def __call__(self, x_BLD: jax.Array, *, train: bool, inference: InferenceMode | None = None,
               weights: dict[str, jax.Array] | None = None,
               return_probs: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """weights: this module's four parameters given from outside (WideNet's attention shared by every block,
    layers/shared.py); then the module creates no parameters, but its decoding caches are still its own.
    return_probs: also return the head-averaged attention probabilities before dropout, float32 [B, L, M]
    (Attention-Aware MoE routing, layers/graph_routing.py)."""
    d = x_BLD.shape[-1]
    k_dim = d // self.num_heads
    if weights is not None:
      w_qkv, b_qkv, w_out, b_out = (weights[n] for n in ('qkv_kernel', 'qkv_bias', 'out_kernel', 'out_bias'))
    else:
      w_qkv = self.param('qkv_kernel', initializers.normal(self.init_std, ('embed', None, 'heads', 'kv')),
                         (d, 3, self.num_heads, k_dim))
      b_qkv = self.param('qkv_bias', initializers.zeros((None, 'heads', 'kv')), (3, self.num_heads, k_dim))
      w_out = self.param('out_kernel', initializers.normal(self.out_init_std, ('heads', 'kv', 'embed')),
                         (self.num_heads, k_dim, d))
      b_out = self.param('out_bias', initializers.zeros(('embed',)), (d,))
    b, length, _ = x_BLD.shape
    # 2-D matmuls over flattened tokens: XLA's backward of the 3-D einsum is ~2x slower on CPU.
    qkv_T3HK = (x_BLD.reshape(b * length, d).astype(self.dtype) @ w_qkv.reshape(d, -1).astype(self.dtype))
    qkv_BL3HK = qkv_T3HK.reshape(b, length, 3, self.num_heads, k_dim) + b_qkv.astype(self.dtype)
    if self.kernel != 'einsum' and (inference is None or inference.cache == 'none') and not return_probs:
      q_BLHK, k_BLHK, v_BLHK = (qkv_BL3HK[:, :, i] for i in range(3))
      q_BLHK = nn.with_logical_constraint(q_BLHK, ('batch', 'length', 'heads', 'kv'))
      out_BLHK = fused_causal_attention(q_BLHK, k_BLHK, v_BLHK, self.kernel)
      return self._project_out(out_BLHK, w_out, b_out)
    # Heads-major layout [B, H, L, K]: the batched matmuls run ~15 % faster on CPU than with [B, L, H, K].
    q_BHLK, k_BHMK, v_BHMK = (jnp.swapaxes(qkv_BL3HK[:, :, i], 1, 2) for i in range(3))
    q_BHLK = nn.with_logical_constraint(q_BHLK, ('batch', 'heads', 'length', 'kv'))
    if inference is not None and inference.cache == 'step':
      k_BHMK, v_BHMK, visible_BLM = self._step_cache(k_BHMK, v_BHMK, inference)
    else:
      if inference is not None and inference.cache == 'prefill':
        self._prefill_cache(k_BHMK, v_BHMK, inference.cache_len)
      visible_BLM = jnp.tril(jnp.ones((length, length), jnp.bool_))[None]
    scores_BHLM = jnp.einsum('bhlk,bhmk->bhlm', q_BHLK, k_BHMK).astype(jnp.float32) / jnp.sqrt(k_dim)
    scores_BHLM = jnp.where(visible_BLM[:, None], scores_BHLM, jnp.finfo(jnp.float32).min)
    probs_BHLM = jax.nn.softmax(scores_BHLM, axis=-1).astype(self.dtype)
    mean_probs_BLM = jnp.mean(probs_BHLM.astype(jnp.float32), axis=1) if return_probs else None
    if train and self.dropout_rate > 0:
      probs_BHLM = nn.Dropout(self.dropout_rate)(probs_BHLM, deterministic=False)
    out_BLHK = jnp.swapaxes(jnp.einsum('bhlm,bhmk->bhlk', probs_BHLM, v_BHMK), 1, 2)
    y_BLD = self._project_out(out_BLHK, w_out, b_out)
    return (y_BLD, mean_probs_BLM) if return_probs else y_BLD

  def _project_out(self, out_BLHK: jax.Array, w_out: jax.Array, b_out: jax.Array) -> jax.Array:
    """Heads [B, L, H, K] -> y_BLD through the output projection."""
    b, length, h, k = out_BLHK.shape
    y_TD = out_BLHK.reshape(b * length, h * k) @ w_out.reshape(h * k, -1).astype(self.dtype)
    return (y_TD + b_out.astype(self.dtype)).reshape(b, length, -1)

  def _cache_vars(self, b: int, cache_len: int, k_dim: int) -> tuple[nn.Variable, nn.Variable]:
    shape = (b, self.num_heads, cache_len, k_dim)
    return (self.variable('cache', 'key', jnp.zeros, shape, self.dtype),
            self.variable('cache', 'value', jnp.zeros, shape, self.dtype))

  def _prefill_cache(self, k_BHLK: jax.Array, v_BHLK: jax.Array, cache_len: int) -> None:
    """Stores the prompt's keys and values at positions [0, L) of caches of cache_len positions."""
    b, _, length, k_dim = k_BHLK.shape
    if length > cache_len:
      raise ValueError(f'CausalSelfAttention: prefill of {length} positions exceeds the cache of {cache_len}')
    key, value = self._cache_vars(b, cache_len, k_dim)
    pad = ((0, 0), (0, 0), (0, cache_len - length), (0, 0))
    key.value, value.value = jnp.pad(k_BHLK, pad), jnp.pad(v_BHLK, pad)

  def _step_cache(self, k_BH1K: jax.Array, v_BH1K: jax.Array,
                  inference: InferenceMode) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Writes one token per row at its position; returns all cached keys/values and visible_B1M (<= position)."""
    b, _, length, k_dim = k_BH1K.shape
    if length != 1:
      raise ValueError(f'CausalSelfAttention: a decoding step takes one token per row, got length {length}')
    key, value = self._cache_vars(b, inference.cache_len, k_dim)
    pos_M = jnp.arange(inference.cache_len)
    at_BM = pos_M[None] == inference.index_B[:, None]
    key.value = jnp.where(at_BM[:, None, :, None], k_BH1K, key.value)
    value.value = jnp.where(at_BM[:, None, :, None], v_BH1K, value.value)
    return key.value, value.value, (pos_M[None] <= inference.index_B[:, None])[:, None, :]
