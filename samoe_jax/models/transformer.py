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
from samoe_jax.layers import momentum as momentum_lib
from samoe_jax.layers.attention import CausalSelfAttention
from samoe_jax.layers.attention_kernel import resolve_kernel
from samoe_jax.layers.experts import ExpertWeights, LayerExperts
from samoe_jax.layers.mlp import DenseFFN, LayerNorm
from samoe_jax.layers import pool as pool_lib
from samoe_jax.layers import residual_moe
from samoe_jax.layers.moe import MoeFFN
from samoe_jax.layers.moe_call import MoeCall
from samoe_jax.layers.shared import SharedAttention, SharedRouter
from samoe_jax.models.remat import remat_module
from samoe_jax.models.spec import ModelSpec


def make_moe_ffn(spec: ModelSpec, name: str | None, num_experts: int | None = None,
                 evaluation: bool = False) -> MoeFFN:
  """num_experts: this layer's E (Pyramid-MoE, config/pyramid.py); None: moe.num_experts. evaluation: a train=False
  forward pass, which routes with moe.eval_top_k experts and moe.eval_gate when they are set (SMoE-Dropout,
  layers/k_schedule.py); parameters do not depend on either."""
  return MoeFFN(spec.layer_routing(num_experts or spec.moe.num_experts, evaluation), spec.capacity,
                spec.moe.dispatch, spec.model.init_std, spec.compute_dtype, spec.graph, name=name)


class Block(nn.Module):
  """One pre-LN block: x_BLD -> (x_BLD, aux or None). `experts` is None for a dense FFN; `call` (layers/moe_call.py)
  carries the pass's inference mode (evaluation routing and the decoding caches) and what the MoE layer needs from
  outside; `shared_attention`: WideNet's attention weights shared across depth (layers/shared.py), None: own.

  MomentumSMoE / AdamSMoE (layers/momentum.py): an MoE block with a `momentum_rule` takes the state `momentum`
  (float32 [B, L, D] arrays), adds the rule's step (p_l or gamma m_l / sqrt(v_l + eps)) instead of its FFN output
  (after residual dropout) to x, and returns the new state as aux['momentum']. Dense blocks ignore the state."""
  spec: ModelSpec
  momentum_rule: momentum_lib.LayerRule | None = None

  @nn.compact
  def __call__(self, x_BLD: jax.Array, experts: LayerExperts | None, token_mask_BL: jax.Array, train: bool,
               call: MoeCall = MoeCall(), momentum: momentum_lib.MomentumState | None = None,
               shared_attention: dict[str, jax.Array] | None = None,
               ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
    spec, m = self.spec, self.spec.model
    dropout = nn.Dropout(m.dropout_rate, deterministic=not train or m.dropout_rate == 0)
    h_BLD = LayerNorm(dtype=spec.compute_dtype, name='attention_norm')(x_BLD)
    # Attention-Aware MoE routing (layers/graph_routing.py): the MoE FFN also gets the head-averaged attention probs
    graph_attention = experts is not None and spec.graph.kind == 'attention'
    kernel = resolve_kernel(m.attention, m.dtype, m.dropout_rate, m.d_model // m.num_heads)
    h_BLD = CausalSelfAttention(m.num_heads, m.init_std, spec.out_init_std, m.dropout_rate,
                                spec.compute_dtype, kernel, name='attention')(
                                    h_BLD, train=train, inference=call.inference, weights=shared_attention,
                                    return_probs=graph_attention)
    if graph_attention:
      h_BLD, attention_BLM = h_BLD
      call = call.replace(attention_BLM=attention_BLM)
    x_BLD = x_BLD + dropout(h_BLD)
    x_BLD = nn.with_logical_constraint(x_BLD, ('batch', 'length', 'embed'))
    h_BLD = LayerNorm(dtype=spec.compute_dtype, name='ffn_norm')(x_BLD)
    aux = None
    if experts is None:
      h_BLD = DenseFFN(m.d_ff, m.init_std, spec.out_init_std, spec.compute_dtype, name='ffn')(h_BLD, train=train)
    else:
      moe_in_BLD = h_BLD   # E from the experts' shape: per layer under Pyramid-MoE (b_out: [(P,) E, D])
      h_BLD, aux = make_moe_ffn(spec, 'moe', experts.experts.b_out.shape[-2], evaluation=not train)(
          h_BLD, experts, token_mask_BL, train=train, call=call)
      if spec.moe.residual != 'none':   # Residual-MoE (layers/residual_moe.py): + this block's dense MLP
        h_BLD = residual_moe.residual_moe_output(
            spec.moe.residual, moe_in_BLD, h_BLD, d_ff=spec.expert_d_ff, init_std=m.init_std,
            out_init_std=spec.out_init_std, dtype=spec.compute_dtype, train=train)
    if momentum is None or self.momentum_rule is None:
      x_BLD = x_BLD + dropout(h_BLD)
    else:   # MomentumSMoE / AdamSMoE: the state's step replaces the (dropped-out) MoE output
      step_BLD, aux['momentum'] = momentum_lib.apply_rule(self.momentum_rule, momentum, dropout(h_BLD))
      x_BLD = x_BLD + step_BLD.astype(x_BLD.dtype)
    return nn.with_logical_constraint(x_BLD, ('batch', 'length', 'embed')), aux


class Decoder(nn.Module):
  """tokens_BL -> (final hidden states h_BLD, per-MoE-layer aux dicts in layer order).

  The output layer (h @ output_embedding^T) is applied by the model's loss, fused with the cross-entropy
  (samoe_jax/models/losses.py), or by `LanguageModel.logits`.
  """
  spec: ModelSpec

  def setup(self):
    spec, m = self.spec, self.spec.model
    self.token_embedding = self.param('token_embedding', initializers.normal(m.init_std, ('vocab', 'embed')),
                                      (m.vocab_size, m.d_model))
    self.position_embedding = self.param('position_embedding', initializers.normal(m.init_std, (None, 'embed')),
                                         (m.max_len, m.d_model))
    if not m.tie_embeddings:
      self.output_embedding = self.param('output_embedding', initializers.normal(m.init_std, ('vocab', 'embed')),
                                         (m.vocab_size, m.d_model))
    self.expert_pool = self.mixing_logits = None
    pool_lib.attach_pools(self, spec)   # SaMoE's pool(s) and mixing logits (layers/pool.py)
    # WideNet (layers/shared.py): one router / one attention for every block (None unless configured)
    self.shared_router = (SharedRouter(m.d_model, spec.moe.num_experts, m.init_std)
                          if spec.pool.share_router else None)
    self.shared_attention = (SharedAttention(m.d_model, m.num_heads, m.init_std, spec.out_init_std)
                             if m.share_attention else None)
    block_cls = remat_module(Block, m.remat, static_argnums=(4,))   # model.remat; `train` (arg 4) is static
    rules = dict(zip(spec.moe_layers, momentum_lib.layer_rules(spec.momentum, len(spec.moe_layers))))
    self.blocks = [block_cls(spec, momentum_rule=rules.get(i), name=f'block_{i}') for i in range(m.num_layers)]
    self.final_norm = LayerNorm(dtype=spec.compute_dtype)
    self.embedding_dropout = nn.Dropout(m.dropout_rate)

  def __call__(self, tokens_BL: jax.Array, token_mask_BL: jax.Array, *, train: bool, call: MoeCall = MoeCall(),
               experts: dict[int, LayerExperts] | None = None) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
    """call: the pass's MoeCall (layers/moe_call.py): call.inference (a 'step' takes tokens_B1 at positions
    inference.index_B) and SMoE-Dropout's call.active_k; the decoder adds the token ids (hash routing) and the
    shared router. experts: every MoE block's experts as `layer_experts()` returns them, mixed beforehand (e.g.
    once for many evaluation batches)."""
    spec = self.spec
    inference = call.inference
    length = tokens_BL.shape[1]
    if inference is not None and inference.cache == 'step':
      positions_BLD = jnp.take(self.position_embedding, inference.index_B[:, None], axis=0)
    else:
      positions_BLD = self.position_embedding[:length][None]
    x_BLD = (jnp.take(self.token_embedding, tokens_BL, axis=0) + positions_BLD).astype(spec.compute_dtype)
    x_BLD = self.embedding_dropout(x_BLD, deterministic=not train or spec.model.dropout_rate == 0)
    x_BLD = nn.with_logical_constraint(x_BLD, ('batch', 'length', 'embed'))
    layer_experts, weights = self.layer_experts() if experts is None else (experts, None)
    auxes = []
    # MomentumSMoE / AdamSMoE state, zeros at every forward pass (None when moe.momentum_smoe.kind='none')
    momentum = momentum_lib.init_state(spec.momentum, len(spec.moe_layers), x_BLD.shape)
    if spec.routing.needs_tokens and spec.moe_layers:
      call = call.replace(tokens_BL=tokens_BL)
    if self.shared_router is not None:   # WideNet's shared router (layers/shared.py)
      call = call.replace(shared_router_DE=self.shared_router())
    shared_attention = self.shared_attention() if self.shared_attention is not None else None
    for i, block in enumerate(self.blocks):
      # positional: `train` is static under remat
      x_BLD, aux = block(x_BLD, layer_experts.get(i), token_mask_BL, train, call, momentum=momentum,
                         shared_attention=shared_attention)
      if aux is not None and momentum is not None:
        momentum = aux.pop('momentum')
      if aux is not None:
        auxes.append(aux if weights is None else dict(aux, mixing_weights=weights[len(auxes)]))
    return self.final_norm(x_BLD), auxes

  def layer_experts(self) -> tuple[dict[int, LayerExperts], jax.Array | None]:
    """Per MoE block: its experts, mixed from the pool once per forward pass (so once per optimizer step) in a
    single contraction for all layers; and the mixing weights [L_moe, P] / [L_moe, E, P] (None when fixed)."""
    spec = self.spec
    if self.expert_pool is None:
      return {}, None
    # Fixed one-hot mixing: layer l uses its group's pool entry; learned: one contraction per group. Pyramid-MoE
    # groups (layers/pool.py): several groups give zero-padded weights [L_moe, P_max] / [L_moe, E_max, P_max].
    pools, logits = pool_lib.decoder_pools(self, spec)
    per_layer, weights = pool_lib.group_layer_experts(spec, spec.groups, pools, logits)
    # Gradient-flow probes (training/grad_stats.py): a zero added to each layer's effective experts W^(l) when the
    # 'perturbations' collection is passed to apply, so dL/dW^(l) comes out of the same backward pass; else a no-op.
    out = {b: LayerExperts(self.perturb(probe_name(b), per_layer[i][0]), per_layer[i][1])
           for i, b in enumerate(spec.moe_layers)}
    if spec.expert_maps:   # merged / pruned experts (config/expert_map.py): router output e -> stored map[e]
      out = {b: LayerExperts(expand_experts(out[b].experts, spec.expert_maps[i]))
             for i, b in enumerate(spec.moe_layers)}
    return out, weights


def expand_experts(experts: ExpertWeights, mapping: tuple[int, ...]) -> ExpertWeights:
  """One layer's stored experts (leading E') as its router's experts (leading E = len(mapping)): expert e is
  stored expert mapping[e], the same weights for every member of a group (so their gradients add up)."""
  index = jnp.asarray(mapping, jnp.int32)
  return jax.tree.map(lambda a: jnp.take(a, index, axis=0), experts)


def probe_name(block: int) -> str:
  """The 'perturbations' entry of MoE block `block`'s effective experts (see Decoder.layer_experts)."""
  return f'experts_block_{block}'

