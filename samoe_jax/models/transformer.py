"""GPT-3-style decoder-only LM whose MoE FFNs draw their experts from one global pool.

Einsum letters: B batch, L length, D width, V vocabulary.

Pre-LN blocks (x + Attn(LN(x)), then x + FFN(LN(x))), causal multi-head attention, learned positions, GeLU FFN,
tied input/output embeddings, dropout on embeddings, attention probabilities and residual branches. The model
spec's layer plan says which blocks have an MoE FFN; the expert pool is created once at the top and passed to
every MoE block.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from samoe_jax.layers import initializers
from samoe_jax.layers.attention import CausalSelfAttention
from samoe_jax.layers.experts import ExpertPool, ExpertWeights
from samoe_jax.layers.mlp import DenseFFN, LayerNorm
from samoe_jax.layers.moe import MoeFFN
from samoe_jax.models.spec import ModelSpec


def make_moe_ffn(spec: ModelSpec, moe_index: int, name: str) -> MoeFFN:
  return MoeFFN(
      num_experts=spec.num_experts, top_k=spec.top_k, capacity_factor_train=spec.capacity_factor_train,
      capacity_factor_eval=spec.capacity_factor_eval, min_capacity=spec.min_capacity,
      group_size=spec.group_size, dispatch=spec.dispatch, priority=spec.slot_priority, init_std=spec.init_std, pool_size=spec.pool_size,
      mixing=spec.mixing, pool_index=spec.pool_entry[moe_index], granularity=spec.granularity,
      space=spec.space, temperature=spec.temperature, mixing_init=spec.mixing_init,
      one_hot_scale=spec.one_hot_scale, dtype=spec.compute_dtype, name=name)


class Block(nn.Module):
  """One pre-LN block: x_BLD -> (x_BLD, aux or None). moe_index is None for a dense FFN."""
  spec: ModelSpec
  moe_index: int | None

  @nn.compact
  def __call__(self, x_BLD: jax.Array, pool: ExpertWeights | None, token_mask_BL: jax.Array, *,
               train: bool) -> tuple[jax.Array, dict[str, jax.Array] | None]:
    spec = self.spec
    dropout = nn.Dropout(spec.dropout_rate, deterministic=not train or spec.dropout_rate == 0)
    h_BLD = LayerNorm(dtype=spec.compute_dtype, name='attention_norm')(x_BLD)
    h_BLD = CausalSelfAttention(spec.num_heads, spec.init_std, spec.out_init_std, spec.dropout_rate,
                                spec.compute_dtype, name='attention')(h_BLD, train=train)
    x_BLD = x_BLD + dropout(h_BLD)
    x_BLD = nn.with_logical_constraint(x_BLD, ('batch', 'length', 'embed'))
    h_BLD = LayerNorm(dtype=spec.compute_dtype, name='ffn_norm')(x_BLD)
    aux = None
    if self.moe_index is None:
      h_BLD = DenseFFN(spec.d_ff, spec.init_std, spec.out_init_std, spec.compute_dtype, name='ffn')(
          h_BLD, train=train)
    else:
      h_BLD, aux = make_moe_ffn(spec, self.moe_index, 'moe')(h_BLD, pool, token_mask_BL, train=train)
    x_BLD = x_BLD + dropout(h_BLD)
    return nn.with_logical_constraint(x_BLD, ('batch', 'length', 'embed')), aux


class Decoder(nn.Module):
  """tokens_BL -> (final hidden states h_BLD, per-MoE-layer aux dicts in layer order).

  The output layer (h @ output_embedding^T) is applied by the model's loss, fused with the cross-entropy
  (samoe_jax/models/losses.py), or by `LanguageModel.logits`.
  """
  spec: ModelSpec

  def setup(self):
    spec = self.spec
    self.token_embedding = self.param('token_embedding', initializers.normal(spec.init_std, ('vocab', 'embed')),
                                      (spec.vocab_size, spec.d_model))
    self.position_embedding = self.param('position_embedding', initializers.normal(spec.init_std, (None, 'embed')),
                                         (spec.max_len, spec.d_model))
    if not spec.tie_embeddings:
      self.output_embedding = self.param('output_embedding', initializers.normal(spec.init_std, ('vocab', 'embed')),
                                         (spec.vocab_size, spec.d_model))
    self.expert_pool = None
    if spec.moe_layers:
      self.expert_pool = ExpertPool(spec.pool_size, spec.num_experts, spec.d_model, spec.expert_d_ff,
                                    spec.init_std, spec.out_init_std)
    moe_index = {layer: i for i, layer in enumerate(spec.moe_layers)}
    self.blocks = [Block(spec, moe_index.get(i), name=f'block_{i}') for i in range(spec.num_layers)]
    self.final_norm = LayerNorm(dtype=spec.compute_dtype)
    self.embedding_dropout = nn.Dropout(spec.dropout_rate)

  def __call__(self, tokens_BL: jax.Array, token_mask_BL: jax.Array, *,
               train: bool) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
    spec = self.spec
    length = tokens_BL.shape[1]
    x_BLD = (jnp.take(self.token_embedding, tokens_BL, axis=0) + self.position_embedding[:length]).astype(
        spec.compute_dtype)
    x_BLD = self.embedding_dropout(x_BLD, deterministic=not train or spec.dropout_rate == 0)
    x_BLD = nn.with_logical_constraint(x_BLD, ('batch', 'length', 'embed'))
    pool = self.expert_pool() if self.expert_pool is not None else None
    auxes = []
    for block in self.blocks:
      x_BLD, aux = block(x_BLD, pool, token_mask_BL, train=train)
      if aux is not None:
        auxes.append(aux)
    return self.final_norm(x_BLD), auxes

