"""Dropless experts, moe.dispatch='ragged': (token, choice) rows sorted by expert through grouped matmuls.

Einsum letters: G groups, S tokens per group, K choices, E experts, D width, F expert hidden width, P pool
entries, T = G*S tokens, N = G*S*K (token, choice) rows of one MoE call.

  1. every (token, choice) row of the call, stably sorted by its expert (rows not kept, i.e. masked tokens and
     unused choices, sort last under the sentinel id E); group_sizes_E = kept rows per expert
  2. x_ND = the rows' tokens; h_NF = gelu(ragged_dot(x_ND, W_in) + b_in[e_n]); y_ND = ragged_dot(h_NF, W_out)
     + b_out[e_n] (jax.lax.ragged_dot with group_sizes_E: each row meets only its own expert's weights)
  3. unsorted back to [G, S, K] and combined: y_GSD = sum_k gate_GSK * y_GSKD

No capacity, no buffers, no drops: MoeFFN routes with C = S slots per expert per group (a token picks an expert at
most once, so every choice fits; decoding restarts its counts with each run of S positions), so every chosen
(token, choice) is kept and aux['dropped_fraction'] is 0. The capacity keys (capacity factors, formula,
min_capacity) have no effect.

Causal by construction: no token competes with another for a slot, so a token's output depends only on its own
routing, i.e. on its own hidden state; later tokens (and the other rows of a routing group) can never change it.
Evaluation routing and KV-cache decoding are therefore exact, as with the 'position' slot priority.

Parallelism: under data parallelism each data shard sorts only its own groups (a shard_map over the group mesh
axes); under expert parallelism each device also gathers its expert peers' groups, computes the rows of its own
experts and the outputs are reduce-scattered back (all-gather / reduce-scatter, no capacity). Not supported
(config validation and trace time refuse): expert-choice routing (its capacity is the routing itself: every expert
takes C tokens).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from samoe_jax.config.checks import Problems, register
from samoe_jax.layers.experts import ExpertWeights, LayerExperts
from samoe_jax.layers.token_choice import Routing

NAME = 'ragged'


@dataclasses.dataclass(frozen=True)
class SortedRows:
  """The (token, choice) rows of a call in expert order. order_N: flat row index (g*S*K + s*K + k) at each sorted
  position; token_N: its flat token index (g*S + s); expert_N: its expert (E for rows not kept, which sort last);
  valid_N: kept; group_sizes_E: int32 kept rows per expert (sum <= N)."""
  order_N: jax.Array
  token_N: jax.Array
  expert_N: jax.Array
  valid_N: jax.Array
  group_sizes_E: jax.Array

  @property
  def bias_index_N(self) -> jax.Array:
    """expert_N clipped into [0, E): the row of a per-expert bias (rows not kept are masked afterwards)."""
    return jnp.minimum(self.expert_N, self.group_sizes_E.shape[0] - 1)


jax.tree_util.register_dataclass(SortedRows, data_fields=['order_N', 'token_N', 'expert_N', 'valid_N',
                                                          'group_sizes_E'], meta_fields=[])


def sort_by_expert(expert_GSK: jax.Array, kept_GSK: jax.Array, num_experts: int) -> SortedRows:
  """Stable sort of the N (token, choice) rows by expert (Routing.expert_GSK, kept_GSK); rows not kept go last."""
  g, s, k = expert_GSK.shape
  expert_N = jnp.where(kept_GSK, expert_GSK, num_experts).reshape(g * s * k).astype(jnp.int32)
  order_N = jnp.argsort(expert_N, stable=True).astype(jnp.int32)
  sorted_expert_N = expert_N[order_N]
  group_sizes_E = jnp.sum(jax.nn.one_hot(expert_N, num_experts, dtype=jnp.int32), axis=0)   # sentinel: all zero
  return SortedRows(order_N=order_N, token_N=order_N // k, expert_N=sorted_expert_N,
                    valid_N=sorted_expert_N < num_experts, group_sizes_E=group_sizes_E)


def ragged_ffn(x_ND: jax.Array, rows: SortedRows, w: ExpertWeights) -> jax.Array:
  """Each sorted row through its own expert: y_ND = W_out gelu(W_in x + b_in) + b_out (zero for rows not kept).
  Float32 accumulation; the result has x's dtype."""
  dtype = x_ND.dtype
  valid_N1 = rows.valid_N[:, None]
  h_NF = jax.lax.ragged_dot(x_ND, w.w_in, rows.group_sizes_E, preferred_element_type=jnp.float32)
  h_NF = jax.nn.gelu(h_NF + jnp.take(w.b_in, rows.bias_index_N, axis=0).astype(jnp.float32))
  h_NF = jnp.where(valid_N1, h_NF, 0.0).astype(dtype)
  y_ND = jax.lax.ragged_dot(h_NF, w.w_out, rows.group_sizes_E, preferred_element_type=jnp.float32)
  y_ND = y_ND + jnp.take(w.b_out, rows.bias_index_N, axis=0).astype(jnp.float32)
  return jnp.where(valid_N1, y_ND, 0.0).astype(dtype)


def ragged_ffn_output_mixed(x_ND: jax.Array, rows: SortedRows, pool: ExpertWeights,
                            weights: jax.Array) -> jax.Array:
  """Output-space mixing: y_n = sum_j w_{e_n, j} FFN_j(x_n), a loop over the P pool entries (pool: leading
  [P, E]; weights: [P] or [E, P])."""
  p_count = weights.shape[-1]
  w_EP = jnp.broadcast_to(weights, (rows.group_sizes_E.shape[0], p_count))
  w_NP = jnp.take(w_EP, rows.bias_index_N, axis=0).astype(x_ND.dtype)
  y_ND = jnp.zeros_like(x_ND)
  for j in range(p_count):
    y_ND = y_ND + w_NP[:, j, None] * ragged_ffn(x_ND, rows, pool.entry(j))
  return y_ND


def _split_axes(logical: str) -> dict[str, int]:
  """{mesh axis: devices} of the mesh axes (of more than one device) that a logical axis is split over under the
  current mesh and logical-axis rules; {} without a mesh."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return {}
  axes = nn.logical_to_mesh_axes((logical,))[0]
  shape = dict(mesh.shape)
  return {a: shape[a] for a in ((axes,) if isinstance(axes, str) else axes or ()) if shape.get(a, 1) > 1}


def _ep_layout_error(expert_axes: tuple[str, ...], group_axes: tuple[str, ...], groups: int) -> str:
  return (f"moe.dispatch='ragged' with the experts split over mesh axes {expert_axes}: needs the routing groups "
          f"split over those axes too and G={groups} groups divisible by the devices of the group axes "
          f"{group_axes} (the 'group' logical-axis rule); use more sequences per batch, or moe.dispatch='gather'")


def _ragged_groups(x_GSD: jax.Array, expert_GSK: jax.Array, kept_GSK: jax.Array, gate_GSK: jax.Array,
                   experts: LayerExperts, num_experts: int, dtype: Any) -> jax.Array:
  """Sort, grouped FFNs, unsort and combine for the G groups given (all of them, or one data shard's)."""
  g, s, d = x_GSD.shape
  k = expert_GSK.shape[-1]
  rows = sort_by_expert(expert_GSK, kept_GSK, num_experts)
  x_ND = jnp.take(x_GSD.reshape(g * s, d).astype(dtype), rows.token_N, axis=0)
  if experts.output_mix_weights is None:
    y_ND = ragged_ffn(x_ND, rows, experts.experts.astype(dtype))
  else:
    y_ND = ragged_ffn_output_mixed(x_ND, rows, experts.experts.astype(dtype), experts.output_mix_weights)
  inverse_N = jnp.zeros_like(rows.order_N).at[rows.order_N].set(jnp.arange(rows.order_N.shape[0], dtype=jnp.int32))
  y_GSKD = jnp.take(y_ND, inverse_N, axis=0).reshape(g, s, k, d)
  return jnp.einsum('gskd,gsk->gsd', y_GSKD, gate_GSK.astype(dtype))


def _ragged_groups_expert_parallel(x_GSD: jax.Array, expert_GSK: jax.Array, kept_GSK: jax.Array,
                                   gate_GSK: jax.Array, experts: LayerExperts, dtype: Any,
                                   axes: tuple[str, ...]) -> jax.Array:
  """Dropless expert parallelism by all-gather and reduce-scatter (Megatron-Core's 'allgather' token
  dispatcher): inside a shard_map over `axes` (the expert axes) every device gathers the groups of its expert
  peers ([X*G, S, D]), runs the rows routed to its own E/X experts, and the partial outputs are summed and
  scattered back to their groups. Exchanges X times the rows of an all-to-all, but needs no ragged exchange and
  no capacity."""
  x_GSD, expert_GSK, kept_GSK, gate_GSK = (jax.lax.all_gather(a, axes, axis=0, tiled=True)
                                           for a in (x_GSD, expert_GSK, kept_GSK, gate_GSK))
  local = experts.experts.w_in.shape[0 if experts.output_mix_weights is None else 1]   # E / X experts here
  first = jax.lax.axis_index(axes) * local
  mine_GSK = kept_GSK & (expert_GSK >= first) & (expert_GSK < first + local)
  y_GSD = _ragged_groups(x_GSD, expert_GSK - first, mine_GSK, gate_GSK, experts, local, dtype)
  return jax.lax.psum_scatter(y_GSD, axes, scatter_dimension=0, tiled=True)


def _expert_specs(experts: LayerExperts, axes: tuple[str, ...] | None) -> LayerExperts:
  """shard_map in_specs of a layer's experts: the expert axis (0; 1 under output mixing's leading pool axis)
  over `axes` (None: replicated over the manual axes)."""
  spec = P(None, axes) if experts.output_mix_weights is not None else P(axes)
  mix = experts.output_mix_weights
  return LayerExperts(jax.tree.map(lambda _: spec, experts.experts),
                      None if mix is None else P(axes) if mix.ndim == 2 else P())


class RaggedDispatcher:
  """The dropless dispatcher (see the module docstring): routing with C = S, sorted rows, ragged_dot.

  When the routing groups are split over mesh axes (data parallelism) each shard sorts and computes its own
  groups inside a jax.shard_map that is manual over those axes only (the 'model' axis stays with the SPMD
  partitioner): a global sort would make every device gather and compute the rows of the whole global batch.
  When G does not divide over those axes (e.g. one decoding sequence), the rows are sorted over the whole call.
  Under expert parallelism see _ragged_groups_expert_parallel.
  """
  dropless = True

  def apply(self, x_GSD: jax.Array, experts: LayerExperts, routing: Routing, dtype: Any) -> jax.Array:
    """x_GSD -> y_GSD = sum_k gate_k FFN_{e_k}(x) over the kept choices."""
    args = (x_GSD, routing.expert_GSK, routing.kept_GSK, routing.gate_GSK)
    group_split, expert_axes = _split_axes('group'), tuple(_split_axes('expert'))
    group_axes = tuple(group_split)
    divisible = bool(group_split) and x_GSD.shape[0] % math.prod(group_split.values()) == 0
    if expert_axes and not (divisible and set(expert_axes) <= set(group_axes)):
      raise ValueError(f'MoeFFN: {_ep_layout_error(expert_axes, group_axes, x_GSD.shape[0])}')
    if not divisible:
      return _ragged_groups(*args, experts, routing.probs_GSE.shape[-1], dtype)
    if expert_axes:
      compute = functools.partial(_ragged_groups_expert_parallel, dtype=dtype, axes=expert_axes)
    else:
      compute = functools.partial(_ragged_groups, num_experts=routing.probs_GSE.shape[-1], dtype=dtype)
    groups = P(group_axes)
    local = jax.shard_map(compute, in_specs=(groups,) * 4 + (_expert_specs(experts, expert_axes or None),),
                          out_specs=groups, axis_names=frozenset(group_axes))
    return local(*args, experts)


@register('moe', moe_only=True)
def check_dispatch_config(c: Any, errors: Problems) -> None:
  """moe.dispatch='ragged' (a registered check, config/checks.py): token-choice or hash routing with the
  'position' slot priority."""
  moe = c.moe
  if moe.dispatch != NAME:
    return
  if moe.routing == 'expert_choice':
    errors.add('moe.routing', moe.routing, "'token_choice' or 'hash' with moe.dispatch='ragged' (expert choice has a "
               "fixed capacity by definition: every expert takes C tokens); use moe.dispatch='gather' or 'einsum'")
  if moe.slot_priority != 'position':
    errors.add('moe.slot_priority', moe.slot_priority, "'position' with moe.dispatch='ragged' (nothing is dropped, "
               'so the slot order has no effect, and the routing is causal)')
