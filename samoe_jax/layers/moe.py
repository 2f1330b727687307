"""The MoE FFN layer: its own router and mixing logits, experts drawn from the global pool.

Einsum letters: B batch, L length, G groups, S tokens per group, D width, E experts, P pool entries.

One layer of a standard MoE (GShard/Switch, docs/methods/routing.md), a SaMoE layer (§2) and a fully tied layer are the
same module: it receives its effective experts, which the decoder mixed from the global pool (experts.py).
Dropped tokens get a zero output, so only the block's residual carries them.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from samoe_jax.layers import initializers
from samoe_jax.layers import capacity as capacity_lib
from samoe_jax.layers import expert_choice, hash_routing, router_noise
from samoe_jax.layers import routing as routing_lib
from samoe_jax.layers.dispatch import get_dispatcher
from samoe_jax.layers.experts import ExpertWeights, expert_ffn, expert_ffn_output_mixed
from samoe_jax.layers.inference import InferenceMode
from samoe_jax.layers.shared import shared_router_logits
from samoe_jax.layers.graph_routing import GraphConfig, GraphMixer, masked_entropy


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
  """Router logits in float32: x_GSD -> logits_GSE (no bias by default, as in fairseq's Top2Gate).

  use_bias (moe.router_bias): + b_E, as SMoE-Dropout's Linear router. trainable=False (moe.router_trainable):
  a frozen random router (SMoE-Dropout --freeze_gate): stop_gradient in the forward pass, and its parameters
  carry the logical axis 'frozen_router' instead of 'router', which the optimizer maps to "no update"
  (training/optimizer.py), so they stay exactly at their initial values.
  """
  num_experts: int
  init_std: float
  use_bias: bool = False
  trainable: bool = True

  @nn.compact
  def __call__(self, x_GSD: jax.Array) -> jax.Array:
    axis = 'router' if self.trainable else 'frozen_router'
    w_DE = self.param('kernel', initializers.normal(self.init_std, ('embed', axis)),
                      (x_GSD.shape[-1], self.num_experts))
    if not self.trainable:
      w_DE = jax.lax.stop_gradient(w_DE)
    logits_GSE = jnp.einsum('gsd,de->gse', x_GSD.astype(jnp.float32), w_DE)
    if self.use_bias:
      b_E = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros_init(), (axis,)),
                       (self.num_experts,))
      logits_GSE = logits_GSE + (b_E if self.trainable else jax.lax.stop_gradient(b_E))
    return logits_GSE


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
  # Routing policies (docs/methods/routing.md, §6; layers/routing_policy.py, docs/methods/routing.md); defaults = top-k.
  routing_kind: str = 'token_choice'   # 'token_choice' | 'expert_choice' (not causal) | 'hash' (needs tokens_BL)
  gate: str = 'softmax'                # 'softmax' | 'topk_softmax' | 'uniform'
  gate_renorm: str = 'auto'            # 'auto' | 'none' | 'before_drop' | 'after_drop'
  second_policy: str = 'all'           # 'all' | 'sampling' | 'random' (training only)
  noise: str = 'none'                  # 'none' | 'jitter' | 'gumbel' | 'gaussian' (training only)
  noise_eps: float = 0.01              # jitter's epsilon
  capacity_formula: str = 'deepspeed'  # 'deepspeed' | 'switch' | 'fairseq' | 'none' (layers/capacity.py)
  router_bias: bool = False
  router_trainable: bool = True
  graph: GraphConfig = GraphConfig()   # Similarity- / Attention-Aware routing (layers/graph_routing.py); off

  @nn.compact
  def __call__(self, x_BLD: jax.Array, experts: ExpertWeights, token_mask_BL: jax.Array, *, train: bool,
               output_mix_weights: jax.Array | None = None,
               inference: InferenceMode | None = None,
               router_DE: jax.Array | None = None,
               active_k: jax.Array | None = None,
               tokens_BL: jax.Array | None = None,
               attention_BLM: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """attention_BLM: the block's head-averaged attention probabilities (moe.graph_routing='attention').
    router_DE: WideNet's router kernel shared by every MoE layer (pool.share_router, layers/shared.py); then
    this layer has no router of its own. active_k: traced int32 scalar in [1, top_k], the number of choices used
    (SMoE-Dropout's k schedule, routing.route). tokens_BL: the decoder's input token ids (hash routing)."""
    b, l, d = x_BLD.shape
    if router_DE is not None:
      router = functools.partial(shared_router_logits, w_DE=router_DE)
    elif self.routing_kind == 'hash':
      router = None   # Hash Layers: no router
    else:
      router = Router(self.num_experts, self.init_std, self.router_bias, self.router_trainable, name='router')
    if self.routing_kind == 'hash' and tokens_BL is None:
      raise ValueError("MoeFFN: moe.routing='hash' needs the token ids (tokens_BL)")
    mixer = None   # Similarity- / Attention-Aware routing (layers/graph_routing.py): p~ of whole sequences
    if self.graph.enabled:
      mixer = GraphMixer(self.graph, self.init_std, name='graph')
      mix_BL = lambda logits_BLE: mixer(jax.nn.softmax(logits_BLE.astype(jnp.float32), -1), x_BLD, token_mask_BL,
                                        attention_BLM, inference)
    if inference is None:
      s = self.group_size
      x_GSD = to_groups(x_BLD, s)
      mask_GS = to_groups(token_mask_BL[..., None], s)[..., 0]
      tokens_GS = to_groups(tokens_BL[..., None], s)[..., 0] if tokens_BL is not None else None
      cf = self.capacity_factor_train if train else self.capacity_factor_eval
      capacity = self._capacity(s, cf)
      ungroup = lambda y_GSD: from_groups(y_GSD, b, l)
    else:
      if train:
        raise ValueError('MoeFFN: an InferenceMode forward pass must have train=False')
      if self.priority not in routing_lib.CAUSAL_PRIORITIES or self.routing_kind == 'expert_choice':
        what = ("needs moe.routing 'token_choice' or 'hash', got 'expert_choice'"
                if self.routing_kind == 'expert_choice'
                else f"needs moe.slot_priority='position' (causal), got {self.priority!r}")
        raise ValueError(f'MoeFFN: evaluation routing {what}: it is not causal (a later token can take an '
                         "earlier token's slot), so scores would depend on padding and decoding could not be exact")
      s = self.eval_group_size or self.group_size
      capacity = self._capacity(s, self.capacity_factor_eval)
      if inference.cache == 'step':
        return self._decode_step(x_BLD, experts, token_mask_BL, router, capacity, s, inference,
                                 output_mix_weights, active_k, tokens_BL,
                                 graph_mix=mix_BL if mixer is not None else None)
      x_GSD = to_runs(x_BLD, s)
      mask_GS = to_runs(token_mask_BL[..., None].astype(jnp.int32), s)[..., 0].astype(jnp.bool_)
      tokens_GS = to_runs(tokens_BL[..., None], s)[..., 0] if tokens_BL is not None else None
      ungroup = lambda y_GSD: from_runs(y_GSD, b, l)
    x_GSD = nn.with_logical_constraint(x_GSD, ('group', 'length', 'embed'))
    graph_mix = None
    if mixer is not None:   # p~ of the whole sequences, regrouped like the tokens
      regroup = (lambda a_BLE: to_groups(a_BLE, s)) if inference is None else (lambda a_BLE: to_runs(a_BLE, s))
      graph_mix = lambda logits_GSE: regroup(mix_BL(ungroup(logits_GSE)))
    routing = self._route(x_GSD, mask_GS, router, capacity, train, active_k, tokens_GS, graph_mix=graph_mix)
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

  def _capacity(self, tokens: int, capacity_factor: float) -> int:
    return capacity_lib.expert_capacity(tokens, self.num_experts, self.top_k, capacity_factor, self.min_capacity,
                                        self.capacity_formula)

  def _route(self, x_GSD: jax.Array, mask_GS: jax.Array, router, capacity: int, train: bool,
             active_k: jax.Array | None, tokens_GS: jax.Array | None,
             counts_GE: jax.Array | None = None, graph_mix=None) -> routing_lib.Routing:
    """The configured routing policy (layers/routing.py, expert_choice.py, hash_routing.py) of x_GSD.

    Random policies (second_policy, noise, priority 'random') act only in training and draw from the 'routing'
    rng stream; in evaluation second_policy is 'all', there is no noise, and 'random' priority ranks by position.
    graph_mix: logits_GSE -> p~_GSE, the graph-mixed probabilities routed on (layers/graph_routing.py); None: p.
    """
    if self.routing_kind == 'hash':
      return hash_routing.hash_route(tokens_GS, mask_GS, num_experts=self.num_experts, capacity=capacity,
                                     counts_GE=counts_GE)
    noise = self.noise if train else 'none'
    if noise == 'jitter':   # DeepSpeed 'Jitter': multiplicative noise on the router input
      x_GSD = router_noise.jitter(x_GSD, self.make_rng('routing'), self.noise_eps)
    logits_GSE = router(x_GSD)
    if self.routing_kind == 'expert_choice':
      return expert_choice.expert_choice_route(logits_GSE, mask_GS, capacity=capacity)
    second_policy = self.second_policy if train else 'all'
    priority = self.priority if (train or self.priority != 'random') else 'position'
    route_noise = noise if noise in ('gumbel', 'gaussian') else 'none'
    rng = None
    if second_policy != 'all' or route_noise != 'none' or priority == 'random':
      rng = self.make_rng('routing')
    return routing_lib.route(logits_GSE, mask_GS, top_k=self.top_k, capacity=capacity, priority=priority,
                             counts_GE=counts_GE, active_k=active_k, gate=self.gate, gate_renorm=self.gate_renorm,
                             probs_GSE=graph_mix(logits_GSE) if graph_mix is not None else None,   # graph routing
                             second_policy=second_policy, noise=route_noise, rng=rng)

  def _aux(self, routing: routing_lib.Routing, mask_GS: jax.Array) -> dict[str, jax.Array]:
    """Hash routing has no router and expert choice is balanced by construction: their lb_loss is 0 (and hash's
    z_loss too)."""
    if self.routing_kind == 'token_choice':
      aux = {'lb_loss': routing_lib.load_balancing_loss(routing, mask_GS)}
    else:
      aux = {'lb_loss': jnp.zeros((), jnp.float32)}
    aux['z_loss'] = (jnp.zeros((), jnp.float32) if self.routing_kind == 'hash'
                     else routing_lib.router_z_loss(routing, mask_GS))
    aux.update(routing_lib.routing_metrics(routing, mask_GS))
    aux['selection_entropy'] = aux['router_entropy']   # H of the probabilities routed on: p~ (graph routing) or p
    if self.graph.enabled:   # router_entropy stays H(p) of the router's own softmax
      aux['router_entropy'] = masked_entropy(jax.nn.softmax(routing.logits_GSE, axis=-1), mask_GS)
    return aux

  def _write_prefill_counts(self, routing: routing_lib.Routing, mask_GS: jax.Array, b: int, run: int,
                            inference: InferenceMode) -> None:
    """Stores each row's per-expert assignments within the run holding its last real position (lengths - 1)."""
    per_token_BLE = routing_lib.token_assignments(routing.expert_GSK, mask_GS, self.num_experts,
                                                  routing.chosen_GSK).reshape(
        b, -1, self.num_experts)
    lengths_B = inference.index_B.astype(jnp.int32)
    run_start_B = (lengths_B - 1) // run * run
    pos_L = jnp.arange(per_token_BLE.shape[1])
    in_run_BL = (pos_L[None] >= run_start_B[:, None]) & (pos_L[None] < lengths_B[:, None])
    counts = self.variable('cache', 'slot_counts', jnp.zeros, (b, self.num_experts), jnp.int32)
    counts.value = jnp.einsum('ble,bl->be', per_token_BLE, in_run_BL.astype(jnp.int32))

  def _decode_step(self, x_BLD: jax.Array, experts: ExpertWeights, token_mask_BL: jax.Array, router: nn.Module,
                   capacity: int, run: int, inference: InferenceMode,
                   output_mix_weights: jax.Array | None, active_k: jax.Array | None = None,
                   tokens_BL: jax.Array | None = None, graph_mix=None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One token per row (x_B1D at positions index_B): its slots continue the row's run (counts reset where a run
    starts); the kept choices then go to the experts as one-token groups. graph_mix: logits_B1E -> p~_B1E over the
    row's cached positions (graph routing, layers/graph_routing.py)."""
    b, l, d = x_BLD.shape
    if l != 1:
      raise ValueError(f"MoeFFN: a decoding step takes one token per row, got length {l}")
    counts = self.variable('cache', 'slot_counts', jnp.zeros, (b, self.num_experts), jnp.int32)
    new_run_B = inference.index_B % run == 0
    counts_BE = jnp.where(new_run_B[:, None], 0, counts.value)
    routing = self._route(x_BLD, token_mask_BL, router, capacity, False, active_k, tokens_BL, counts_BE,
                          graph_mix=graph_mix)
    counts.value = counts_BE + jnp.sum(routing_lib.token_assignments(routing.expert_GSK, token_mask_BL,
                                                                     self.num_experts, routing.chosen_GSK), axis=1)
    # Each group holds one token whose choices are distinct experts: one buffer slot per expert suffices.
    compact = dataclasses.replace(routing, slot_GSK=jnp.zeros_like(routing.slot_GSK), capacity=1)
    y_B1D = self._experts(x_BLD, experts, compact, output_mix_weights)
    return y_B1D, self._aux(routing, token_mask_BL)
