"""ModelSpec: what the decoder is built from, composed of the typed config sections plus the resolved layout.

The sections (config/sections.py) are the config's own keys: `spec.model.d_model`, `spec.moe.top_k`,
`spec.pool.size`. Resolved here, once: which blocks are MoE blocks, each MoE layer's pool entry, the pool groups
(Pyramid-MoE), the expert maps (merged experts), the routing groups, and the layer-level configs built from the
moe section by key (routing strategy, graph routing, momentum). A dense model (no MoE layer after resolving
model.layer_plan) ignores the moe and pool sections: its spec holds their defaults. accounting.py derives its
sizes from this same spec.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_collections

from samoe_jax.config.expert_map import parse_expert_map
from samoe_jax.config.layer_plan import moe_layer_indices, pool_assignment
from samoe_jax.config.pyramid import ExpertGroup, expert_groups, layer_entries, min_experts, parse_experts_per_layer
from samoe_jax.config.sections import ModelSection, MoeSection, PoolSection, section_values
from samoe_jax.layers.capacity import Capacity
from samoe_jax.layers.graph_routing import GraphConfig
from samoe_jax.layers.mixing import Mixing, mixing_for
from samoe_jax.layers.momentum import MomentumConfig
from samoe_jax.layers.routing_strategies import RoutingStrategy, strategy_for
from samoe_jax.models.remat import check_remat

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """The sections, and everything resolved from them (see the module docstring)."""
  model: ModelSection
  moe: MoeSection
  pool: PoolSection
  moe_layers: tuple[int, ...]          # block indices with an MoE FFN
  pool_entry: tuple[int, ...]          # per MoE layer: fixed pool entry, or the one-hot init's entry
  capacity: Capacity                   # routing groups (moe.group_size 0 resolved to data.seq_len) and slots
  expert_d_ff: int                     # moe.expert_d_ff, 0 resolved to model.d_ff
  routing: RoutingStrategy             # moe.routing and its keys (layers/routing_strategies.py)
  graph: GraphConfig                   # moe.graph.kind and its keys (layers/graph_routing.py)
  momentum: MomentumConfig             # moe.momentum_smoe.kind and its keys (layers/momentum.py)
  expert_groups: tuple[ExpertGroup, ...] = ()   # moe.experts_per_layer: MoE layers grouped by expert count
  expert_maps: tuple[tuple[int, ...], ...] = ()  # moe.expert_map per MoE layer; () = identity
  expert_rank: int = 0                 # low_rank_sparse.rank: experts stored as U V + S (0 = dense experts)

  @property
  def compute_dtype(self):
    return DTYPES[self.model.dtype]

  @property
  def groups(self) -> tuple[ExpertGroup, ...]:
    """The expert groups (config/pyramid.py); one group of moe.num_experts over every MoE layer by default."""
    if self.expert_groups or not self.moe_layers:
      return self.expert_groups
    return (ExpertGroup(0, self.moe.num_experts, tuple(range(len(self.moe_layers))), self.pool.size,
                        self.pool_entry),)

  @property
  def mixing(self) -> Mixing:
    """How each MoE layer's experts come from its pool (layers/mixing.py), built from the pool section."""
    return mixing_for(self.pool)

  @property
  def out_init_std(self) -> float:
    """GPT-2/3 scale residual output projections by 1/sqrt(2 * num_layers)."""
    return self.model.init_std / (2 * self.model.num_layers) ** 0.5

  @property
  def eval_group_size(self) -> int:
    """Positions per evaluation-routing run (layers/inference.py)."""
    return self.capacity.run

  def layer_routing(self, num_experts: int, evaluation: bool) -> RoutingStrategy:
    """One MoE layer's strategy: its E (Pyramid-MoE), and for a train=False pass moe.eval_top_k / eval_gate
    (SMoE-Dropout, layers/k_schedule.py)."""
    strategy = self.routing.with_experts(num_experts)
    return strategy.for_evaluation(self.moe.eval_top_k, self.moe.eval_gate) if evaluation else strategy

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> 'ModelSpec':
    model = ModelSection.of(config)
    check_remat(model.remat)   # also validated; a guard for a spec built from an unvalidated config
    moe_layers = tuple(moe_layer_indices(model))
    if not moe_layers:
      moe, pool = MoeSection.defaults(), PoolSection.defaults()
    else:
      moe, pool = MoeSection.of(config), PoolSection.of(config)
    seq_len = config.data.seq_len
    group_size = moe.group_size or seq_len
    capacity = Capacity(group_size, moe.capacity_factor_train, moe.capacity_factor_eval, moe.min_capacity,
                        moe.capacity_formula, eval_group_size=min(group_size, seq_len))
    spec = cls(model=model, moe=moe, pool=pool, moe_layers=moe_layers, pool_entry=(), capacity=capacity,
               expert_d_ff=moe.expert_d_ff or model.d_ff, routing=strategy_for(moe),
               graph=GraphConfig.from_moe_section(moe), momentum=MomentumConfig.from_moe_section(moe))
    if not moe_layers:
      return spec
    entries = tuple(pool_assignment(len(moe_layers), pool.size, pool.assignment))
    counts = parse_experts_per_layer(moe.experts_per_layer, len(moe_layers), moe.num_experts, min_experts(moe))
    groups = tuple(expert_groups(counts, pool.size, pool.assignment))
    entries = layer_entries(list(groups), len(moe_layers)) if len(groups) > 1 else entries
    low_rank = section_values(config, 'low_rank_sparse')
    return dataclasses.replace(
        spec, pool_entry=entries, expert_groups=groups,
        expert_maps=parse_expert_map(moe.expert_map, counts, moe.top_k),
        expert_rank=int(low_rank['rank']))
