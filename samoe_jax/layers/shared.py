"""Cross-layer sharing beyond the expert pool (WideNet, docs/methods/sharing.md) and the SaMoE mixing-entropy regulariser
(docs/model.md).

Einsum letters: G groups, S tokens per group, D width, E experts, H heads, K head width, L_moe MoE layers, P pool
entries.

WideNet ("Go Wider Instead of Deeper", Xue et al., AAAI 2022, arXiv 2107.11817) shares every trainable weight of
the transformer block across depth (attention, router and experts) but gives each block its own LayerNorms, so the
shared router sees LN_l(x) and routes differently at each depth. Here the experts are shared through the pool
(pool.size = 1, fixed mixing); this module adds the two other shared parts, each created ONCE at the decoder level
and passed to every block as arrays:

  pool.share_router     `shared_router/kernel` W_r [D, E] replaces every MoE block's `block_i/moe/router/kernel`.
  model.share_attention `shared_attention/{qkv_kernel [D, 3, H, K], qkv_bias [3, H, K], out_kernel [H, K, D],
                        out_bias [D]}` replaces every block's `block_i/attention/*` parameters. Each block still
                        runs its own CausalSelfAttention instance (only its weights come from outside), so the
                        decoding caches `cache/block_i/attention/{key,value}` stay per block.

Each block's `attention_norm` and `ffn_norm` are always its own. With both flags off nothing here is created and
the parameter tree is the standard one.

pool.entropy_coef adds coef * mean_{l(,e)} H(softmax(alpha_l / tau)) to the loss (`mixing_entropy`).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from samoe_jax.layers import initializers


class SharedRouter(nn.Module):
  """WideNet's one router for all MoE layers: returns the kernel W_r [D, E] (float32, logical axes
  ('embed', 'router'), initialised like a per-layer router)."""
  d_model: int
  num_experts: int
  init_std: float

  @nn.compact
  def __call__(self) -> jax.Array:
    return self.param('kernel', initializers.normal(self.init_std, ('embed', 'router')),
                      (self.d_model, self.num_experts))


class SharedAttention(nn.Module):
  """WideNet's one set of attention weights for all blocks: the parameters of CausalSelfAttention (same names,
  shapes, initialisers and logical axes), returned as a dict for `CausalSelfAttention(..., weights=...)`."""
  d_model: int
  num_heads: int
  init_std: float
  out_init_std: float

  @nn.compact
  def __call__(self) -> dict[str, jax.Array]:
    d, h = self.d_model, self.num_heads
    k = d // h
    return {
        'qkv_kernel': self.param('qkv_kernel', initializers.normal(self.init_std, ('embed', None, 'heads', 'kv')),
                                 (d, 3, h, k)),
        'qkv_bias': self.param('qkv_bias', initializers.zeros((None, 'heads', 'kv')), (3, h, k)),
        'out_kernel': self.param('out_kernel', initializers.normal(self.out_init_std, ('heads', 'kv', 'embed')),
                                 (h, k, d)),
        'out_bias': self.param('out_bias', initializers.zeros(('embed',)), (d,)),
    }


def shared_router_logits(x_GSD: jax.Array, w_DE: jax.Array) -> jax.Array:
  """Router logits with the shared kernel, float32 (no bias), exactly as routers.Router: x_GSD -> logits_GSE."""
  return jnp.einsum('gsd,de->gse', x_GSD.astype(jnp.float32), w_DE)


def mixing_entropy(alpha: jax.Array, temperature: float) -> jax.Array:
  """mean over MoE layers (and experts) of H(softmax(alpha / tau)) = -sum_j w_j log w_j, in nats.

  alpha: [L_moe, P] (layer-level) or [L_moe, E, P] (expert-level). Computed from log_softmax, so a saturated
  (one-hot) mixture has a finite gradient. 0 <= H <= log P.
  """
  logw = jax.nn.log_softmax(alpha.astype(jnp.float32) / temperature, axis=-1)
  return jnp.mean(-jnp.sum(jnp.exp(logw) * logw, axis=-1))


def repeated_uses(params: dict, num_layers: int, num_moe_layers: int) -> int:
  """Parameters a token uses again at every further depth because they are shared (for 'active_per_token', a
  compute count so that 6 * N_active * tokens stays the training FLOPs): (num_layers - 1) x the shared attention
  and (num_moe_layers - 1) x the shared router. params: the parameter tree (arrays or ShapeDtypeStructs)."""
  size = lambda tree: sum(int(math.prod(x.shape)) for x in jax.tree.leaves(tree))
  return ((num_layers - 1) * size(params.get('shared_attention', {}))
          + max(num_moe_layers - 1, 0) * size(params.get('shared_router', {})))
