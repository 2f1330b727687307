"""MoeCall: what one forward pass hands every MoE layer besides its input, experts and token mask.

Methods that need something from outside the layer add a field here instead of an argument on the decoder's,
the block's and the layer's signatures (docs/architecture.md). Every field is optional (None: not used):

  inference         an InferenceMode (layers/inference.py): evaluation routing and the decoding caches; None
                    routes training/validation groups.
  active_k          SMoE-Dropout's traced int32 k in [1, top_k] of the train step (layers/k_schedule.py).
  tokens_BL         the decoder's input token ids (hash routing, layers/routing_strategies.py).
  shared_router_DE  WideNet's router kernel shared by every MoE layer (pool.share_router, layers/shared.py); then
                    the layer has no router of its own.
  attention_BLM     the block's head-averaged attention probabilities (moe.graph.kind='attention',
                    layers/graph_routing.py); the block sets it.
"""

from __future__ import annotations

import dataclasses

import jax

from samoe_jax.layers.inference import InferenceMode


@dataclasses.dataclass(frozen=True)
class MoeCall:
  """See the module docstring."""
  inference: InferenceMode | None = None
  active_k: jax.Array | None = None
  tokens_BL: jax.Array | None = None
  shared_router_DE: jax.Array | None = None
  attention_BLM: jax.Array | None = None

  def replace(self, **changes) -> 'MoeCall':
    return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    MoeCall, data_fields=['inference', 'active_k', 'tokens_BL', 'shared_router_DE', 'attention_BLM'],
    meta_fields=[])
