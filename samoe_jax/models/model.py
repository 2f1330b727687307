"""LanguageModel: the t5x-style Model contract (loss_fn, score_batch, init) around the Decoder.

Batches are seqio decoder features: 'decoder_input_tokens' int32 [B, L] (targets shifted right, 0 first),
'decoder_target_tokens' int32 [B, L], 'decoder_loss_weights' float32 [B, L] (0 on padding).

Total loss = cross-entropy + lb_loss_coef * sum_l L_bal(l) + z_loss_coef * sum_l L_z(l) (methods.md §1.2); the
cross-entropy is reported on its own so perplexity curves are never polluted by the auxiliary losses.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from samoe_jax.layers.experts import ExpertWeights, mix_all_layers, mixing_weights
from samoe_jax.layers.inference import InferenceMode
from samoe_jax.models.losses import output_cross_entropy
from samoe_jax.models.spec import ModelSpec
from samoe_jax.models.transformer import Decoder, LayerExperts

Params = Any
Batch = dict[str, jax.Array]


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
    rows = max(1, self.spec.group_size // seq_len) if self.spec.moe_layers else 1
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

  def param_logical_axes(self) -> Params:
    """PartitionSpecs of logical axis names, same structure as the parameters (no allocation)."""
    return nn.get_partition_spec(jax.eval_shape(self.init_boxed, jax.random.key(0)))

  # ------------------------------------------------------------------------------------------------- forward
  def hidden(self, params: Params, tokens_BL: jax.Array, *, train: bool = False, rng: jax.Array | None = None,
             sequence_routing: bool = False,
             experts: dict[int, LayerExperts] | None = None) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
    """Final hidden states h_BLD and the MoE layers' aux dicts.

    sequence_routing: evaluation routing (layers/inference.py): every sequence is routed on its own with a fixed
    capacity, so a token's output depends on its own sequence's earlier tokens only, never on padding, the
    padded length or the other rows. experts: `layer_experts(params)`, mixed beforehand (else mixed here).
    """
    if sequence_routing and train:
      raise ValueError('LanguageModel.hidden: sequence_routing is for evaluation; it needs train=False')
    rngs = {'dropout': rng} if (train and rng is not None) else {}
    inference = InferenceMode() if sequence_routing else None
    return self.module.apply({'params': params}, tokens_BL, token_mask(tokens_BL), train=train, rngs=rngs,
                             inference=inference, experts=experts)

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
    """Evaluation logits, float32 [B, L, V] (sequence_routing, experts: see `hidden`)."""
    h_BLD, _ = self.hidden(params, tokens_BL, train=False, sequence_routing=sequence_routing, experts=experts)
    return self.project(params, h_BLD)

  def layer_experts(self, params: Params) -> dict[int, LayerExperts]:
    """Every MoE block's experts mixed from the pool ({block index: LayerExperts}; {} for a dense model), to pass
    as `experts=` to many forward passes with the same parameters."""
    return self.module.apply({'params': params}, method=lambda decoder: decoder.layer_experts()[0])

  # ------------------------------------------------------------------------------------------------ decoding
  def prefill(self, params: Params, tokens_BL: jax.Array, lengths_B: jax.Array, *,
              experts: dict[int, LayerExperts] | None = None) -> tuple[jax.Array, Params]:
    """Greedy decoding's first pass over right-padded prompts (decoder inputs, row b real for its first
    lengths_B[b] positions): (h_BLD, cache), the cache holding every layer's keys/values for max_len positions and
    every MoE layer's slot counts (evaluation routing)."""
    inference = InferenceMode.prefill(lengths_B, self.spec.max_len)
    (h_BLD, _), variables = self.module.apply({'params': params}, tokens_BL, token_mask(tokens_BL), train=False,
                                              inference=inference, experts=experts, mutable=['cache'])
    return h_BLD, variables['cache']

  def decode_step(self, params: Params, cache: Params, tokens_B: jax.Array, positions_B: jax.Array, *,
                  experts: dict[int, LayerExperts] | None = None) -> tuple[jax.Array, Params]:
    """One token per row at positions_B (int32 [B]) after `prefill`: (h_BD, updated cache). h_BD equals the full
    forward pass's hidden state at that position of the whole sequence (evaluation routing)."""
    inference = InferenceMode.step(positions_B, self.spec.max_len)
    mask_B1 = ((tokens_B != 0) | (positions_B == 0))[:, None]   # token_mask at absolute positions
    (h_B1D, _), variables = self.module.apply({'params': params, 'cache': cache}, tokens_B[:, None], mask_B1,
                                              train=False, inference=inference, experts=experts,
                                              mutable=['cache'])
    return h_B1D[:, 0], variables['cache']

  def loss_fn(self, params: Params, batch: Batch, rng: jax.Array | None,
              train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(total loss, metrics). Metrics: scalars and per-MoE-layer arrays (see module docstring)."""
    if train and self.spec.dropout_rate > 0 and rng is None:
      raise ValueError('loss_fn(train=True) needs a dropout rng when model.dropout_rate > 0')
    h_BLD, auxes = self.hidden(params, batch['decoder_input_tokens'], train=train, rng=rng)
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
    aux_loss = self.spec.lb_loss_coef * lb + self.spec.z_loss_coef * z
    loss = ce + aux_loss
    metrics.update({'loss': loss, 'aux_loss': aux_loss})
    metrics.update(self._moe_metrics(auxes, lb, z))
    return loss, metrics

  def _moe_metrics(self, auxes: list[dict[str, jax.Array]], lb: jax.Array, z: jax.Array) -> dict[str, jax.Array]:
    if not auxes:
      return {}
    out = {'moe/lb_loss': lb, 'moe/z_loss': z}
    mixing = []
    for layer, aux in zip(self.spec.moe_layers, auxes):
      for key in ('expert_load', 'dropped_fraction', 'router_entropy', 'lb_loss', 'z_loss'):
        out[f'moe/layer{layer}/{key}'] = aux[key]
      if 'mixing_weights' in aux:
        mixing.append(aux['mixing_weights'])
    out['moe/dropped_fraction'] = jnp.mean(jnp.stack([a['dropped_fraction'] for a in auxes]))
    if mixing:
      out['pool/mixing_weights'] = jnp.stack(mixing)
    return out

  def score_batch(self, params: Params, batch: Batch) -> jax.Array:
    """Sum of target log-likelihoods weighted by decoder_loss_weights: float32 [B] (rank classification)."""
    logits_BLV = self.logits(params, batch['decoder_input_tokens'])
    ll_BL = -token_cross_entropy(logits_BLV, batch['decoder_target_tokens'])
    return jnp.sum(ll_BL * batch['decoder_loss_weights'].astype(jnp.float32), axis=-1)

  # ----------------------------------------------------------------------------------------------- SaMoE pool
  def mixing_weights(self, params: Params) -> np.ndarray | None:
    """Every MoE layer's mixing weights over the pool: [L_moe, P] (or [L_moe, E, P]); one-hot when fixed."""
    spec = self.spec
    if not spec.moe_layers:
      return None
    if spec.mixing == 'learned':
      return np.asarray(mixing_weights(params['mixing_logits']['alpha'], spec.temperature))
    one_hot_LP = np.eye(spec.pool_size, dtype=np.float32)[list(spec.pool_entry)]
    if spec.granularity == 'layer':
      return one_hot_LP
    return np.repeat(one_hot_LP[:, None, :], spec.num_experts, axis=1)

  def materialize(self, params: Params) -> list[ExpertWeights]:
    """Every MoE layer's effective experts (leading axis E) in MoE-layer order, for serving or analysis."""
    weights = self.mixing_weights(params)
    if weights is None:
      return []
    mixed = mix_all_layers(ExpertWeights(**params['expert_pool']), jnp.asarray(weights))
    return [mixed.entry(i) for i in range(len(self.spec.moe_layers))]

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
      elif 'router' in names:
        parts['routers'] += size
      else:
        parts['non_expert'] += size
    total = sum(parts.values())
    spec = self.spec
    per_expert = parts['expert_pool'] // max(spec.pool_size * spec.num_experts, 1)
    num_moe = len(spec.moe_layers)
    materialized = parts['non_expert'] + parts['routers'] + num_moe * spec.num_experts * per_expert
    active = parts['non_expert'] + parts['routers'] + num_moe * spec.top_k * per_expert
    return {'total': total, **parts, 'materialized': materialized, 'active_per_token': active,
            'params_per_expert': per_expert, 'num_moe_layers': num_moe}
