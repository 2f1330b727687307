"""The validation-loss pass: token-weighted means of a compiled eval step's outputs over a list of batches.

A leaf of the trainer (no config validation, no data pipeline): the training loop's periodic validation, the
validation-split perplexity of `python -m samoe_jax.evaluate` (evaluation/perplexity.py) and the slimmability
analysis all reduce their batches here, so their numbers agree exactly.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

DROPPED = 'moe/dropped_fraction'   # the model's metric (models/model.py); eval records carry it as 'eval/' + DROPPED


def evaluate(eval_fn: Any, params: Any, batches: list[dict[str, jax.Array]]) -> dict[str, float]:
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
