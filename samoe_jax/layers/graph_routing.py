"""Similarity-Aware and Attention-Aware (S)MoE routing (docs/methods/graph_routing.md; Nguyen, Tran, Nguyen, Baraniuk, "Improving
Routing in Sparse Mixture of Experts with Graph of Tokens", arXiv 2505.00792, 2025). docs/methods/graph_routing.md.

Einsum letters: B batch, L query positions, M key positions (j), E experts, D model width, R = d_s.

A token's router probabilities are mixed with those of the earlier tokens of its sequence (a graph of tokens):

  p_j   = softmax(W_r^T x_j)                                            [E]
  S_ij  = softmax_j( x_i^T M x_j / tau )  over real j <= i              'similarity' (M = I or W_s W_s^T)
  S_ij  = A_ij m_j / sum_j' A_ij' m_j'                                   'attention' (A: the same block's
                                                                         head-averaged causal attention probs)
  p~_i  = (1 - lambda) p_i + lambda sum_j S_ij p_j                      lambda fixed, or sigmoid(theta) learned

m_j is the token mask (padding never contributes as j). Selection, gates and the Switch balancing loss then use
p~ (routing.route(probs_GSE=p~)). Both are causal: row i only reads j <= i.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from samoe_jax.config.checks import Problems, register
from samoe_jax.config.sections import MoeSection
from samoe_jax.layers import initializers

KINDS = ('none', 'similarity', 'attention')
METRICS = ('identity', 'learned')


@dataclasses.dataclass(frozen=True)
class GraphConfig:
  """config.moe.graph, field by field (see the module docstring and docs/methods/graph_routing.md)."""
  kind: str                          # 'none' | 'similarity' | 'attention'
  lam: float                         # lambda
  lam_learned: bool                  # lambda = sigmoid(theta), theta_0 = logit(lam)
  temperature: float                 # tau; 0 = sqrt(dim of the compared vectors)
  metric: str                        # 'identity' (M = I) | 'learned' (M = W_s W_s^T)
  dim: int                           # d_s of W_s [D, d_s] (learned metric); 0 = D

  @property
  def enabled(self) -> bool:
    return self.kind != 'none'

  @classmethod
  def off(cls) -> 'GraphConfig':
    """The defaults (config/defaults.py): graph routing off."""
    return cls.from_moe_section(MoeSection.defaults())

  @classmethod
  def from_moe_section(cls, moe: Any) -> 'GraphConfig':
    """From moe.graph of a config/sections.MoeSection or of a config's moe section (its old flat keys count,
    config/aliases.py)."""
    section = moe if isinstance(moe, MoeSection) else MoeSection.of(ml_collections.ConfigDict({'moe': moe}))
    return cls(**section.graph)

  def similarity_dim(self, d_model: int) -> int:
    """Width of the compared vectors: D (identity) or d_s (learned; 0 = D)."""
    return (self.dim or d_model) if self.metric == 'learned' else d_model


@register('moe', moe_only=True)
def check_graph_config(c: ml_collections.ConfigDict, errors: Problems) -> None:
  """The graph-routing keys config.moe.graph (a registered check, config/checks.py)."""
  moe, graph = c.moe, c.moe.graph
  kind = graph.kind
  if not errors.one_of('moe.graph.kind', kind, KINDS) or kind == 'none':
    return
  lam, learned = graph.lam, graph.lam_learned
  if not isinstance(learned, bool):
    errors.add('moe.graph.lam_learned', learned, 'must be True or False')
  if learned:
    errors.in_range('moe.graph.lam', lam, 1e-6, 1.0 - 1e-6, hi_open=False)   # sigmoid(theta) init: (0, 1)
  else:
    errors.in_range('moe.graph.lam', lam, 0.0, 1.0, hi_open=False)
  tau = graph.temperature
  if isinstance(tau, bool) or not isinstance(tau, (int, float)) or tau < 0:
    errors.add('moe.graph.temperature', tau, 'must be a number >= 0 (0 = sqrt of the compared width)')
  errors.one_of('moe.graph.metric', graph.metric, METRICS)
  dim = graph.dim
  if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
    errors.add('moe.graph.dim', dim, 'must be an integer >= 0 (0 = model.d_model)')
  seq, group = c.data.seq_len, moe.group_size
  if group not in (0, seq):
    errors.add('moe.group_size', group, f'must be 0 or data.seq_len={seq} with moe.graph.kind={kind!r} (tokens '
               'are mixed with the earlier tokens of their own sequence, so a routing group must be one whole '
               'sequence)')
  if moe.routing != 'token_choice':
    errors.add('moe.routing', moe.routing, f"must be 'token_choice' with moe.graph.kind={kind!r} (it "
               'mixes router probabilities)')
  if moe.slot_priority != 'position':
    errors.add('moe.slot_priority', moe.slot_priority, f"must be 'position' with moe.graph.kind={kind!r} "
               '(causal routing)')


def masked_entropy(p_xE: jax.Array, mask_x: jax.Array) -> jax.Array:
  """Mean over real tokens (mask_x) of H(p) in nats."""
  h_x = -jnp.sum(p_xE * jnp.log(jnp.maximum(p_xE, 1e-20)), axis=-1)
  w_x = mask_x.astype(jnp.float32)
  return jnp.sum(h_x * w_x) / jnp.maximum(jnp.sum(w_x), 1.0)


def causal_visible(mask_BL: jax.Array) -> jax.Array:
  """bool [B, L, M]: j <= i and token j is real."""
  length = mask_BL.shape[1]
  return jnp.tril(jnp.ones((length, length), jnp.bool_))[None] & mask_BL[:, None, :]


def similarity_matrix(zq_BLR: jax.Array, zk_BMR: jax.Array, visible_BLM: jax.Array, temperature: float) -> jax.Array:
  """S_BLM = softmax_j(zq_i . zk_j / tau) over the visible j (float32; a row with none visible is all zero)."""
  scores_BLM = jnp.einsum('blr,bmr->blm', zq_BLR.astype(jnp.float32), zk_BMR.astype(jnp.float32)) / temperature
  s_BLM = jax.nn.softmax(jnp.where(visible_BLM, scores_BLM, jnp.finfo(jnp.float32).min), axis=-1)
  return jnp.where(visible_BLM, s_BLM, 0.0)


def attention_matrix(attention_BLM: jax.Array, visible_BLM: jax.Array) -> jax.Array:
  """S_BLM = A_ij over the visible j, renormalised per row (float32; = A where no padding precedes i)."""
  a_BLM = jnp.where(visible_BLM, attention_BLM.astype(jnp.float32), 0.0)
  return a_BLM / jnp.maximum(jnp.sum(a_BLM, axis=-1, keepdims=True), 1e-30)


def mix(p_BLE: jax.Array, s_BLM: jax.Array, lam: jax.Array | float, pk_BME: jax.Array | None = None) -> jax.Array:
  """p~_i = (1 - lambda) p_i + lambda sum_j S_ij pk_j (pk: the keys' p, default p itself; float32 [B, L, E])."""
  p = p_BLE.astype(jnp.float32)
  pk = p if pk_BME is None else pk_BME.astype(jnp.float32)
  return (1.0 - lam) * p + lam * jnp.einsum('blm,bme->ble', s_BLM, pk)


class GraphMixer(nn.Module):
  """Mixes one MoE layer's router probabilities over the graph of tokens: (p_BLE, x_BLD, mask_BL, A_BLM) -> p~_BLE.

  Parameters (logical axis 'router', counted with the routers): 'similarity_kernel' W_s [D, d_s] (learned metric)
  and 'lambda_logit' theta [1] (learned lambda = sigmoid(theta)).

  inference (layers/inference.py): 'prefill' also stores every position's p, token mask and (similarity) compared
  vector z = W_s^T x in the 'cache' collection ('graph_probs' [B, M, E], 'graph_mask' [B, M], 'graph_keys'
  [B, M, d]; M = cache_len); 'step' (one token per row at index_B, A_B1M over the cached positions) writes its own
  and mixes over the cached positions <= index_B, so decoding equals the full forward pass.
  """
  config: GraphConfig
  init_std: float = 0.02

  @nn.compact
  def __call__(self, p_BLE: jax.Array, x_BLD: jax.Array, mask_BL: jax.Array,
               attention_BLM: jax.Array | None = None, inference: Any = None) -> jax.Array:
    cfg = self.config
    if cfg.kind not in KINDS[1:]:
      raise ValueError(f'GraphMixer: moe.graph.kind={cfg.kind!r} is not one of {KINDS[1:]}')
    z_BLR = None
    if cfg.kind == 'similarity':
      z_BLR = x_BLD.astype(jnp.float32)
      if cfg.metric == 'learned':
        w_DR = self.param('similarity_kernel', initializers.normal(self.init_std, ('embed', 'router')),
                          (x_BLD.shape[-1], cfg.similarity_dim(x_BLD.shape[-1])))
        z_BLR = z_BLR @ w_DR
    elif attention_BLM is None:
      raise ValueError("GraphMixer: moe.graph.kind='attention' needs the block's attention probabilities")
    p_BLE = p_BLE.astype(jnp.float32)
    cache = inference.cache if inference is not None else 'none'
    if cache == 'step':
      pk_BME, zk_BMR, visible_BLM = self._step_cache(p_BLE, mask_BL, z_BLR, inference)
    else:
      if cache == 'prefill':
        self._prefill_cache(p_BLE, mask_BL, z_BLR, inference.cache_len)
      pk_BME, zk_BMR, visible_BLM = p_BLE, z_BLR, causal_visible(mask_BL)
    if cfg.kind == 'similarity':
      s_BLM = similarity_matrix(z_BLR, zk_BMR, visible_BLM, cfg.temperature or math.sqrt(z_BLR.shape[-1]))
    else:
      s_BLM = attention_matrix(attention_BLM, visible_BLM)
    lam = cfg.lam
    if cfg.lam_learned:
      theta = self.param('lambda_logit', nn.with_logical_partitioning(
          nn.initializers.constant(math.log(cfg.lam / (1.0 - cfg.lam))), ('router',)), (1,))
      lam = jax.nn.sigmoid(theta[0])
    return mix(p_BLE, s_BLM, lam, pk_BME)

  def _cache_vars(self, b: int, cache_len: int, e: int, r: int | None):
    probs = self.variable('cache', 'graph_probs', jnp.zeros, (b, cache_len, e), jnp.float32)
    mask = self.variable('cache', 'graph_mask', jnp.zeros, (b, cache_len), jnp.bool_)
    keys = self.variable('cache', 'graph_keys', jnp.zeros, (b, cache_len, r), jnp.float32) if r else None
    return probs, mask, keys

  def _prefill_cache(self, p_BLE: jax.Array, mask_BL: jax.Array, z_BLR: jax.Array | None, cache_len: int) -> None:
    b, length, e = p_BLE.shape
    if length > cache_len:
      raise ValueError(f'GraphMixer: prefill of {length} positions exceeds the cache of {cache_len}')
    probs, mask, keys = self._cache_vars(b, cache_len, e, None if z_BLR is None else z_BLR.shape[-1])
    pad = ((0, 0), (0, cache_len - length))
    probs.value = jnp.pad(p_BLE, pad + ((0, 0),))
    mask.value = jnp.pad(mask_BL.astype(jnp.bool_), pad)
    if keys is not None:
      keys.value = jnp.pad(z_BLR, pad + ((0, 0),))

  def _step_cache(self, p_B1E: jax.Array, mask_B1: jax.Array, z_B1R: jax.Array | None, inference: Any):
    """Writes the row's token at index_B; returns (p [B, M, E], z [B, M, d] or None, visible_B1M)."""
    b, length, e = p_B1E.shape
    if length != 1:
      raise ValueError(f'GraphMixer: a decoding step takes one token per row, got length {length}')
    probs, mask, keys = self._cache_vars(b, inference.cache_len, e, None if z_B1R is None else z_B1R.shape[-1])
    pos_M = jnp.arange(inference.cache_len)
    at_BM = pos_M[None] == inference.index_B[:, None]
    probs.value = jnp.where(at_BM[..., None], p_B1E, probs.value)
    mask.value = jnp.where(at_BM, mask_B1.astype(jnp.bool_), mask.value)
    if keys is not None:
      keys.value = jnp.where(at_BM[..., None], z_B1R, keys.value)
    visible_B1M = ((pos_M[None] <= inference.index_B[:, None]) & mask.value)[:, None, :]
    return probs.value, None if keys is None else keys.value, visible_B1M


# ------------------------------------------------------------------------------------------------ accounting
def graph_params_per_layer(graph: GraphConfig, d_model: int) -> int:
  """Parameters one MoE layer adds: W_s [D, d_s] (learned metric) + theta [1] (learned lambda)."""
  if not graph.enabled:
    return 0
  n = d_model * graph.similarity_dim(d_model) if graph.kind == 'similarity' and graph.metric == 'learned' else 0
  return n + (1 if graph.lam_learned else 0)


def graph_flops_per_token(graph: GraphConfig, d_model: int, seq_len: int, num_experts: int) -> int:
  """Forward matmul FLOPs per token of one MoE layer's mixing: S @ p is 2 L E (full L x L matrix), similarity's
  z z^T 2 L d (d = D or d_s) plus the projection x W_s 2 D d_s for a learned metric. (The attention matrix itself is
  the block's, counted with the attention.)"""
  if not graph.enabled:
    return 0
  flops = 2 * seq_len * num_experts
  if graph.kind == 'similarity':
    dim = graph.similarity_dim(d_model)
    flops += 2 * seq_len * dim + (2 * d_model * dim if graph.metric == 'learned' else 0)
  return flops


def describe_graph(config: ml_collections.ConfigDict) -> str | None:
  """One line for python -m samoe_jax.describe; None when moe.graph.kind='none'."""
  graph = GraphConfig.from_moe_section(MoeSection.of(config))
  if not graph.enabled:
    return None
  lam = f'learned sigmoid(theta) from {graph.lam}' if graph.lam_learned else f'{graph.lam}'
  if graph.kind == 'similarity':
    d = config.model.d_model
    dim = graph.similarity_dim(d)
    metric = 'M = I' if graph.metric == 'identity' else f'M = W_s W_s^T, W_s [{d}, {dim}]'
    what = f"Similarity-Aware: S = causal softmax(x M x^T / {graph.temperature or f'sqrt({dim})'}), {metric}"
  else:
    what = 'Attention-Aware: S = the block\'s head-averaged causal attention probabilities'
  return f'{what}; p~ = (1 - lambda) p + lambda S p, lambda = {lam}; selection, gates and L_bal use p~'
