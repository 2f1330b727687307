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
from samoe_jax.layers import momentum as momentum_lib
from samoe_jax.layers.attention import CausalSelfAttention
from samoe_jax.layers.experts import ExpertWeights
from samoe_jax.layers.inference import InferenceMode
from samoe_jax.layers.mlp import DenseFFN, LayerNorm
from samoe_jax.layers import pool_groups, residual_moe
from samoe_jax.layers.moe import MoeFFN
from samoe_jax.layers.shared import SharedAttention, SharedRouter, SharedWeights
from samoe_jax.models.remat import remat_module
from samoe_jax.models.spec import ModelSpec


def make_moe_ffn(spec: ModelSpec, name: str, num_experts: int | None = None, evaluation: bool = False) -> MoeFFN:
  """num_experts: this layer's E (Pyramid-MoE, config/pyramid.py); None: moe.num_experts. evaluation: a train=False
  forward pass, which routes with moe.eval_top_k experts and moe.eval_gate when they are set (SMoE-Dropout,
  layers/k_schedule.py); parameters do not depend on either."""
  policy = spec.routing_policy.moe_kwargs()
  top_k = spec.top_k
  if evaluation:
    top_k = spec.eval_top_k or spec.top_k
    policy['gate'] = spec.eval_gate or policy['gate']
  return MoeFFN(
      num_experts=num_experts or spec.num_experts, top_k=top_k, capacity_factor_train=spec.capacity_factor_train,
      capacity_factor_eval=spec.capacity_factor_eval, min_capacity=spec.min_capacity,
      group_size=spec.group_size, dispatch=spec.dispatch, init_std=spec.init_std, priority=spec.slot_priority,
      dtype=spec.compute_dtype, eval_group_size=spec.eval_group_size, name=name,
      graph=spec.graph,   # Similarity- / Attention-Aware routing (layers/graph_routing.py)
      **policy)   # routing policies (layers/routing_policy.py)


@dataclasses.dataclass(frozen=True)
class LayerExperts:
  """What one MoE block receives: its effective experts, or (output-space mixing) the pool and its weights."""
  experts: ExpertWeights
  output_mix_weights: jax.Array | None = None


jax.tree_util.register_dataclass(LayerExperts, data_fields=['experts', 'output_mix_weights'], meta_fields=[])


class Block(nn.Module):
  """One pre-LN block: x_BLD -> (x_BLD, aux or None). `experts` is None for a dense FFN; `inference` (an
  InferenceMode, layers/inference.py) selects evaluation routing and the decoding caches.

  MomentumSMoE / AdamSMoE (layers/momentum.py): an MoE block with a `momentum_rule` takes the state `momentum`
  (float32 [B, L, D] arrays), adds the rule's step (p_l or gamma m_l / sqrt(v_l + eps)) instead of its FFN output
  (after residual dropout) to x, and returns the new state as aux['momentum']. Dense blocks ignore the state."""
  spec: ModelSpec
  momentum_rule: momentum_lib.LayerRule | None = None

  @nn.compact
  def __call__(self, x_BLD: jax.Array, experts: LayerExperts | None, token_mask_BL: jax.Array,
               train: bool, inference: InferenceMode | None = None,
               momentum: momentum_lib.MomentumState | None = None,
               shared: SharedWeights | None = None,
               tokens_BL: jax.Array | None = None,   # input token ids, for moe.routing='hash' (else None)
               active_k: jax.Array | None = None,    # SMoE-Dropout: traced int32 k of the train step (else None)
               ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
    """shared: WideNet's router / attention weights shared across depth (layers/shared.py); None: all own."""
    spec = self.spec
    dropout = nn.Dropout(spec.dropout_rate, deterministic=not train or spec.dropout_rate == 0)
    h_BLD = LayerNorm(dtype=spec.compute_dtype, name='attention_norm')(x_BLD)
    # Attention-Aware MoE routing (layers/graph_routing.py): the MoE FFN also gets the head-averaged attention probs
    graph_attention = experts is not None and spec.graph.kind == 'attention'
    h_BLD = CausalSelfAttention(spec.num_heads, spec.init_std, spec.out_init_std, spec.dropout_rate,
                                spec.compute_dtype, name='attention')(
                                    h_BLD, train=train, inference=inference,
                                    weights=shared.attention if shared is not None else None,
                                    return_probs=graph_attention)
    h_BLD, attention_BLM = h_BLD if graph_attention else (h_BLD, None)
    x_BLD = x_BLD + dropout(h_BLD)
    x_BLD = nn.with_logical_constraint(x_BLD, ('batch', 'length', 'embed'))
    h_BLD = LayerNorm(dtype=spec.compute_dtype, name='ffn_norm')(x_BLD)
    aux = None
    if experts is None:
      h_BLD = DenseFFN(spec.d_ff, spec.init_std, spec.out_init_std, spec.compute_dtype, name='ffn')(
          h_BLD, train=train)
    else:
      moe_in_BLD = h_BLD   # E from the experts' shape: per layer under Pyramid-MoE (b_out: [(P,) E, D])
      h_BLD, aux = make_moe_ffn(spec, 'moe', experts.experts.b_out.shape[-2], evaluation=not train)(
          h_BLD, experts.experts, token_mask_BL, train=train,
          output_mix_weights=experts.output_mix_weights, inference=inference,
          router_DE=shared.router_DE if shared is not None else None, tokens_BL=tokens_BL, active_k=active_k,
          attention_BLM=attention_BLM)
      if spec.residual != 'none':   # Residual-MoE (layers/residual_moe.py): + this block's dense MLP
        h_BLD = residual_moe.residual_moe_output(
            spec.residual, moe_in_BLD, h_BLD, d_ff=spec.expert_d_ff, init_std=spec.init_std,
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
    spec = self.spec
    self.token_embedding = self.param('token_embedding', initializers.normal(spec.init_std, ('vocab', 'embed')),
                                      (spec.vocab_size, spec.d_model))
    self.position_embedding = self.param('position_embedding', initializers.normal(spec.init_std, (None, 'embed')),
                                         (spec.max_len, spec.d_model))
    if not spec.tie_embeddings:
      self.output_embedding = self.param('output_embedding', initializers.normal(spec.init_std, ('vocab', 'embed')),
                                         (spec.vocab_size, spec.d_model))
    self.expert_pool = self.mixing_logits = None
    for group in spec.groups:   # one pool (+ mixing logits) per expert count; one group: the standard names
      pool, logits = pool_groups.group_modules(spec, group)
      setattr(self, group.pool_name, pool)
      setattr(self, group.mixing_name, logits)
    # WideNet (layers/shared.py): one router / one attention for every block (None unless configured)
    self.shared_router = (SharedRouter(spec.d_model, spec.num_experts, spec.init_std)
                          if spec.share_router else None)
    self.shared_attention = (SharedAttention(spec.d_model, spec.num_heads, spec.init_std, spec.out_init_std)
                             if spec.share_attention else None)
    block_cls = remat_module(Block, spec.remat, static_argnums=(4,))   # model.remat; `train` (arg 4) is static
    rules = dict(zip(spec.moe_layers, momentum_lib.layer_rules(spec.momentum, len(spec.moe_layers))))  # §7
    self.blocks = [block_cls(spec, momentum_rule=rules.get(i), name=f'block_{i}') for i in range(spec.num_layers)]
    self.final_norm = LayerNorm(dtype=spec.compute_dtype)
    self.embedding_dropout = nn.Dropout(spec.dropout_rate)

  def __call__(self, tokens_BL: jax.Array, token_mask_BL: jax.Array, *, train: bool,
               inference: InferenceMode | None = None,
               experts: dict[int, LayerExperts] | None = None,
               active_k: jax.Array | None = None) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
    """inference: see Block (a 'step' takes tokens_B1 at positions inference.index_B); experts: every MoE block's
    experts as `layer_experts()` returns them, mixed beforehand (e.g. once for many evaluation batches);
    active_k: SMoE-Dropout's k of the train step, int32 [] in [1, moe.top_k] for every MoE layer (None: top_k)."""
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
    # MomentumSMoE / AdamSMoE state, zeros at every forward pass (None when moe.momentum='none')
    momentum = momentum_lib.init_state(spec.momentum, len(spec.moe_layers), x_BLD.shape)
    shared = None   # WideNet's shared router / attention (layers/shared.py)
    if self.shared_router is not None or self.shared_attention is not None:
      shared = SharedWeights(self.shared_router() if self.shared_router is not None else None,
                             self.shared_attention() if self.shared_attention is not None else None)
    for i, block in enumerate(self.blocks):
      # positional: `train` is static under remat
      x_BLD, aux = block(x_BLD, layer_experts.get(i), token_mask_BL, train, inference, momentum=momentum,
                         shared=shared,
                         tokens_BL=tokens_BL if spec.routing_policy.routing_kind == 'hash' else None,
                         active_k=active_k)
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
    # groups (layers/pool_groups.py): several groups give zero-padded weights [L_moe, P_max] / [L_moe, E_max, P_max].
    groups = spec.groups
    logits = [getattr(self, g.mixing_name) for g in groups]
    per_layer, weights = pool_groups.group_layer_experts(
        spec, groups, [getattr(self, g.pool_name)() for g in groups], [m() if m is not None else None for m in logits])
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

