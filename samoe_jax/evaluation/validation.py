"""The validation-loss pass: the compiled eval step, and token-weighted means of its outputs over a list of batches.

eval_step(params, batch) -> metrics of model.loss_fn(train=False), jitted once through the partitioner (metrics
stay on device, no host synchronisation). No config validation, no data pipeline: the training loop's periodic
validation, the validation-split perplexity of `python -m samoe_jax.evaluate` (evaluation/perplexity.py) and the
slimmability analysis all compile and reduce their batches here, so their numbers agree exactly.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import numpy as np

from samoe_jax.models.model import EVAL
from samoe_jax.sharding.partitioner import PartitionedFn, Partitioner

DROPPED = 'moe/dropped_fraction'   # the model's metric (models/model.py); eval records carry it as 'eval/' + DROPPED

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def eval_step(model: Any, params: Any, batch: Batch) -> Metrics:
  """The model's metrics on one batch, without dropout (train=False capacities)."""
  _, metrics = model.loss_fn(params, batch, None, EVAL)
  return metrics


def make_eval_step(model: Any, partitioner: Partitioner, param_shardings: Any) -> PartitionedFn:
  """eval_step jitted with (params, batch) shardings and replicated metrics."""
  fn = functools.partial(eval_step, model)
  return partitioner.partition(fn, in_shardings=(param_shardings, partitioner.data_sharding()),
                               out_shardings=partitioner.replicated())


def validation_metrics(eval_fn: Any, params: Any, batches: list[dict[str, jax.Array]]) -> dict[str, float]:
  """Token-weighted validation loss, cross-entropy, accuracy and perplexity = exp(cross-entropy); for an MoE
  model also eval/moe/dropped_fraction, the token-weighted mean of the batches' moe/dropped_fraction (the mean over
  MoE layers of the share of assignments that found no slot, at moe.capacity_factor_eval)."""
  outs = jax.device_get([eval_fn(params, b) for b in batches])
  tokens = np.array([float(o['num_tokens']) for o in outs])
  weights = tokens / max(tokens.sum(), 1.0)
  keys = ('loss', 'cross_entropy', 'accuracy') + ((DROPPED,) if outs and DROPPED in outs[0] else ())
  mean = {k: float(np.sum(weights * np.array([float(o[k]) for o in outs]))) for k in keys}
  out = {'eval/loss': mean['loss'], 'eval/cross_entropy': mean['cross_entropy'],
         'eval/perplexity': float(math.exp(min(mean['cross_entropy'], 700.0))),
         'eval/accuracy': mean['accuracy'], 'eval/num_tokens': float(tokens.sum())}
  if DROPPED in mean:
    out['eval/' + DROPPED] = mean[DROPPED]
  return out
