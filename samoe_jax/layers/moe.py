"""The MoE FFN layer: routing groups, capacity, a routing strategy, dispatch and the experts it is handed.

Einsum letters: B batch, L length, G groups, S tokens per group, D width, E experts, P pool entries.

One layer of a standard MoE (GShard / Switch), a SaMoE layer and a fully tied layer are the same module: it
receives its effective experts, which the decoder mixed from the global pool (layers/pool.py). How tokens choose
experts is the strategy's business (layers/routing_strategies.py); what the pass needs from outside (inference mode,
SMoE-Dropout's k, token ids, a shared router, attention probabilities) comes in one MoeCall (layers/moe_call.py).
Dropped tokens get a zero output, so only the block's residual carries them; moe.dispatch='ragged' drops none
(layers/ragged.py).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from samoe_jax.layers import token_choice
from samoe_jax.layers.capacity import Capacity
from samoe_jax.layers.dispatch import Dispatcher, get_dispatcher
from samoe_jax.layers.experts import ExpertWeights, LayerExperts
from samoe_jax.layers.graph_routing import GraphConfig, GraphMixer, masked_entropy
from samoe_jax.layers.grouping import from_groups, from_runs, to_groups, to_runs
from samoe_jax.layers.inference import InferenceMode
from samoe_jax.layers.moe_call import MoeCall
from samoe_jax.layers.routing_strategies import RouteInputs, RoutingStrategy
from samoe_jax.layers.shared import shared_router_logits


class MoeFFN(nn.Module):
  """One MoE layer: (x_BLD, experts, token_mask_BL, train, call) -> (y_BLD, aux). aux holds 'lb_loss',
  'z_loss' and the routing metrics.

  experts: this layer's effective experts (ExpertWeights, leading axis E), already mixed from the pool; or a
  LayerExperts whose output_mix_weights ([P] or [E, P]) mix the outputs of the whole pool (leading [P, E]).
  call.inference: None routes groups of `capacity.group_size` tokens (training and validation); an InferenceMode
  routes each sequence on its own in runs of `capacity.run` positions (layers/inference.py), and in greedy
  decoding keeps every row's per-expert assignment count of its current run in the 'cache' collection
  ('slot_counts', [B, E]), so a decoded token is kept or dropped exactly as in a full forward pass.
  """
  routing: RoutingStrategy            # token choice, expert choice, hash (layers/routing_strategies.py)
  capacity: Capacity                  # routing groups and slots (layers/capacity.py)
  dispatch: str                       # 'gather' | 'einsum' | 'ragged' (dropless) (layers/dispatch.py)
  init_std: float
  dtype: jnp.dtype = jnp.float32
  graph: GraphConfig | None = None    # Similarity- / Attention-Aware routing (layers/graph_routing.py); None: off

  @property
  def num_experts(self) -> int:
    return self.routing.num_experts

  @nn.compact
  def __call__(self, x_BLD: jax.Array, experts: ExpertWeights | LayerExperts, token_mask_BL: jax.Array, *,
               train: bool, call: MoeCall = MoeCall()) -> tuple[jax.Array, dict[str, jax.Array]]:
    if isinstance(experts, ExpertWeights):
      experts = LayerExperts(experts)
    b, l, d = x_BLD.shape
    router = self._router(call)
    graph_mix_BL = self._graph_mixer(x_BLD, token_mask_BL, call)
    inference = call.inference
    if inference is None:
      s = self.capacity.group_size
      regroup, ungroup = (lambda a: to_groups(a, s)), (lambda y_GSD: from_groups(y_GSD, b, l))
      mask_GS = regroup(token_mask_BL[..., None])[..., 0]
      cf = self.capacity.capacity_factor_train if train else self.capacity.capacity_factor_eval
    else:
      self._check_inference(train)
      s = self.capacity.run
      if inference.cache == 'step':
        return self._decode_step(x_BLD, experts, token_mask_BL, router, s, call, graph_mix_BL)
      regroup, ungroup = (lambda a: to_runs(a, s)), (lambda y_GSD: from_runs(y_GSD, b, l))
      mask_GS = regroup(token_mask_BL[..., None].astype(jnp.int32))[..., 0].astype(jnp.bool_)
      cf = self.capacity.capacity_factor_eval
    x_GSD = nn.with_logical_constraint(regroup(x_BLD), ('group', 'length', 'embed'))
    probs = None
    if graph_mix_BL is not None:   # p~ of the whole sequences, regrouped like the tokens
      probs = lambda logits_GSE: regroup(graph_mix_BL(ungroup(logits_GSE)))
    inputs = RouteInputs(x_GSD, mask_GS, self._slots(s, cf), active_k=call.active_k, probs=probs,
                         tokens_GS=regroup(call.tokens_BL[..., None])[..., 0] if call.tokens_BL is not None else None)
    routing = self.routing.route(self, router, inputs, train)
    if inference is not None and inference.cache == 'prefill':
      self._write_prefill_counts(routing, mask_GS, b, s, inference)
    y_GSD = self._experts(x_GSD, experts, routing)
    return ungroup(y_GSD), self._aux(routing, mask_GS)

  # ---------------------------------------------------------------------------------------------- parts
  def _router(self, call: MoeCall):
    """WideNet's shared kernel when the call carries one, else the strategy's own router (None: hash)."""
    if call.shared_router_DE is not None:
      return lambda x_GSD: shared_router_logits(x_GSD, call.shared_router_DE)
    return self.routing.make_router(self.init_std)

  def _graph_mixer(self, x_BLD: jax.Array, token_mask_BL: jax.Array, call: MoeCall):
    """Similarity- / Attention-Aware routing: logits_BLE -> p~_BLE over whole sequences, or None when off."""
    if self.graph is None or not self.graph.enabled:
      return None
    mixer = GraphMixer(self.graph, self.init_std, name='graph')
    return lambda logits_BLE: mixer(jax.nn.softmax(logits_BLE.astype(jnp.float32), -1), x_BLD, token_mask_BL,
                                    call.attention_BLM, call.inference)

  def _check_inference(self, train: bool) -> None:
    if train:
      raise ValueError('MoeFFN: an InferenceMode forward pass must have train=False')
    if not self.routing.causal:
      raise ValueError(f'MoeFFN: evaluation routing {self.routing.noncausal_reason}: it is not causal (a later '
                       "token can take an earlier token's slot), so scores would depend on padding and decoding "
                       'could not be exact')

  @property
  def _dispatcher(self) -> Dispatcher:
    return get_dispatcher(self.dispatch)

  def _slots(self, tokens: int, capacity_factor: float) -> int:
    """C for a group (or run) of `tokens` tokens; a dropless dispatcher gets C = tokens: a token picks an expert at
    most once, so every choice fits and none is dropped (layers/ragged.py)."""
    if self._dispatcher.dropless:
      if self.routing.fixed_capacity:
        raise ValueError(f"MoeFFN: moe.dispatch={self.dispatch!r} is dropless, but moe.routing="
                         f"{self.routing.name!r} has a fixed capacity by definition; use moe.dispatch='gather' or "
                         "'einsum'")
      return tokens
    return self.capacity.slots(tokens, self.num_experts, self.routing.top_k, capacity_factor)

  def _experts(self, x_GSD: jax.Array, experts: LayerExperts, routing: token_choice.Routing) -> jax.Array:
    """Dispatch, expert FFNs, combine: x_GSD -> y_GSD (layers/dispatch.py)."""
    return self._dispatcher.apply(x_GSD, experts, routing, self.dtype)

  def _aux(self, routing: token_choice.Routing, mask_GS: jax.Array) -> dict[str, jax.Array]:
    """The strategy's losses, then the routing metrics. selection_entropy is H of the probabilities routed on
    (p~ under graph routing); router_entropy stays H(p) of the router's own softmax."""
    aux = self.routing.aux_losses(routing, mask_GS)
    aux.update(token_choice.routing_metrics(routing, mask_GS))
    aux['selection_entropy'] = aux['router_entropy']
    if self.graph is not None and self.graph.enabled:
      aux['router_entropy'] = masked_entropy(jax.nn.softmax(routing.logits_GSE, axis=-1), mask_GS)
    return aux

  # ----------------------------------------------------------------------------------------- decoding
  def _write_prefill_counts(self, routing: token_choice.Routing, mask_GS: jax.Array, b: int, run: int,
                            inference: InferenceMode) -> None:
    """Stores each row's per-expert assignments within the run holding its last real position (lengths - 1)."""
    per_token_BLE = token_choice.token_assignments(routing.expert_GSK, mask_GS, self.num_experts,
                                                  routing.chosen_GSK).reshape(b, -1, self.num_experts)
    lengths_B = inference.index_B.astype(jnp.int32)
    run_start_B = (lengths_B - 1) // run * run
    pos_L = jnp.arange(per_token_BLE.shape[1])
    in_run_BL = (pos_L[None] >= run_start_B[:, None]) & (pos_L[None] < lengths_B[:, None])
    counts = self.variable('cache', 'slot_counts', jnp.zeros, (b, self.num_experts), jnp.int32)
    counts.value = jnp.einsum('ble,bl->be', per_token_BLE, in_run_BL.astype(jnp.int32))

  def _decode_step(self, x_BLD: jax.Array, experts: LayerExperts, token_mask_BL: jax.Array, router, run: int,
                   call: MoeCall, graph_mix_BL) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One token per row (x_B1D at positions index_B): its slots continue the row's run (counts reset where a run
    starts); the kept choices then go to the experts as one-token groups. graph_mix_BL mixes over the row's
    cached positions (layers/graph_routing.py)."""
    b, l, d = x_BLD.shape
    if l != 1:
      raise ValueError(f"MoeFFN: a decoding step takes one token per row, got length {l}")
    counts = self.variable('cache', 'slot_counts', jnp.zeros, (b, self.num_experts), jnp.int32)
    new_run_B = call.inference.index_B % run == 0
    counts_BE = jnp.where(new_run_B[:, None], 0, counts.value)
    inputs = RouteInputs(x_BLD, token_mask_BL, self._slots(run, self.capacity.capacity_factor_eval),
                         counts_GE=counts_BE, tokens_GS=call.tokens_BL, active_k=call.active_k, probs=graph_mix_BL)
    routing = self.routing.route(self, router, inputs, False)
    counts.value = counts_BE + jnp.sum(token_choice.token_assignments(routing.expert_GSK, token_mask_BL,
                                                                     self.num_experts, routing.chosen_GSK), axis=1)
    # Each group holds one token whose choices are distinct experts: one buffer slot per expert suffices.
    compact = dataclasses.replace(routing, slot_GSK=jnp.zeros_like(routing.slot_GSK), capacity=1)
    y_B1D = self._experts(x_BLD, experts, compact)
    return y_B1D, self._aux(routing, token_mask_BL)
