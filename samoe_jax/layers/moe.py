"""The MoE FFN layer: its own router and mixing logits, experts drawn from the global pool.

Einsum letters: B batch, L length, G groups, S tokens per group, D width, E experts, P pool entries.

One layer of a standard MoE (GShard/Switch, methods.md §1), a SaMoE layer (§2) and a fully tied layer are the
same module: it receives its effective experts, which the decoder mixed from the global pool (experts.py).
Dropped tokens get a zero output, so only the block's residual carries them.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from samoe_jax.layers import initializers
from samoe_jax.layers import routing as routing_lib
from samoe_jax.layers.dispatch import get_dispatcher
from samoe_jax.layers.experts import ExpertWeights, expert_ffn, expert_ffn_output_mixed
from samoe_jax.layers.inference import InferenceMode


def to_groups(x_BLD: jax.Array, group_size: int) -> jax.Array:
  """Routing groups x_GSD. A group is a run of positions of one sequence (group_size <= L) or R = S / L whole
  sequences interleaved position-major (token order t0 of each sequence, then t1, ...), so a token's slot
  depends only on tokens at earlier or equal positions and routing stays causal."""
  b, l, d = x_BLD.shape
  if group_size <= l:
    return x_BLD.reshape(b * l // group_size, group_size, d)
  r = group_size // l
  return jnp.swapaxes(x_BLD.reshape(b // r, r, l, d), 1, 2).reshape(b // r, group_size, d)


def from_groups(x_GSD: jax.Array, b: int, l: int) -> jax.Array:
  """Inverse of to_groups: x_GSD -> x_BLD."""
  g, s, d = x_GSD.shape
  if s <= l:
    return x_GSD.reshape(b, l, d)
  return jnp.swapaxes(x_GSD.reshape(g, l, s // l, d), 1, 2).reshape(b, l, d)


class Router(nn.Module):
  """Router logits in float32: x_GSD -> logits_GSE (no bias, as in fairseq's Top2Gate)."""
  num_experts: int
  init_std: float

  @nn.compact
  def __call__(self, x_GSD: jax.Array) -> jax.Array:
    w_DE = self.param('kernel', initializers.normal(self.init_std, ('embed', 'router')),
                      (x_GSD.shape[-1], self.num_experts))
    return jnp.einsum('gsd,de->gse', x_GSD.astype(jnp.float32), w_DE)


def to_runs(x_BLD: jax.Array, run: int) -> jax.Array:
  """Evaluation routing groups x_GSD: runs of `run` positions of one sequence (G = B * ceil(L / run)), the last
  run padded with zeros (pass a mask padded the same way, so the padding is never routed)."""
  b, l, d = x_BLD.shape
  runs = -(-l // run)
  x_BLD = jnp.pad(x_BLD, ((0, 0), (0, runs * run - l), (0, 0)))
  return x_BLD.reshape(b * runs, run, d)


def from_runs(x_GSD: jax.Array, b: int, l: int) -> jax.Array:
  """Inverse of to_runs: x_GSD -> x_BLD (drops the padding)."""
  return x_GSD.reshape(b, -1, x_GSD.shape[-1])[:, :l]


class MoeFFN(nn.Module):
  """One MoE layer: x_BLD -> (y_BLD, aux). aux holds 'lb_loss', 'z_loss' and the routing metrics.

  experts: this layer's effective experts (leading axis E), already mixed from the pool; or, for output-space
  mixing, the whole pool (leading axes [P, E]) with `output_mix_weights` ([P] or [E, P]).
  inference: None routes groups of `group_size` tokens (training and validation); an InferenceMode routes each
  sequence on its own in runs of `eval_group_size` positions (layers/inference.py), and in greedy decoding keeps
  every row's per-expert assignment count of its current run in the 'cache' collection ('slot_counts', [B, E]),
  so a decoded token is kept or dropped exactly as in a full forward pass of the whole sequence.
  """
  num_experts: int
  top_k: int
  capacity_factor_train: float
  capacity_factor_eval: float
  min_capacity: int
  group_size: int           # tokens per routing group (divides B*L; a multiple or divisor of L)
  dispatch: str
  init_std: float
  priority: str = 'position'  # slot priority, see routing.py ('choice' is fairseq's, not causal)
  dtype: jnp.dtype = jnp.float32
  eval_group_size: int = 0  # positions per evaluation-routing run (0: group_size)

  @nn.compact
  def __call__(self, x_BLD: jax.Array, experts: ExpertWeights, token_mask_BL: jax.Array, *, train: bool,
               output_mix_weights: jax.Array | None = None,
               inference: InferenceMode | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    b, l, d = x_BLD.shape
    router = Router(self.num_experts, self.init_std, name='router')
    if inference is None:
      s = self.group_size
      x_GSD = to_groups(x_BLD, s)
      mask_GS = to_groups(token_mask_BL[..., None], s)[..., 0]
      cf = self.capacity_factor_train if train else self.capacity_factor_eval
      capacity = routing_lib.expert_capacity(s, self.num_experts, self.top_k, cf, self.min_capacity)
      ungroup = lambda y_GSD: from_groups(y_GSD, b, l)
    else:
      if train:
        raise ValueError('MoeFFN: an InferenceMode forward pass must have train=False')
      if self.priority != 'position':
        raise ValueError(f"MoeFFN: evaluation routing needs moe.slot_priority='position' (causal), got "
                         f'{self.priority!r}: with {self.priority!r} a later token can take an earlier '
                         "token's slot, so scores would depend on padding and decoding could not be exact")
      s = self.eval_group_size or self.group_size
      capacity = routing_lib.expert_capacity(s, self.num_experts, self.top_k, self.capacity_factor_eval,
                                             self.min_capacity)
      if inference.cache == 'step':
        return self._decode_step(x_BLD, experts, token_mask_BL, router, capacity, s, inference,
                                 output_mix_weights)
      x_GSD = to_runs(x_BLD, s)
      mask_GS = to_runs(token_mask_BL[..., None].astype(jnp.int32), s)[..., 0].astype(jnp.bool_)
      ungroup = lambda y_GSD: from_runs(y_GSD, b, l)
    x_GSD = nn.with_logical_constraint(x_GSD, ('group', 'length', 'embed'))
    routing = routing_lib.route(router(x_GSD), mask_GS, top_k=self.top_k, capacity=capacity,
                                priority=self.priority)
    if inference is not None and inference.cache == 'prefill':
      self._write_prefill_counts(routing, mask_GS, b, s, inference)
    y_GSD = self._experts(x_GSD, experts, routing, output_mix_weights)
    return ungroup(y_GSD), self._aux(routing, mask_GS)

  def _experts(self, x_GSD: jax.Array, experts: ExpertWeights, routing: routing_lib.Routing,
               output_mix_weights: jax.Array | None) -> jax.Array:
    """Dispatch, expert FFNs, combine: x_GSD -> y_GSD."""
    dispatcher = get_dispatcher(self.dispatch)
    x_EXD = dispatcher.dispatch(x_GSD.astype(self.dtype), routing)
    x_EXD = nn.with_logical_constraint(x_EXD, ('expert', None, 'embed'))
    if output_mix_weights is None:
      y_EXD = expert_ffn(x_EXD, experts.astype(self.dtype))
    else:
      y_EXD = expert_ffn_output_mixed(x_EXD, experts.astype(self.dtype), output_mix_weights)
    y_EXD = nn.with_logical_constraint(y_EXD, ('expert', None, 'embed'))
    return dispatcher.combine(y_EXD, routing)

  @staticmethod
  def _aux(routing: routing_lib.Routing, mask_GS: jax.Array) -> dict[str, jax.Array]:
    aux = {'lb_loss': routing_lib.load_balancing_loss(routing, mask_GS)}
    aux['z_loss'] = routing_lib.router_z_loss(routing, mask_GS)
    aux.update(routing_lib.routing_metrics(routing, mask_GS))
    return aux

  def _write_prefill_counts(self, routing: routing_lib.Routing, mask_GS: jax.Array, b: int, run: int,
                            inference: InferenceMode) -> None:
    """Stores each row's per-expert assignments within the run holding its last real position (lengths - 1)."""
    per_token_BLE = routing_lib.token_assignments(routing.expert_GSK, mask_GS, self.num_experts).reshape(
        b, -1, self.num_experts)
    lengths_B = inference.index_B.astype(jnp.int32)
    run_start_B = (lengths_B - 1) // run * run
    pos_L = jnp.arange(per_token_BLE.shape[1])
    in_run_BL = (pos_L[None] >= run_start_B[:, None]) & (pos_L[None] < lengths_B[:, None])
    counts = self.variable('cache', 'slot_counts', jnp.zeros, (b, self.num_experts), jnp.int32)
    counts.value = jnp.einsum('ble,bl->be', per_token_BLE, in_run_BL.astype(jnp.int32))

  def _decode_step(self, x_BLD: jax.Array, experts: ExpertWeights, token_mask_BL: jax.Array, router: nn.Module,
                   capacity: int, run: int, inference: InferenceMode,
                   output_mix_weights: jax.Array | None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One token per row (x_B1D at positions index_B): its slots continue the row's run (counts reset where a run
    starts); the kept choices then go to the experts as one-token groups."""
    b, l, d = x_BLD.shape
    if l != 1:
      raise ValueError(f"MoeFFN: a decoding step takes one token per row, got length {l}")
    counts = self.variable('cache', 'slot_counts', jnp.zeros, (b, self.num_experts), jnp.int32)
    new_run_B = inference.index_B % run == 0
    counts_BE = jnp.where(new_run_B[:, None], 0, counts.value)
    routing = routing_lib.route(router(x_BLD), token_mask_BL, top_k=self.top_k, capacity=capacity,
                                priority=self.priority, counts_GE=counts_BE)
    counts.value = counts_BE + jnp.sum(routing_lib.token_assignments(routing.expert_GSK, token_mask_BL,
                                                                     self.num_experts), axis=1)
    # Each group holds one token whose choices are distinct experts: one buffer slot per expert suffices.
    compact = dataclasses.replace(routing, slot_GSK=jnp.zeros_like(routing.slot_GSK), capacity=1)
    y_B1D = self._experts(x_BLD, experts, compact, output_mix_weights)
    return y_B1D, self._aux(routing, token_mask_BL)
