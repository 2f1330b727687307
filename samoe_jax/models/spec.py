"""ModelSpec: the frozen, typed view of a ConfigDict that the model is built from."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_collections

from samoe_jax.config.layer_plan import moe_layer_indices, pool_assignment
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

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def out_init_std(self) -> float:
    """GPT-2/3 scale residual output projections by 1/sqrt(2 * num_layers)."""
    return self.init_std / (2 * self.num_layers) ** 0.5

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> 'ModelSpec':
    m, moe, pool = config.model, config.moe, config.pool
    moe_layers = tuple(moe_layer_indices(m))
    entries = tuple(pool_assignment(len(moe_layers), pool.size, pool.assignment)) if moe_layers else ()
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
        remat=check_remat(m.get('remat', 'none')))
