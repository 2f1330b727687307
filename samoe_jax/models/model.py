"""LanguageModel: the t5x-style Model contract (loss_fn, score_batch, init) around the Decoder.

Batches are seqio decoder features: 'decoder_input_tokens' int32 [B, L] (targets shifted right, 0 first),
'decoder_target_tokens' int32 [B, L], 'decoder_loss_weights' float32 [B, L] (0 on padding).

Total loss = cross-entropy + lb_loss_coef * sum_l L_bal(l) + z_loss_coef * sum_l L_z(l) (docs/methods/routing.md); the
cross-entropy is reported on its own so perplexity curves are never polluted by the auxiliary losses.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from samoe_jax.config.layer_plan import group_rows
from samoe_jax.layers.experts import ExpertWeights, LayerExperts
from samoe_jax.layers import k_schedule
from samoe_jax.layers import pool as pool_lib
from samoe_jax.layers.inference import InferenceMode
from samoe_jax.layers.moe_call import MoeCall
from samoe_jax.layers.mixing import mixing_metrics
from samoe_jax.layers.pool import mix_all_layers, mixing_weights
from samoe_jax.layers.shared import mixing_entropy, repeated_uses
from samoe_jax.models.losses import output_cross_entropy
from samoe_jax.models.spec import ModelSpec
from samoe_jax.models.transformer import Decoder

Params = Any
Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class ForwardOptions:
  """The static choices of one forward pass (LanguageModel.hidden / loss_fn); frozen and hashable. The traced
  per-call values (rng, active_k, probes, experts) stay arguments.

  train: dropout, training capacities and random routing (the pass then needs an rng when the model draws one);
    False: evaluation (moe.eval_top_k / eval_gate, evaluation capacities).
  sequence_routing: evaluation routing (layers/inference.py): every sequence is routed on its own with a fixed
    capacity, so a token's output depends on its own sequence's earlier tokens only, never on padding, the padded
    length or the other rows. Needs train=False.
  """
  train: bool = False
  sequence_routing: bool = False

  def __post_init__(self):
    if self.sequence_routing and self.train:
      raise ValueError('ForwardOptions: sequence_routing is for evaluation; it needs train=False')


TRAIN = ForwardOptions(train=True)
EVAL = ForwardOptions()
SEQUENCE_ROUTING = ForwardOptions(sequence_routing=True)   # evaluation routing: scoring, decoding checks


def token_mask(tokens_BL: jax.Array) -> jax.Array:
  """Real input positions: the first position (its 0 is the shifted-in start token) and every non-zero token.

  Depends on the inputs only (never on targets), so routing that uses it stays causal.
  """
  first_BL = jnp.arange(tokens_BL.shape[1])[None, :] == 0
  return first_BL | (tokens_BL != 0)


def token_cross_entropy(logits_BLV: jax.Array, targets_BL: jax.Array) -> jax.Array:
  """-log softmax(logits)[target] per position, float32 [B, L]."""
  logits_BLV = logits_BLV.astype(jnp.float32)
  target_logit_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits_BLV, axis=-1) - target_logit_BL


class LanguageModel:
  """The decoder LM with its losses, scoring and parameter bookkeeping."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.spec = ModelSpec.from_config(config)
    self.module = Decoder(self.spec)

  # ----------------------------------------------------------------------------------------------- parameters
  def _init_tokens(self) -> jax.Array:
    seq_len = self.config.data.seq_len
    rows = max(1, self.spec.capacity.group_size // seq_len) if self.spec.moe_layers else 1
    return jnp.zeros((rows, seq_len), jnp.int32)

  def init_boxed(self, rng: jax.Array) -> Params:
    """Parameters wrapped in nn.LogicallyPartitioned boxes (carrying logical axis names)."""
    tokens = self._init_tokens()
    return self.module.init({'params': rng}, tokens, token_mask(tokens), train=False)['params']

  def init_params(self, rng: jax.Array) -> Params:
    return nn.meta.unbox(self.init_boxed(rng))

  def abstract_params(self) -> Params:
    """ShapeDtypeStructs of the parameters; allocates nothing."""
    return jax.eval_shape(self.init_params, jax.random.key(0))

  def abstract_probes(self) -> Params:
    """ShapeDtypeStructs of the gradient-flow probes: {probe_name(block): ExpertWeights} of every MoE block's
    effective experts ({} for a dense model); pass zeros of them as `probes=` (training/grad_stats.py)."""
    tokens = self._init_tokens()
    variables = jax.eval_shape(lambda r: self.module.init({'params': r}, tokens, token_mask(tokens), train=False),
                               jax.random.key(0))
    return variables.get('perturbations', {})

  def param_logical_axes(self) -> Params:
    """PartitionSpecs of logical axis names, same structure as the parameters (no allocation)."""
    return nn.get_partition_spec(jax.eval_shape(self.init_boxed, jax.random.key(0)))

  # ------------------------------------------------------------------------------------------------- forward
  def hidden(self, params: Params, tokens_BL: jax.Array, options: ForwardOptions = EVAL, *,
             rng: jax.Array | None = None, active_k: jax.Array | None = None, probes: Params | None = None,
             experts: dict[int, LayerExperts] | None = None) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
    """Final hidden states h_BLD and the MoE layers' aux dicts of a pass with `options` (train, sequence routing).

    rng: the dropout (and random routing) key of a training pass.
    active_k: SMoE-Dropout's traced k (int32 [] in [1, moe.top_k], layers/k_schedule.py): every MoE layer uses only
    the first active_k of its top_k choices. None: top_k (train=True) or moe.eval_top_k (train=False).
    probes: zeros of `abstract_probes()`, added to every MoE layer's effective experts so that the gradient with
    respect to them is the gradient with respect to the mixed experts W^(l) (training/grad_stats.py); None: none.
    experts: `layer_experts(params)`, mixed beforehand (else mixed here).
    """
    train = options.train
    rngs = {'dropout': rng} if (train and rng is not None) else {}
    if rngs and self.spec.moe_layers and self.spec.routing.draws_rng(train):
      rngs['routing'] = jax.random.fold_in(rng, 1)   # random routing (layers/routing_strategies.py)
    inference = InferenceMode() if options.sequence_routing else None
    variables = {'params': params, 'perturbations': probes} if probes else {'params': params}
    return self.module.apply(variables, tokens_BL, token_mask(tokens_BL), train=train, rngs=rngs,
                             call=MoeCall(inference=inference, active_k=active_k), experts=experts)

  @staticmethod
  def output_embedding(params: Params) -> jax.Array:
    """The output layer's [V, D] matrix: the token embedding when tied."""
    return params['output_embedding'] if 'output_embedding' in params else params['token_embedding']

  def project(self, params: Params, h_xD: jax.Array) -> jax.Array:
    """Output logits of final hidden states: h [..., D] -> float32 [..., V]."""
    emb_VD = self.output_embedding(params).astype(h_xD.dtype)
    return jnp.einsum('...d,vd->...v', h_xD, emb_VD, preferred_element_type=jnp.float32)

  def logits(self, params: Params, tokens_BL: jax.Array, *, sequence_routing: bool = False,
             experts: dict[int, LayerExperts] | None = None) -> jax.Array:
    """Evaluation logits, float32 [B, L, V] (sequence_routing: see ForwardOptions; experts: see `hidden`)."""
    h_BLD, _ = self.hidden(params, tokens_BL, ForwardOptions(sequence_routing=sequence_routing), experts=experts)
    return self.project(params, h_BLD)

  def layer_experts(self, params: Params) -> dict[int, LayerExperts]:
    """Every MoE block's experts mixed from the pool ({block index: LayerExperts}; {} for a dense model), to pass
    as `experts=` to many forward passes with the same parameters."""
    return self.mixed_experts(params)[0]

  def mixed_experts(self, params: Params, probes: Params | None = None
                    ) -> tuple[dict[int, LayerExperts], jax.Array | None]:
    """(`layer_experts(params)`, the mixing weights [L_moe, P] / [L_moe, E, P] or None when fixed): what the
    decoder computes at the start of a forward pass, with the gradient-flow probes added when given. Gradient
    accumulation mixes once per optimizer step with it (training/accumulate.py)."""
    variables = {'params': params, 'perturbations': probes} if probes else {'params': params}
    return self.module.apply(variables, method=lambda decoder: decoder.layer_experts())

  # ---------------------------------------------------------------------------------------------- train step
  @property
  def routing_group_rows(self) -> int:
    """Sequences per MoE routing group (1 without MoE layers): a gradient-accumulation microbatch holds a multiple
    of them (config/layer_plan.py, training/accumulate.py)."""
    return group_rows(self.config)

  @property
  def mixes_weights(self) -> bool:
    """Whether the MoE layers' experts are mixed in weight space from a learned pool, so that gradient
    accumulation mixes them once per optimizer step with `mixed_experts` (training/accumulate.py)."""
    return bool(self.spec.moe_layers) and self.spec.mixing.mixes_weights

  def train_active_k(self, step: jax.Array) -> jax.Array | None:
    """SMoE-Dropout's k of the train step at `step` (int32 []), or None for moe.smoe_dropout.kind='constant' and dense
    models (layers/k_schedule.py); pass it as loss_fn's `active_k`."""
    return k_schedule.train_active_k(self.config, step)

  # ------------------------------------------------------------------------------------------------ decoding
  def prefill(self, params: Params, tokens_BL: jax.Array, lengths_B: jax.Array, *,
              experts: dict[int, LayerExperts] | None = None) -> tuple[jax.Array, Params]:
    """Greedy decoding's first pass over right-padded prompts (decoder inputs, row b real for its first
    lengths_B[b] positions): (h_BLD, cache), the cache holding every layer's keys/values for max_len positions and
    every MoE layer's slot counts (evaluation routing)."""
    inference = InferenceMode.prefill(lengths_B, self.spec.model.max_len)
    (h_BLD, _), variables = self.module.apply({'params': params}, tokens_BL, token_mask(tokens_BL), train=False,
                                              call=MoeCall(inference=inference), experts=experts, mutable=['cache'])
    return h_BLD, variables['cache']

  def decode_step(self, params: Params, cache: Params, tokens_B: jax.Array, positions_B: jax.Array, *,
                  experts: dict[int, LayerExperts] | None = None) -> tuple[jax.Array, Params]:
    """One token per row at positions_B (int32 [B]) after `prefill`: (h_BD, updated cache). h_BD equals the full
    forward pass's hidden state at that position of the whole sequence (evaluation routing)."""
    inference = InferenceMode.step(positions_B, self.spec.model.max_len)
    mask_B1 = ((tokens_B != 0) | (positions_B == 0))[:, None]   # token_mask at absolute positions
    (h_B1D, _), variables = self.module.apply({'params': params, 'cache': cache}, tokens_B[:, None], mask_B1,
                                              train=False, call=MoeCall(inference=inference),
                                              experts=experts, mutable=['cache'])
    return h_B1D[:, 0], variables['cache']

  def loss_fn(self, params: Params, batch: Batch, rng: jax.Array | None, options: ForwardOptions, *,
              active_k: jax.Array | None = None, probes: Params | None = None,
              experts: dict[int, LayerExperts] | None = None, extra_loss: Any | None = None
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(total loss, metrics) of a pass with `options` (TRAIN, EVAL, ...). Metrics: scalars and per-MoE-layer
    arrays (see module docstring).

    active_k: SMoE-Dropout's k at this step (see `hidden`; the train step passes it when moe.smoe_dropout.kind is not
    'constant'), reported as the metric 'moe/active_k'. None adds nothing to the graph.

    extra_loss: optional (params, h_BLD, batch) -> (term, metrics) added to the loss, e.g. knowledge distillation
    (samoe_jax/training/distill.py); None adds nothing to the graph.

    probes: gradient-flow probes on the MoE layers' effective experts (see `hidden`; training/grad_stats.py).

    experts: the MoE layers' experts mixed beforehand (`mixed_experts`; see `hidden`). The pool parameters then
    get no gradient here and the metrics have no 'pool/mixing_weights': the caller mixed, so it adds both."""
    train = options.train
    if train and self.spec.model.dropout_rate > 0 and rng is None:
      raise ValueError('loss_fn(train=True) needs a dropout rng when model.dropout_rate > 0')
    if (train and rng is None and self.spec.moe_layers
        and self.spec.routing.draws_rng(train)):
      raise ValueError('loss_fn(train=True) needs an rng: the routing policy draws random numbers in training '
                       f'({self.spec.routing})')
    h_BLD, auxes = self.hidden(params, batch['decoder_input_tokens'], options, rng=rng, active_k=active_k,
                               probes=probes, experts=experts)
    b, l, d = h_BLD.shape
    weights_T = batch['decoder_loss_weights'].astype(jnp.float32).reshape(b * l)
    num_tokens = jnp.sum(weights_T)
    ce_sum, correct_sum = output_cross_entropy(h_BLD.reshape(b * l, d), self.output_embedding(params),
                                               batch['decoder_target_tokens'].reshape(b * l), weights_T)
    ce = ce_sum / jnp.maximum(num_tokens, 1.0)
    metrics = {'cross_entropy': ce, 'num_tokens': num_tokens,
               'accuracy': correct_sum / jnp.maximum(num_tokens, 1.0)}
    lb = sum((a['lb_loss'] for a in auxes), jnp.zeros((), jnp.float32))
    z = sum((a['z_loss'] for a in auxes), jnp.zeros((), jnp.float32))
    aux_loss = self.spec.moe.lb_loss_coef * lb + self.spec.moe.z_loss_coef * z
    if self.spec.pool.entropy_coef:   # pool.entropy_coef (layers/shared.py); 0 adds nothing to the graph
      entropy = mixing_entropy(params['mixing_logits']['alpha'], self.spec.pool.temperature)
      aux_loss = aux_loss + self.spec.pool.entropy_coef * entropy
      metrics['pool/mixing_entropy'] = entropy
    loss = ce + aux_loss
    if extra_loss is not None:   # KD (training/distill.py): a term on the final hidden states
      term, extra_metrics = extra_loss(params, h_BLD, batch)
      loss = loss + term
      metrics.update(extra_metrics)
    metrics.update({'loss': loss, 'aux_loss': aux_loss})
    metrics.update(self._moe_metrics(auxes, lb, z))
    if active_k is not None and auxes:   # SMoE-Dropout's k schedule (layers/k_schedule.py)
      metrics['moe/active_k'] = jnp.asarray(active_k, jnp.float32)
    return loss, metrics

  def _moe_metrics(self, auxes: list[dict[str, jax.Array]], lb: jax.Array, z: jax.Array) -> dict[str, jax.Array]:
    if not auxes:
      return {}
    out = {'moe/lb_loss': lb, 'moe/z_loss': z}
    mixing = []
    for layer, aux in zip(self.spec.moe_layers, auxes):
      for key in ('expert_load', 'dropped_fraction', 'router_entropy', 'selection_entropy', 'lb_loss', 'z_loss'):
        out[f'moe/layer{layer}/{key}'] = aux[key]
      if 'mixing_weights' in aux:
        mixing.append(aux['mixing_weights'])
    out['moe/dropped_fraction'] = jnp.mean(jnp.stack([a['dropped_fraction'] for a in auxes]))
    if mixing:   # learned mixing: the weights [L_moe, (E,) P] and, per MoE layer, their entropy and largest weight
      out.update(mixing_metrics(jnp.stack(mixing), self.spec.moe_layers))
    return out

  def score_batch(self, params: Params, batch: Batch) -> jax.Array:
    """Sum of target log-likelihoods weighted by decoder_loss_weights: float32 [B] (rank classification)."""
    logits_BLV = self.logits(params, batch['decoder_input_tokens'])
    ll_BL = -token_cross_entropy(logits_BLV, batch['decoder_target_tokens'])
    return jnp.sum(ll_BL * batch['decoder_loss_weights'].astype(jnp.float32), axis=-1)

  # ----------------------------------------------------------------------------------------------- SaMoE pool
  def mixing_weights(self, params: Params) -> np.ndarray | None:
    """Every MoE layer's mixing weights over the pool: [L_moe, P] (or [L_moe, E, P]); one-hot when fixed.

    Pyramid-MoE with several expert groups (config/pyramid.py): each layer's weights over its own group's pool,
    zero-padded to [L_moe, P_max] / [L_moe, E_max, P_max] (layers/pool.py).
    """
    spec = self.spec
    if not spec.moe_layers:
      return None
    groups = spec.groups
    if not spec.mixing.learned:
      return pool_lib.fixed_mixing_weights(groups, spec.pool.granularity)
    if len(groups) == 1:
      return np.asarray(mixing_weights(params['mixing_logits']['alpha'], spec.pool.temperature))
    rows = [None] * len(spec.moe_layers)
    for g in groups:
      w = mixing_weights(params[g.mixing_name]['alpha'], spec.pool.temperature)
      for i, layer in enumerate(g.layers):
        rows[layer] = w[i]
    return np.asarray(pool_lib.pad_stack(rows))

  def materialize(self, params: Params) -> list[ExpertWeights]:
    """Every MoE layer's effective experts (leading axis E) in MoE-layer order, for serving or analysis."""
    weights = self.mixing_weights(params)
    if weights is None:
      return []
    out = [None] * len(self.spec.moe_layers)
    for g in self.spec.groups:   # Pyramid-MoE: each group mixes its own pool (E_g experts per layer)
      w = jnp.stack([jnp.asarray(pool_lib.unpad(weights, g, i)) for i in range(len(g.layers))])
      mixed = mix_all_layers(pool_lib.pool_weights(self.spec, g, params[g.pool_name]), w)
      for i, layer in enumerate(g.layers):
        out[layer] = mixed[i]
    return out

  def param_summary(self) -> dict[str, int]:
    """Parameter counts by shape evaluation: total stored, its parts, materialized, and active per token.

    Parts are told apart by their logical axes: the pool's arrays carry 'pool', mixing logits 'mixing', routers
    'router'. 'materialized' stores every MoE layer's experts separately (no pool, no mixing logits);
    'active_per_token' counts non-expert parameters (embeddings included) + routers + top_k experts per layer.
    """
    shapes = jax.tree.leaves(self.abstract_params())
    axes = jax.tree.leaves(self.param_logical_axes(), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    parts = {'expert_pool': 0, 'mixing_logits': 0, 'routers': 0, 'non_expert': 0}
    for shape, names in zip(shapes, axes):
      size = math.prod(shape.shape)
      if 'pool' in names:
        parts['expert_pool'] += size
      elif 'mixing' in names:
        parts['mixing_logits'] += size
      elif 'router' in names or 'frozen_router' in names:   # frozen router: moe.router_trainable=False
        parts['routers'] += size
      else:
        parts['non_expert'] += size
    total = sum(parts.values())
    spec = self.spec
    # Pyramid-MoE groups (config/pyramid.py): P_g x E_g experts stored per group, E_l experts per MoE layer
    per_expert = parts['expert_pool'] // max(sum(g.pool_size * g.num_experts for g in spec.groups), 1)
    num_moe = len(spec.moe_layers)
    layer_experts = sum(len(g.layers) * g.num_experts for g in spec.groups)
    materialized = parts['non_expert'] + parts['routers'] + layer_experts * per_expert
    active = parts['non_expert'] + parts['routers'] + num_moe * spec.moe.top_k * per_expert
    if spec.model.share_attention or spec.pool.share_router:   # WideNet: shared weights count once per use (layers/shared.py)
      active += repeated_uses(self.abstract_params(), spec.model.num_layers, num_moe)
    return {'total': total, **parts, 'materialized': materialized, 'active_per_token': active,
            'params_per_expert': per_expert, 'num_moe_layers': num_moe}
