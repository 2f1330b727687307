"""Analytic parameter counts and FLOPs for a config, without building the model (pure Python, instant at 52B).

Model (samoe_jax/models): GPT-3-style pre-LN decoder. Per block: LN (scale+bias), causal MHA (q, k, v, o kernels
[D, D] with biases), LN, and a dense GeLU FFN (w_in [D, F] + b_in, w_out [F, D] + b_out) or an MoE FFN (router
[D, E] without bias; experts from the pool). Token embedding [V, D] (tied with the output unless
model.tie_embeddings is False), learned positions [max_len, D], final LN. The SaMoE pool stores P x E experts
([P, E, D, F'] etc.); each MoE layer with learned mixing has logits alpha [P] ('layer') or [E, P] ('expert').

Parameter conventions:
  total          what is stored: non_expert + expert_pool + mixing_logits + routers.
  materialized   what a standard MoE of the same layout stores: every MoE layer's E effective experts separately
                 (non_expert + routers + L_moe * E * expert); equals total for a standard MoE.
  active_per_token  non_expert (INCLUDING the embedding and position tables, as DeepSpeed/Megatron count them)
                 + routers + top_k experts per MoE layer; 'active_non_embedding' drops the embedding/position
                 tables (Kaplan et al. convention). A dense model has total == active_per_token.
  reduction_factor  materialized / total (SaMoE's parameter saving over the standard MoE).

FLOP conventions (per token, forward; one multiply-add = 2 FLOPs; MaxText-style "model FLOPs"):
  matmuls only: 2 * (attention kernels 4 D^2 + dense FFN 2 D F) per block; biases, LayerNorm, GeLU, softmax and
  the embedding lookup are not counted. Attention scores and values: 4 * seq_len * D per block for full
  attention, of which the causal half is counted (2 * seq_len * D), as MaxText does. Logits: 2 * D * V.
  MoE layers: top_k experts per token (2 * 2 D F' each; capacity padding is not counted) plus the router 2 D E;
  output-space mixing runs P expert sets (an ablation). train = 3 x forward (backward = 2 x forward).
  SaMoE weight-space mixing is per step, not per token: 2 * P * E * (params per expert) per MoE layer forward
  ('mixing_per_step'; x3 in training), amortized over data.batch_size * data.seq_len tokens in
  'mixing_per_token'. Fixed mixing selects a pool entry and costs nothing.
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from samoe_jax.config.layer_plan import moe_layer_indices
from samoe_jax.layers.routing import expert_capacity


@dataclasses.dataclass(frozen=True)
class Sizes:
  """The sizes accounting needs, resolved from a config."""
  vocab: int
  d_model: int
  num_layers: int
  num_heads: int
  d_ff: int
  max_len: int
  tied: bool
  seq_len: int
  batch_size: int
  moe_layers: tuple[int, ...]
  num_experts: int
  top_k: int
  expert_d_ff: int
  pool_size: int
  mixing: str
  granularity: str
  space: str

  @property
  def num_moe(self) -> int:
    return len(self.moe_layers)

  @property
  def num_dense(self) -> int:
    return self.num_layers - self.num_moe

  @property
  def learned(self) -> bool:
    return self.num_moe > 0 and self.mixing == 'learned'


def resolve(config: ml_collections.ConfigDict) -> Sizes:
  m, moe, pool = config.model, config.moe, config.pool
  return Sizes(vocab=m.vocab_size, d_model=m.d_model, num_layers=m.num_layers, num_heads=m.num_heads,
               d_ff=m.d_ff, max_len=m.max_len, tied=bool(m.tie_embeddings), seq_len=config.data.seq_len,
               batch_size=config.data.batch_size, moe_layers=tuple(moe_layer_indices(m)),
               num_experts=moe.num_experts, top_k=moe.top_k, expert_d_ff=moe.expert_d_ff or m.d_ff,
               pool_size=pool.size, mixing=pool.mixing, granularity=pool.granularity, space=pool.space)


# ------------------------------------------------------------------------------------------------ parameters
def attention_params(d: int) -> int:
  """q, k, v, o kernels [D, D] and their biases [D]."""
  return 4 * d * d + 4 * d


def layer_norm_params(d: int) -> int:
  return 2 * d


def ffn_params(d: int, f: int) -> int:
  """One GeLU FFN (dense FFN or one expert): w_in [D, F] + b_in [F] + w_out [F, D] + b_out [D]."""
  return 2 * d * f + f + d


def embedding_params(s: Sizes) -> int:
  """Token table [V, D] (+ an output projection [D, V] when untied) and positions [max_len, D]."""
  return s.vocab * s.d_model * (1 if s.tied else 2) + s.max_len * s.d_model


def param_counts(config: ml_collections.ConfigDict) -> dict[str, int | float]:
  """Parameter counts by part (see the module docstring for the conventions)."""
  s = resolve(config)
  d = s.d_model
  per_block = attention_params(d) + 2 * layer_norm_params(d)
  embedding = embedding_params(s)
  non_expert = (embedding + layer_norm_params(d) + s.num_layers * per_block + s.num_dense * ffn_params(d, s.d_ff))
  per_expert = ffn_params(d, s.expert_d_ff) if s.num_moe else 0
  expert_pool = s.pool_size * s.num_experts * per_expert if s.num_moe else 0
  routers = s.num_moe * d * s.num_experts
  per_layer_logits = s.pool_size * (1 if s.granularity == 'layer' else s.num_experts)
  mixing_logits = s.num_moe * per_layer_logits if s.learned else 0
  total = non_expert + expert_pool + mixing_logits + routers
  materialized = non_expert + routers + s.num_moe * s.num_experts * per_expert
  active = non_expert + routers + s.num_moe * s.top_k * per_expert
  return {
      'total': total, 'non_expert': non_expert, 'expert_pool': expert_pool, 'mixing_logits': mixing_logits,
      'routers': routers, 'materialized': materialized, 'active_per_token': active,
      'active_non_embedding': active - embedding, 'embedding': embedding, 'params_per_expert': per_expert,
      'num_moe_layers': s.num_moe, 'reduction_factor': materialized / total,
  }


# ----------------------------------------------------------------------------------------------------- FLOPs
def mixing_flops_per_step(config: ml_collections.ConfigDict) -> int:
  """Forward FLOPs of SaMoE weight-space mixing per step: 2 * P * E * params_per_expert per MoE layer."""
  s = resolve(config)
  if not s.learned or s.space != 'weight':
    return 0
  return s.num_moe * 2 * s.pool_size * s.num_experts * ffn_params(s.d_model, s.expert_d_ff)


def flops_per_token(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Forward / train model FLOPs per token by part, plus the per-step SaMoE mixing cost (module docstring)."""
  s = resolve(config)
  d = s.d_model
  attention_proj = s.num_layers * 2 * 4 * d * d
  attention_scores = s.num_layers * 2 * s.seq_len * d      # causal half of 2 (QK^T, PV) * 2 * seq_len * D
  dense_ffn = s.num_dense * 2 * 2 * d * s.d_ff
  expert = 2 * 2 * d * s.expert_d_ff
  if s.learned and s.space == 'output':                    # P expert sets per slot, then a P-way weighted sum
    expert = s.pool_size * (expert + 2 * d)
  moe_experts = s.num_moe * s.top_k * expert
  router = s.num_moe * 2 * d * s.num_experts
  logits = 2 * d * s.vocab
  forward = attention_proj + attention_scores + dense_ffn + moe_experts + router + logits
  mixing_step = mixing_flops_per_step(config)
  mixing_token = mixing_step / (s.batch_size * s.seq_len)
  return {
      'forward': forward, 'train': 3 * forward, 'attention_proj': attention_proj,
      'attention_scores': attention_scores, 'dense_ffn': dense_ffn, 'moe_experts': moe_experts, 'router': router,
      'logits': logits, 'mixing_per_step': mixing_step, 'mixing_per_token': mixing_token,
      'train_with_mixing': 3 * (forward + mixing_token),
  }


def flops_per_step(config: ml_collections.ConfigDict) -> dict[str, float]:
  """FLOPs of one step over data.batch_size * data.seq_len tokens, SaMoE mixing included (forward and train)."""
  per_token = flops_per_token(config)
  tokens = config.data.batch_size * config.data.seq_len
  mixing = per_token['mixing_per_step']
  return {
      'tokens': tokens,
      'forward': per_token['forward'] * tokens + mixing,
      'train': per_token['train'] * tokens + 3 * mixing,
      'mixing_forward': mixing,
      'mixing_train': 3 * mixing,
  }


# -------------------------------------------------------------------------------------------------- capacity
def capacity(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Routing group size T, groups per global batch, and expert capacity C per group in training and evaluation."""
  moe = config.moe
  tokens = moe.group_size or config.data.seq_len
  groups = config.data.batch_size * config.data.seq_len // tokens
  cap = lambda cf: expert_capacity(tokens, moe.num_experts, moe.top_k, cf, moe.min_capacity)
  return {'group_tokens': tokens, 'groups_per_batch': groups, 'train': cap(moe.capacity_factor_train),
          'eval': cap(moe.capacity_factor_eval)}


def pool_size_sweep(config: ml_collections.ConfigDict, sizes: tuple[int, ...] = (1, 2, 3, 4, 6)
                    ) -> list[dict[str, float]]:
  """Stored parameters and reduction factor over the standard MoE for several pool sizes (learned mixing)."""
  rows = []
  for p in sizes:
    c = ml_collections.ConfigDict(config.to_dict())
    c.pool.size = p
    c.pool.mixing = 'learned'
    counts = param_counts(c)
    rows.append({'pool_size': p, 'total': counts['total'], 'materialized': counts['materialized'],
                 'reduction_factor': counts['reduction_factor']})
  return rows
