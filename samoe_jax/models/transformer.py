"""GPT-3-style decoder-only LM whose MoE FFNs draw their experts from one global pool.

Einsum letters: B batch, L length, D width, V vocabulary.

Pre-LN blocks (x + Attn(LN(x)), then x + FFN(LN(x))), causal multi-head attention, learned positions, GeLU FFN,
tied input/output embeddings, dropout on embeddings, attention probabilities and residual branches. The model
spec's layer plan says which blocks have an MoE FFN; the expert pool is created once at the top and passed to
every MoE block.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from samoe_jax.layers import initializers
from samoe_jax.layers.attention import CausalSelfAttention
from samoe_jax.layers.experts import ExpertPool, ExpertWeights, MixingLogits, mix_all_layers
from samoe_jax.layers.inference import InferenceMode
from samoe_jax.layers.mlp import DenseFFN, LayerNorm
from samoe_jax.layers.moe import MoeFFN
from samoe_jax.models.remat import remat_module
from samoe_jax.models.spec import ModelSpec


def make_moe_ffn(spec: ModelSpec, name: str) -> MoeFFN:
  return MoeFFN(
      num_experts=spec.num_experts, top_k=spec.top_k, capacity_factor_train=spec.capacity_factor_train,
      capacity_factor_eval=spec.capacity_factor_eval, min_capacity=spec.min_capacity,
      group_size=spec.group_size, dispatch=spec.dispatch, init_std=spec.init_std, priority=spec.slot_priority,
      dtype=spec.compute_dtype, eval_group_size=spec.eval_group_size, name=name)


@dataclasses.dataclass(frozen=True)
class LayerExperts:
  """What one MoE block receives: its effective experts, or (output-space mixing) the pool and its weights."""
  experts: ExpertWeights
  output_mix_weights: jax.Array | None = None


jax.tree_util.register_dataclass(LayerExperts, data_fields=['experts', 'output_mix_weights'], meta_fields=[])


class Block(nn.Module):
  """One pre-LN block: x_BLD -> (x_BLD, aux or None). `experts` is None for a dense FFN; `inference` (an
  InferenceMode, layers/inference.py) selects evaluation routing and the decoding caches."""
  spec: ModelSpec

  @nn.compact
  def __call__(self, x_BLD: jax.Array, experts: LayerExperts | None, token_mask_BL: jax.Array,
               train: bool, inference: InferenceMode | None = None) -> tuple[jax.Array, dict[str, jax.Array] | None]:
    spec = self.spec
    dropout = nn.Dropout(spec.dropout_rate, deterministic=not train or spec.dropout_rate == 0)
    h_BLD = LayerNorm(dtype=spec.compute_dtype, name='attention_norm')(x_BLD)
    h_BLD = CausalSelfAttention(spec.num_heads, spec.init_std, spec.out_init_std, spec.dropout_rate,
                                spec.compute_dtype, name='attention')(h_BLD, train=train, inference=inference)
    x_BLD = x_BLD + dropout(h_BLD)
    x_BLD = nn.with_logical_constraint(x_BLD, ('batch', 'length', 'embed'))
    h_BLD = LayerNorm(dtype=spec.compute_dtype, name='ffn_norm')(x_BLD)
    aux = None
    if experts is None:
      h_BLD = DenseFFN(spec.d_ff, spec.init_std, spec.out_init_std, spec.compute_dtype, name='ffn')(
          h_BLD, train=train)
    else:
      h_BLD, aux = make_moe_ffn(spec, 'moe')(h_BLD, experts.experts, token_mask_BL, train=train,
                                             output_mix_weights=experts.output_mix_weights, inference=inference)
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
    self.expert_pool = self.mixing_logits = None
    if spec.moe_layers:
      self.expert_pool = ExpertPool(spec.pool_size, spec.num_experts, spec.d_model, spec.expert_d_ff,
                                    spec.init_std, spec.out_init_std)
      if spec.mixing == 'learned':
        self.mixing_logits = MixingLogits(len(spec.moe_layers), spec.pool_size, spec.num_experts, spec.granularity,
                                          spec.temperature, spec.mixing_init, spec.pool_entry, spec.one_hot_scale)
    block_cls = remat_module(Block, spec.remat, static_argnums=(4,))   # model.remat; `train` (arg 4) is static
    self.blocks = [block_cls(spec, name=f'block_{i}') for i in range(spec.num_layers)]
    self.final_norm = LayerNorm(dtype=spec.compute_dtype)
    self.embedding_dropout = nn.Dropout(spec.dropout_rate)

  def __call__(self, tokens_BL: jax.Array, token_mask_BL: jax.Array, *, train: bool,
               inference: InferenceMode | None = None,
               experts: dict[int, LayerExperts] | None = None) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
    """inference: see Block (a 'step' takes tokens_B1 at positions inference.index_B); experts: every MoE block's
    experts as `layer_experts()` returns them, mixed beforehand (e.g. once for many evaluation batches)."""
    spec = self.spec
    length = tokens_BL.shape[1]
    if inference is not None and inference.cache == 'step':
      positions_BLD = jnp.take(self.position_embedding, inference.index_B[:, None], axis=0)
    else:
      positions_BLD = self.position_embedding[:length][None]
    x_BLD = (jnp.take(self.token_embedding, tokens_BL, axis=0) + positions_BLD).astype(spec.compute_dtype)
    x_BLD = self.embedding_dropout(x_BLD, deterministic=not train or spec.dropout_rate == 0)
    x_BLD = nn.with_logical_constraint(x_BLD, ('batch', 'length', 'embed'))
    layer_experts, weights = self.layer_experts() if experts is None else (experts, None)
    auxes = []
    for i, block in enumerate(self.blocks):
      # positional: `train` is static under remat
      x_BLD, aux = block(x_BLD, layer_experts.get(i), token_mask_BL, train, inference)
      if aux is not None:
        auxes.append(aux if weights is None else dict(aux, mixing_weights=weights[len(auxes)]))
    return self.final_norm(x_BLD), auxes

  def layer_experts(self) -> tuple[dict[int, LayerExperts], jax.Array | None]:
    """Per MoE block: its experts, mixed from the pool once per forward pass (so once per optimizer step) in a
    single contraction for all layers; and the mixing weights [L_moe, P] / [L_moe, E, P] (None when fixed)."""
    spec = self.spec
    if self.expert_pool is None:
      return {}, None
    pool = self.expert_pool()
    if self.mixing_logits is None:   # fixed one-hot mixing: layer l uses pool entry pool_entry[l]
      return {b: LayerExperts(pool.entry(j)) for b, j in zip(spec.moe_layers, spec.pool_entry)}, None
    weights = self.mixing_logits()
    if spec.space == 'output':
      return {b: LayerExperts(pool, weights[i]) for i, b in enumerate(spec.moe_layers)}, weights
    mixed = mix_all_layers(pool, weights)
    return {b: LayerExperts(mixed.entry(i)) for i, b in enumerate(spec.moe_layers)}, weights

