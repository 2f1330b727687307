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
  MomentumSMoE / AdamSMoE (moe.momentum_smoe.kind, layers/momentum.py) add no parameters; their state updates are
  elementwise, so they are not counted either ('momentum_summary' reports them for information).
  WideNet sharing (layers/shared.py): pool.share_router stores one router [D, E] and model.share_attention one
  attention for all blocks; both are counted once in total (and materialized), but once per use in
  active_per_token (like tied experts, which count top_k per MoE layer), so active_per_token and the FLOPs are
  those of the unshared model: every block still runs its router and attention.
  PR-MoE (docs/methods/pr_moe.md): Pyramid-MoE (moe.experts_per_layer, config/pyramid.py) stores sum_g P_g E_g experts
  (groups of MoE layers with equal E) and routers [D, E_l]; materialized counts sum_l E_l experts; the router
  FLOPs are 2 D E_l per layer. Residual-MoE (moe.residual, layers/residual_moe.py) adds one expert-shaped dense
  MLP per MoE layer (2 D F' + F' + D parameters; + W_c [D, 2] and b_c [2] = 2D + 2 for 'learned_softmax') to
  non_expert (so to active_per_token too; 'residual_moe' reports the sum) and 2 * 2 D F' (+ 2 * 2 D) FLOPs per
  token per MoE layer ('residual_moe' in flops_per_token).
  Similarity- / Attention-Aware routing (moe.graph.kind, layers/graph_routing.py, docs/methods/graph_routing.md): W_s [D, d_s]
  (learned metric) and theta [1] (learned lambda) per MoE layer count as routers; per token and MoE layer the
  mixing S @ p costs 2 L E and similarity's z z^T 2 L d (+ x W_s: 2 D d_s) FLOPs ('graph_routing'; full L x L,
  like the attention scores before halving; the attention matrix itself is the block's).
  Low-rank plus sparse experts (low_rank_sparse.rank = R > 0, layers/low_rank_experts.py, docs/compression.md):
  each expert matrix [M, N] is stored as U [M, R], V [R, N] and a dense array S [M, N] whose pruned entries are
  zeros, so the stored arrays hold 2 R (D + F') more parameters per expert than a dense expert ('expert_pool',
  as param_summary counts them), while U, V, the biases and the (1 - low_rank_sparse.sparsity) kept entries of S
  are what a sparse format stores ('expert_pool_compressed', 'total_compressed'; the measured fraction after
  fine-tuning is reported by the compress tool). The forward pass rebuilds W = U V + S once per step
  ('low_rank_rebuild_per_step', 2 * 2 R D F' per stored expert) and runs the dense experts, so 'forward' counts
  dense experts; 'moe_experts_low_rank_sparse' is what a low-rank + sparse kernel would execute per token
  (2 * 2 (R (D + F') + density D F') per routed expert).
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from samoe_jax.config import expert_map, pyramid
from samoe_jax.config.layer_plan import moe_layer_indices
from samoe_jax.config.sections import section_values
from samoe_jax.layers import momentum as momentum_lib
from samoe_jax.layers import ragged, residual_moe
from samoe_jax.layers.graph_routing import GraphConfig, graph_flops_per_token, graph_params_per_layer
from samoe_jax.layers.k_schedule import KSchedule
from samoe_jax.layers.mixing import Mixing
from samoe_jax.layers.token_choice import expert_capacity
from samoe_jax.models.spec import ModelSpec


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
  mixing: Mixing                    # the pool's mixing scheme (layers/mixing.py)
  share_router: bool = False        # pool.share_router (WideNet): one router [D, E] for all MoE layers
  share_attention: bool = False     # model.share_attention (WideNet): one attention for all blocks
  # PR-MoE (docs/methods/pr_moe.md): MoE layers grouped by expert count (config/pyramid.py) and moe.residual
  groups: tuple[pyramid.ExpertGroup, ...] = ()
  residual: str = 'none'
  # Routing strategies (layers/routing_strategies.py): a router bias [E] per router; hash routing has no router
  router_bias: bool = False
  hash_routing: bool = False
  # Merged / pruned experts (config/expert_map.py): each MoE layer's router outputs (E_l without a map)
  router_outputs: tuple[int, ...] = ()
  # Low-rank plus sparse experts (layers/low_rank_experts.py): rank R (0 = dense) and the final fraction of S pruned
  expert_rank: int = 0
  sparsity: float = 0.0
  graph: GraphConfig | None = None                     # moe.graph (layers/graph_routing.py)
  momentum: momentum_lib.MomentumConfig | None = None  # moe.momentum_smoe (layers/momentum.py)

  @property
  def layer_experts(self) -> int:
    """sum over MoE layers of E_l (L_moe * E without pyramid)."""
    return sum(len(g.layers) * g.num_experts for g in self.groups)

  @property
  def stored_experts(self) -> int:
    """Experts the pools store: sum over groups of P_g * E_g (P * E without pyramid)."""
    return sum(g.pool_size * g.num_experts for g in self.groups)

  @property
  def num_moe(self) -> int:
    return len(self.moe_layers)

  @property
  def num_dense(self) -> int:
    return self.num_layers - self.num_moe

  @property
  def learned(self) -> bool:
    """MoE layers with learned mixing logits."""
    return self.num_moe > 0 and self.mixing.learned

  @property
  def mixes_weights(self) -> bool:
    """Learned weight-space mixing: every layer's experts are formed from the pool once per step."""
    return self.num_moe > 0 and self.mixing.mixes_weights

  @property
  def mixes_outputs(self) -> bool:
    """Learned output-space mixing: every token runs P expert sets."""
    return self.num_moe > 0 and self.mixing.mixes_outputs


def resolve(config: ml_collections.ConfigDict) -> Sizes:
  """The sizes of the model spec the decoder is built from (models/spec.py), plus the data's batch shape."""
  spec = ModelSpec.from_config(config)
  m, moe, pool = spec.model, spec.moe, spec.pool
  return Sizes(vocab=m.vocab_size, d_model=m.d_model, num_layers=m.num_layers, num_heads=m.num_heads,
               d_ff=m.d_ff, max_len=m.max_len, tied=bool(m.tie_embeddings), seq_len=config.data.seq_len,
               batch_size=config.data.batch_size, moe_layers=spec.moe_layers,
               num_experts=moe.num_experts, top_k=moe.top_k, expert_d_ff=spec.expert_d_ff,
               pool_size=pool.size, mixing=spec.mixing,
               share_router=bool(pool.share_router) and bool(spec.moe_layers),
               share_attention=bool(m.share_attention), groups=spec.groups, residual=moe.residual,
               router_bias=bool(moe.router_bias), hash_routing=not spec.routing.has_router,
               router_outputs=_router_outputs(spec), expert_rank=spec.expert_rank,
               sparsity=float(section_values(config, 'low_rank_sparse')['sparsity']), graph=spec.graph,
               momentum=spec.momentum)


def _router_outputs(spec: ModelSpec) -> tuple[int, ...]:
  """Each MoE layer's router outputs: E_l, or the width of its expert map (config/expert_map.py)."""
  counts = [0] * len(spec.moe_layers)
  for group in spec.groups:
    for layer in group.layers:
      counts[layer] = group.num_experts
  return expert_map.router_widths(spec.expert_maps, tuple(counts))


def attention_params(d: int) -> int:
  """q, k, v, o kernels [D, D] and their biases [D]."""
  return 4 * d * d + 4 * d


def layer_norm_params(d: int) -> int:
  return 2 * d


def ffn_params(d: int, f: int) -> int:
  """One GeLU FFN (dense FFN or one expert): w_in [D, F] + b_in [F] + w_out [F, D] + b_out [D]."""
  return 2 * d * f + f + d


def low_rank_extra_params(s: Sizes) -> int:
  """U and V of both expert matrices, per expert: 2 R (D + F') (0 for dense experts)."""
  return 2 * s.expert_rank * (s.d_model + s.expert_d_ff)


def compressed_expert_params(s: Sizes) -> float:
  """One expert as a sparse format stores it: U, V, biases and the kept (1 - sparsity) entries of both S."""
  d, f = s.d_model, s.expert_d_ff
  if not s.expert_rank:
    return ffn_params(d, f)
  return low_rank_extra_params(s) + (1.0 - s.sparsity) * 2 * d * f + f + d


def embedding_params(s: Sizes) -> int:
  """Token table [V, D] (+ an output projection [D, V] when untied) and positions [max_len, D]."""
  return s.vocab * s.d_model * (1 if s.tied else 2) + s.max_len * s.d_model


def param_counts(config: ml_collections.ConfigDict) -> dict[str, int | float]:
  """Parameter counts by part (see the module docstring for the conventions)."""
  s = resolve(config)
  d = s.d_model
  # WideNet sharing: a shared attention / router is stored (and counted, active per token too) once
  attention = (1 if s.share_attention else s.num_layers) * attention_params(d)
  embedding = embedding_params(s)
  non_expert = (embedding + layer_norm_params(d) + attention + s.num_layers * 2 * layer_norm_params(d)
                + s.num_dense * ffn_params(d, s.d_ff))
  per_expert = ffn_params(d, s.expert_d_ff) + low_rank_extra_params(s) if s.num_moe else 0
  expert_pool = s.stored_experts * per_expert   # Pyramid-MoE: sum_g P_g E_g experts
  router_in = d + (1 if s.router_bias else 0)   # moe.router_bias adds b [E] to each router
  routers = min(s.num_moe, 1) * d * s.num_experts if s.share_router else router_in * sum(s.router_outputs)
  routers = 0 if s.hash_routing else routers    # Hash Layers: no router
  # Similarity- / Attention-Aware routing (layers/graph_routing.py): W_s [D, d_s] and theta [1] per MoE layer
  routers += s.num_moe * graph_params_per_layer(s.graph, d)
  mixing_logits = sum(len(g.layers) * g.pool_size * (1 if s.mixing.granularity == 'layer' else g.num_experts)
                      for g in s.groups) if s.learned else 0
  residual = s.num_moe * residual_moe.residual_params(s.residual, d, s.expert_d_ff)   # Residual-MoE MLP (+ W_c)
  non_expert += residual
  total = non_expert + expert_pool + mixing_logits + routers
  materialized = non_expert + routers + s.layer_experts * per_expert
  active = non_expert + routers + s.num_moe * s.top_k * per_expert
  if s.share_attention:   # a shared weight is used (and counted) once per block it runs in
    active += (s.num_layers - 1) * attention_params(d)
  if s.share_router and s.num_moe:
    active += (s.num_moe - 1) * d * s.num_experts
  return {
      'total': total, 'non_expert': non_expert, 'expert_pool': expert_pool, 'mixing_logits': mixing_logits,
      'routers': routers, 'materialized': materialized, 'active_per_token': active,
      'active_non_embedding': active - embedding, 'embedding': embedding, 'params_per_expert': per_expert,
      'num_moe_layers': s.num_moe, 'reduction_factor': materialized / total, 'residual_moe': residual,
      'expert_pool_compressed': s.stored_experts * compressed_expert_params(s) if s.num_moe else 0,
      'total_compressed': total - expert_pool + (s.stored_experts * compressed_expert_params(s) if s.num_moe else 0),
  }


# ----------------------------------------------------------------------------------------------------- FLOPs
def mixing_flops_per_step(config: ml_collections.ConfigDict) -> int:
  """Forward FLOPs of SaMoE weight-space mixing per step: 2 * P * E * params_per_expert per MoE layer."""
  s = resolve(config)
  if not s.mixes_weights:
    return 0
  return sum(len(g.layers) * 2 * g.pool_size * g.num_experts for g in s.groups) * ffn_params(s.d_model,
                                                                                            s.expert_d_ff)


def flops_per_token(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Forward / train model FLOPs per token by part, plus the per-step SaMoE mixing cost (module docstring)."""
  s = resolve(config)
  d = s.d_model
  attention_proj = s.num_layers * 2 * 4 * d * d
  attention_scores = s.num_layers * 2 * s.seq_len * d      # causal half of 2 (QK^T, PV) * 2 * seq_len * D
  dense_ffn = s.num_dense * 2 * 2 * d * s.d_ff
  expert = 2 * 2 * d * s.expert_d_ff
  if s.mixes_outputs:                                      # P expert sets per slot, then a P-way weighted sum
    expert = s.pool_size * (expert + 2 * d)
  moe_experts = s.num_moe * s.top_k * expert
  router = 0 if s.hash_routing else 2 * d * sum(s.router_outputs)   # Pyramid-MoE: each router [D, E_l]; hash: none
  residual = s.num_moe * residual_moe.residual_flops(s.residual, d, s.expert_d_ff)   # Residual-MoE dense MLP
  graph = s.num_moe * graph_flops_per_token(s.graph, d, s.seq_len,
                                            s.num_experts)   # graph routing: S @ p (+ similarity z z^T)
  logits = 2 * d * s.vocab
  forward = attention_proj + attention_scores + dense_ffn + moe_experts + router + residual + graph + logits
  mixing_step = mixing_flops_per_step(config)
  mixing_token = mixing_step / (s.batch_size * s.seq_len)
  low_rank = {}
  if s.expert_rank and s.num_moe:   # layers/low_rank_experts.py (module docstring)
    factored = 2 * 2 * (s.expert_rank * (d + s.expert_d_ff) + (1.0 - s.sparsity) * d * s.expert_d_ff)
    low_rank = {'moe_experts_low_rank_sparse': s.num_moe * s.top_k * factored,
                'low_rank_rebuild_per_step': s.stored_experts * 2 * 2 * s.expert_rank * d * s.expert_d_ff}
  return {**low_rank,
      'forward': forward, 'train': 3 * forward, 'attention_proj': attention_proj,
      'attention_scores': attention_scores, 'dense_ffn': dense_ffn, 'moe_experts': moe_experts, 'router': router,
      'logits': logits, 'residual_moe': residual, 'graph_routing': graph,
      'mixing_per_step': mixing_step, 'mixing_per_token': mixing_token,
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


def momentum_summary(config: ml_collections.ConfigDict) -> dict[str, object] | None:
  """MomentumSMoE / AdamSMoE (docs/methods/momentum.md): the setting, its parameters (none) and the elementwise FLOPs per token
  of the state updates (forward; not included in flops_per_token, which counts matmuls only). None when off."""
  sizes = resolve(config)
  momentum = sizes.momentum
  if not momentum.enabled:
    return None
  num_moe = sizes.num_moe
  return {'kind': momentum.kind, 'setting': momentum_lib.describe_momentum(momentum), 'params': 0,
          'elementwise_flops_per_token': momentum_lib.elementwise_flops_per_token(momentum, num_moe,
                                                                                  config.model.d_model),
          'state_floats_per_token': momentum_lib.state_vectors(momentum, num_moe) * config.model.d_model}


def k_schedule_summary(config: ml_collections.ConfigDict) -> dict[str, object] | None:
  """SMoE-Dropout (docs/methods/smoe_dropout.md, layers/k_schedule.py): the k schedule and the evaluation k / gate. None when
  both are off (moe.smoe_dropout.kind='constant', moe.eval_top_k=0, moe.eval_gate='') or the model is dense.

  param_counts / flops_per_token count moe.top_k experts (= k_max, the most a token uses in training); here:
  'mean_train_k' (k averaged over train.steps, what training's model FLOPs scale with), 'train_flops_per_token'
  at that mean k, and 'eval_active_per_token' / 'eval_forward_flops_per_token' at moe.eval_top_k.
  """
  moe = config.moe
  kind, eval_k, eval_gate = section_values(config, 'moe')['smoe_dropout']['kind'], moe.eval_top_k, moe.eval_gate
  if not moe_layer_indices(config.model) or (kind == 'constant' and not eval_k and not eval_gate):
    return None
  schedule = KSchedule.from_config(config)
  mean_k = schedule.mean_k(config.train.steps)
  def with_k(k: float) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
    c.moe.top_k = k   # a mean k may be fractional: the counts are linear in k
    return c

  at_k = with_k(eval_k or moe.top_k)
  return {'schedule': schedule.describe(), 'kind': kind, 'k_start': int(schedule.numpy(0)),
          'k_end': int(schedule.numpy(schedule.total_steps)), 'k_schedule_steps': schedule.total_steps,
          'mean_train_k': mean_k,
          'train_flops_per_token': flops_per_token(with_k(mean_k))['train'],
          'eval_top_k': eval_k or moe.top_k, 'eval_gate': eval_gate or moe.gate,
          'eval_active_per_token': param_counts(at_k)['active_per_token'],
          'eval_forward_flops_per_token': flops_per_token(at_k)['forward']}


# -------------------------------------------------------------------------------------------------- capacity
def capacity(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Routing group size T, groups per global batch, and expert capacity C per group in training and evaluation.
  Dropless experts (moe.dispatch='ragged') have no capacity: 'dropless' is True and C is T (every choice fits)."""
  moe = config.moe
  tokens = moe.group_size or config.data.seq_len
  groups = config.data.batch_size * config.data.seq_len // tokens
  if moe.get('dispatch') == ragged.NAME:
    return {'group_tokens': tokens, 'groups_per_batch': groups, 'train': tokens, 'eval': tokens, 'dropless': True}
  formula = moe.capacity_formula   # layers/capacity.py
  cap = lambda cf: expert_capacity(tokens, moe.num_experts, moe.top_k, cf, moe.min_capacity, formula)
  out = {'group_tokens': tokens, 'groups_per_batch': groups, 'train': cap(moe.capacity_factor_train),
         'eval': cap(moe.capacity_factor_eval)}
  counts = sorted(set(resolve(config).router_outputs))   # routed over: E_l, or the expert map's router outputs
  if counts and counts != [moe.num_experts]:   # Pyramid-MoE: C per expert count E_g (train, eval)
    out['by_num_experts'] = {
        n: tuple(expert_capacity(tokens, n, moe.top_k, cf, moe.min_capacity, formula)
                 for cf in (moe.capacity_factor_train, moe.capacity_factor_eval)) for n in counts}
  return out


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
