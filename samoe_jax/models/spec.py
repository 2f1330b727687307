"""ModelSpec: the frozen, typed view of a ConfigDict that the model is built from."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_collections

from samoe_jax.config.layer_plan import moe_layer_indices, pool_assignment
from samoe_jax.config.expert_map import parse_expert_map
from samoe_jax.config.pyramid import ExpertGroup, expert_groups, layer_entries, min_experts, parse_experts_per_layer
from samoe_jax.layers.graph_routing import GraphConfig
from samoe_jax.layers.momentum import MomentumConfig
from samoe_jax.layers.routing_policy import RoutingPolicy
from samoe_jax.models.remat import check_remat

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Everything the decoder needs, resolved: the MoE layer indices and each MoE layer's pool entry."""
  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  d_ff: int
  max_len: int
  dropout_rate: float
  init_std: float
  dtype: str
  tie_embeddings: bool
  moe_layers: tuple[int, ...]          # block indices with an MoE FFN
  pool_entry: tuple[int, ...]          # per MoE layer: fixed pool entry, or the one-hot init's entry
  num_experts: int
  top_k: int
  capacity_factor_train: float
  capacity_factor_eval: float
  min_capacity: int
  group_size: int                      # resolved: 0 in the config means one sequence
  eval_group_size: int                 # evaluation routing run: min(group_size, data.seq_len) (layers/inference.py)
  expert_d_ff: int
  dispatch: str
  slot_priority: str
  pool_size: int
  mixing: str
  granularity: str
  space: str
  temperature: float
  mixing_init: str
  one_hot_scale: float
  lb_loss_coef: float
  z_loss_coef: float
  remat: str = 'none'                  # activation rematerialisation per block: 'none' | 'block' | 'dots' (remat.py)
  momentum: MomentumConfig = MomentumConfig()   # MomentumSMoE / AdamSMoE state across MoE layers (layers/momentum.py)
  # WideNet sharing and the SaMoE mixing-entropy regulariser (layers/shared.py, docs/methods/sharing.md)
  share_router: bool = False           # pool.share_router: one router [D, E] for every MoE layer
  share_attention: bool = False        # model.share_attention: one set of attention weights for every block
  entropy_coef: float = 0.0            # pool.entropy_coef: coef * mean H(softmax(alpha / tau)) added to the loss
  # PR-MoE (docs/methods/pr_moe.md; config/pyramid.py, layers/residual_moe.py, docs/methods/pr_moe.md)
  expert_groups: tuple[ExpertGroup, ...] = ()   # moe.experts_per_layer: MoE layers grouped by expert count
  residual: str = 'none'               # moe.residual: 'none' | 'sum' | 'learned_softmax' (Residual-MoE)
  # Merged / pruned experts (config/expert_map.py, docs/compression.md): per MoE layer, router output -> stored
  # expert; () = identity
  expert_maps: tuple[tuple[int, ...], ...] = ()
  # MC-SMoE / LoSparse compression (layers/low_rank_experts.py, docs/compression.md): experts stored as U V + S
  # with U V of rank expert_rank; 0 = dense experts
  expert_rank: int = 0
  # Routing policies (docs/methods/routing.md, §6; layers/routing_policy.py, docs/methods/routing.md)
  routing_policy: RoutingPolicy = RoutingPolicy()
  # SMoE-Dropout (docs/methods/smoe_dropout.md; layers/k_schedule.py, docs/methods/smoe_dropout.md): k and gate of the evaluation
  # forward passes (train=False: validation, scoring, decoding); 0 / '' = top_k / routing_policy.gate
  eval_top_k: int = 0
  eval_gate: str = ''
  # Similarity- / Attention-Aware (S)MoE (docs/methods/graph_routing.md; layers/graph_routing.py, docs/methods/graph_routing.md)
  graph: GraphConfig = GraphConfig()

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def groups(self) -> tuple[ExpertGroup, ...]:
    """The expert groups (config/pyramid.py); one group of num_experts over every MoE layer by default."""
    if self.expert_groups or not self.moe_layers:
      return self.expert_groups
    return (ExpertGroup(0, self.num_experts, tuple(range(len(self.moe_layers))), self.pool_size, self.pool_entry),)

  @property
  def out_init_std(self) -> float:
    """GPT-2/3 scale residual output projections by 1/sqrt(2 * num_layers)."""
    return self.init_std / (2 * self.num_layers) ** 0.5

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> 'ModelSpec':
    m, moe, pool = config.model, config.moe, config.pool
    moe_layers = tuple(moe_layer_indices(m))
    entries = tuple(pool_assignment(len(moe_layers), pool.size, pool.assignment)) if moe_layers else ()
    counts = parse_experts_per_layer(   # Pyramid-MoE (config/pyramid.py)
        moe.get('experts_per_layer', ''), len(moe_layers), moe.num_experts, min_experts(moe)) if moe_layers else ()
    groups = tuple(expert_groups(counts, pool.size, pool.assignment)) if moe_layers else ()
    entries = layer_entries(list(groups), len(moe_layers)) if len(groups) > 1 else entries
    return cls(
        vocab_size=m.vocab_size, d_model=m.d_model, num_layers=m.num_layers, num_heads=m.num_heads,
        d_ff=m.d_ff, max_len=m.max_len, dropout_rate=m.dropout_rate, init_std=m.init_std, dtype=m.dtype,
        tie_embeddings=m.tie_embeddings,
        moe_layers=moe_layers, pool_entry=entries, num_experts=moe.num_experts, top_k=moe.top_k,
        capacity_factor_train=moe.capacity_factor_train, capacity_factor_eval=moe.capacity_factor_eval,
        min_capacity=moe.min_capacity, group_size=moe.group_size or config.data.seq_len,
        eval_group_size=min(moe.group_size or config.data.seq_len, config.data.seq_len),
        expert_d_ff=moe.expert_d_ff or m.d_ff, dispatch=moe.dispatch,
        slot_priority=moe.slot_priority, pool_size=pool.size, mixing=pool.mixing,
        granularity=pool.granularity, space=pool.space, temperature=pool.temperature, mixing_init=pool.init,
        one_hot_scale=pool.one_hot_scale, lb_loss_coef=moe.lb_loss_coef, z_loss_coef=moe.z_loss_coef,
        remat=check_remat(m.get('remat', 'none')),
        momentum=MomentumConfig.from_moe_section(moe),
        share_router=bool(pool.get('share_router', False)) and bool(moe_layers),
        share_attention=bool(m.get('share_attention', False)),
        entropy_coef=float(pool.get('entropy_coef', 0.0)) if moe_layers else 0.0,
        expert_groups=groups, residual=moe.get('residual', 'none') if moe_layers else 'none',
        expert_maps=parse_expert_map(moe.get('expert_map', ''), counts, moe.top_k) if moe_layers else (),
        expert_rank=int(config.get('low_rank_sparse', {}).get('rank', 0)) if moe_layers else 0,
        routing_policy=RoutingPolicy.from_moe_section(moe),
        eval_top_k=int(moe.get('eval_top_k', 0)), eval_gate=moe.get('eval_gate', ''),
        graph=GraphConfig.from_moe_section(moe) if moe_layers else GraphConfig())
