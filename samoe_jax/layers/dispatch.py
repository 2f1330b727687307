"""How an MoE layer's routed tokens reach its experts and come back: one `apply` per implementation (moe.dispatch).

Einsum letters: G groups, S tokens per group, K choices, E experts, C capacity, D width, X = G*C slots/expert.

Both produce the expert-major buffer x_EXD (expert e, slot g*C + c holds the token of group g that got slot c
of expert e; empty slots hold zeros) and combine expert outputs y_EXD back into y_GSD = sum_k gate_k * y[slot_k].
- 'gather': integer index tables, a row gather and its transpose (scatter-add). O(G*E*C*D) memory traffic and
  no FLOPs: the fastest on CPU and GPU.
- 'einsum': one-hot dispatch/combine tensors [G,S,E,C] contracted with einsums (GShard / flaxformer style),
  which TPUs and GSPMD handle best, at 2*G*S*E*C*D FLOPs each way.
- 'ragged': no buffers and no capacity (dropless): rows sorted by expert through grouped matmuls
  (jax.lax.ragged_dot); layers/ragged.py.
A dispatcher's `dropless` says whether MoeFFN must route with no capacity limit (C = S: every choice kept).
"""

from __future__ import annotations

import abc
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from samoe_jax.config.checks import Problems, register
from samoe_jax.layers.experts import LayerExperts, expert_ffn, expert_ffn_output_mixed
from samoe_jax.layers.ragged import NAME as RAGGED, RaggedDispatcher
from samoe_jax.layers.token_choice import Routing


class Dispatcher(Protocol):
  dropless: bool   # True: MoeFFN routes with C = S slots, so nothing is dropped

  def apply(self, x_GSD: jax.Array, experts: LayerExperts, routing: Routing, dtype: Any) -> jax.Array:
    """Routed tokens through their experts (computed in dtype): x_GSD -> gate-weighted y_GSD."""


class BufferDispatcher(abc.ABC):
  """Expert-major buffers of C slots per expert per group: dispatch, every expert on its buffer, combine.
  Subclasses ('gather', 'einsum') implement dispatch and combine."""
  dropless = False

  @abc.abstractmethod
  def dispatch(self, x_GSD: jax.Array, routing: Routing) -> jax.Array:
    """Tokens -> expert buffers x_EXD."""

  @abc.abstractmethod
  def combine(self, y_EXD: jax.Array, routing: Routing) -> jax.Array:
    """Expert outputs -> gate-weighted token outputs y_GSD."""

  def apply(self, x_GSD: jax.Array, experts: LayerExperts, routing: Routing, dtype: Any) -> jax.Array:
    x_EXD = self.dispatch(x_GSD.astype(dtype), routing)
    x_EXD = nn.with_logical_constraint(x_EXD, ('expert', None, 'embed'))
    if experts.output_mix_weights is None:
      y_EXD = expert_ffn(x_EXD, experts.experts.astype(dtype))
    else:
      y_EXD = expert_ffn_output_mixed(x_EXD, experts.experts.astype(dtype), experts.output_mix_weights)
    y_EXD = nn.with_logical_constraint(y_EXD, ('expert', None, 'embed'))
    return self.combine(y_EXD, routing)


def _flat_slots(routing: Routing) -> jax.Array:
  """Row of each (token, choice) in the flattened [E * G * C] buffer; E*G*C (out of range) when dropped."""
  g_count, _, _ = routing.expert_GSK.shape
  c = routing.capacity
  g_GSK = jnp.arange(g_count, dtype=jnp.int32)[:, None, None]
  rows = routing.expert_GSK * (g_count * c) + g_GSK * c + jnp.minimum(routing.slot_GSK, c - 1)
  return jnp.where(routing.kept_GSK, rows, routing.probs_GSE.shape[-1] * g_count * c)


class GatherDispatcher(BufferDispatcher):
  """Index-table dispatch: x_EXD[e, x] = x_flat[table[e, x]]."""

  def dispatch(self, x_GSD: jax.Array, routing: Routing) -> jax.Array:
    g_count, s, d = x_GSD.shape
    e = routing.probs_GSE.shape[-1]
    rows = g_count * routing.capacity
    token_GSK = jnp.broadcast_to(
        jnp.arange(g_count * s, dtype=jnp.int32).reshape(g_count, s, 1), routing.expert_GSK.shape)
    # table[row] = flat token index sitting in that slot; g*s (the appended zero row) for empty slots.
    table = jnp.full((e * rows,), g_count * s, jnp.int32)
    table = table.at[_flat_slots(routing).reshape(-1)].set(token_GSK.reshape(-1), mode='drop')
    x_flat = jnp.concatenate([x_GSD.reshape(g_count * s, d), jnp.zeros((1, d), x_GSD.dtype)], axis=0)
    return jnp.take(x_flat, table, axis=0, mode='clip').reshape(e, rows, d)

  def combine(self, y_EXD: jax.Array, routing: Routing) -> jax.Array:
    e, rows, d = y_EXD.shape
    g_count, s, k = routing.expert_GSK.shape
    flat = _flat_slots(routing)
    y_flat = y_EXD.reshape(e * rows, d)
    y_GSKD = jnp.take(y_flat, jnp.minimum(flat, e * rows - 1).reshape(-1), axis=0).reshape(g_count, s, k, d)
    return jnp.einsum('gskd,gsk->gsd', y_GSKD, routing.gate_GSK.astype(y_EXD.dtype))


class EinsumDispatcher(BufferDispatcher):
  """One-hot dispatch/combine tensors [G, S, E, C] contracted with einsums."""

  @staticmethod
  def _one_hot_GSKEC(routing: Routing) -> tuple[jax.Array, jax.Array]:
    e = routing.probs_GSE.shape[-1]
    expert_GSKE = jax.nn.one_hot(routing.expert_GSK, e, dtype=jnp.float32)
    slot_GSKC = jax.nn.one_hot(jnp.where(routing.kept_GSK, routing.slot_GSK, -1), routing.capacity,
                               dtype=jnp.float32)
    return expert_GSKE, slot_GSKC

  def dispatch(self, x_GSD: jax.Array, routing: Routing) -> jax.Array:
    expert_GSKE, slot_GSKC = self._one_hot_GSKEC(routing)
    dispatch_GSEC = jnp.einsum('gske,gskc->gsec', expert_GSKE, slot_GSKC).astype(x_GSD.dtype)
    x_EGCD = jnp.einsum('gsec,gsd->egcd', dispatch_GSEC, x_GSD)
    e, g_count, c, d = x_EGCD.shape
    return x_EGCD.reshape(e, g_count * c, d)

  def combine(self, y_EXD: jax.Array, routing: Routing) -> jax.Array:
    expert_GSKE, slot_GSKC = self._one_hot_GSKEC(routing)
    combine_GSEC = jnp.einsum('gske,gskc,gsk->gsec', expert_GSKE, slot_GSKC, routing.gate_GSK)
    e, _, d = y_EXD.shape
    g_count = routing.expert_GSK.shape[0]
    y_EGCD = y_EXD.reshape(e, g_count, routing.capacity, d)
    return jnp.einsum('gsec,egcd->gsd', combine_GSEC.astype(y_EXD.dtype), y_EGCD)


DISPATCHERS: dict[str, type] = {'gather': GatherDispatcher, 'einsum': EinsumDispatcher, RAGGED: RaggedDispatcher}


@register('moe', moe_only=True)
def check_dispatch(c: ml_collections.ConfigDict, problems: Problems) -> None:
  """moe.dispatch names a dispatcher (a registered check, config/checks.py)."""
  problems.one_of('moe.dispatch', c.moe.dispatch, tuple(DISPATCHERS))


def get_dispatcher(name: str) -> Dispatcher:
  if name not in DISPATCHERS:
    raise ValueError(f'moe.dispatch={name!r} is not one of {sorted(DISPATCHERS)}')
  return DISPATCHERS[name]()
