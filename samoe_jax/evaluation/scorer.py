"""LoglikelihoodScorer: log P(continuation | context) and rolling log-likelihoods, batched and bucketed on device.

Token conventions (as in training): decoder inputs are the targets shifted right with a 0 first (0 is padding;
position 0's 0 is the start token). A request (context c, continuation x) is the row
    inputs = [0] + (c + x)[:-1],  targets = c + x,  weights 1 on the x positions only;
when len(c + x) > max_len it is truncated from the left as lm-evaluation-harness's HF model does: the targets are
the last max_len tokens of c + x and the first kept target's input is the token before it (or the start 0).

Rows are sorted by length and padded to bucket lengths (default: powers of two from 16 up to max_len, and
max_len) in batches of a fixed size (the last batch padded with dummy rows), so one compiled function per bucket
serves a whole task. Log-probabilities and greedy checks are computed and summed on device in row chunks (the
[B, L, V] logits never reach the host, nor exist whole). MoE layers use evaluation routing (every sequence routed
on its own with a fixed capacity, layers/inference.py), so bucketing, padding and batching never change a score.
A SaMoE pool is mixed once per `score` call.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from samoe_jax.layers.experts import expert_weight_axes
from samoe_jax.models.buckets import check_buckets, pick_bucket
from samoe_jax.models.losses import num_chunks
from samoe_jax.models.model import SEQUENCE_ROUTING, LanguageModel
from samoe_jax.models.transformer import LayerExperts
from samoe_jax.sharding.partitioner import Partitioner

Params = Any


@dataclasses.dataclass(frozen=True)
class ScoringRow:
  """One request as decoder features: inputs and targets of equal length <= max_len; the last `num_scored`
  targets are the continuation."""
  inputs: tuple[int, ...]
  targets: tuple[int, ...]
  num_scored: int


def check_token_ids(ids: Sequence[int], vocab_size: int, what: str) -> tuple[int, ...]:
  """The ids as a tuple of ints; ValueError naming `what` unless they are integers in [0, vocab_size)."""
  arr = np.asarray(ids)
  if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
    raise ValueError(f'{what}: token ids must be a flat sequence of ints, got {ids!r:.200}')
  bad = arr[(arr < 0) | (arr >= vocab_size)] if arr.size else arr
  if bad.size:
    raise ValueError(f'{what}: token id {int(bad[0])} is outside [0, vocab_size={vocab_size})')
  return tuple(int(t) for t in arr)


def scoring_row(context: Sequence[int], continuation: Sequence[int], max_len: int) -> ScoringRow:
  """The decoder row scoring `continuation` after `context`, left-truncated to max_len (module docstring).

  ValueError for an empty continuation or one longer than max_len (the harness asserts both).
  """
  context, continuation = tuple(context), tuple(continuation)
  if not continuation:
    raise ValueError('scoring_row: the continuation is empty; there is nothing to score')
  if len(continuation) > max_len:
    raise ValueError(f'scoring_row: the continuation has {len(continuation)} tokens, more than the model.max_len='
                     f'{max_len} a single forward pass can score')
  full = (0,) + context + continuation
  kept = full[-(max_len + 1):]
  return ScoringRow(inputs=kept[:-1], targets=kept[1:], num_scored=len(continuation))


def rolling_windows(token_ids: Sequence[int], max_len: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
  """(context, continuation) requests that score every token of a text once, in disjoint windows of max_len
  targets: lm-evaluation-harness's get_rolling_token_windows(context_len=1) + make_disjoint_window, with our
  start token 0 as the prefix token. Each later window conditions on the max_len - len(window) tokens before it.
  """
  tokens = tuple(token_ids)
  return [(tokens[:start], tokens[start:start + max_len]) for start in range(0, len(tokens), max_len)]


def _token_scores(model: LanguageModel, params: Params, h_BLD: jax.Array,
                  targets_BL: jax.Array) -> tuple[jax.Array, jax.Array]:
  """log p(target) float32 [B, L] and [argmax == target] bool [B, L], the logits made in chunks of rows."""
  b, l, d = h_BLD.shape
  chunks = num_chunks(b * l)

  def chunk(args):
    h_RD, targets_R = args
    logits_RV = model.project(params, h_RD)
    target_R = jnp.take_along_axis(logits_RV, targets_R[:, None], axis=-1)[:, 0]
    return target_R - jax.nn.logsumexp(logits_RV, axis=-1), jnp.argmax(logits_RV, axis=-1) == targets_R

  logprob, greedy = jax.lax.map(chunk, (h_BLD.reshape(chunks, -1, d), targets_BL.reshape(chunks, -1)))
  return logprob.reshape(b, l), greedy.reshape(b, l)


def score_rows(model: LanguageModel, params: Params, experts: dict[int, LayerExperts], inputs_BL: jax.Array,
               targets_BL: jax.Array, weights_BL: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per row: (sum of weighted target log-probs float32 [B], every weighted target is the argmax bool [B])."""
  h_BLD, _ = model.hidden(params, inputs_BL, SEQUENCE_ROUTING, experts=experts)
  logprob_BL, greedy_BL = _token_scores(model, params, h_BLD, targets_BL)
  scored_BL = weights_BL > 0
  return (jnp.sum(jnp.where(scored_BL, logprob_BL, 0.0), axis=-1),
          jnp.all(greedy_BL | ~scored_BL, axis=-1))


def experts_logical_axes(model: LanguageModel) -> dict[int, LayerExperts]:
  """Logical PartitionSpecs of `model.layer_experts(params)`: mixed experts lose the pool axis; output-space
  mixing keeps the pool and replicates its (small) weights."""
  spec = model.spec
  if not spec.moe_layers:
    return {}
  if spec.mixing.mixes_outputs:
    return {b: LayerExperts(expert_weight_axes(('pool',)), PartitionSpec()) for b in spec.moe_layers}
  return {b: LayerExperts(expert_weight_axes()) for b in spec.moe_layers}


class LoglikelihoodScorer:
  """Scores (context_ids, continuation_ids) requests and whole texts with one model and fixed parameters.

  batch_size: rows per device call (with a partitioner, a multiple of its data shards); buckets: padded lengths
  (must include model.max_len; default: powers of two from 16, and max_len); partitioner: shard batches like
  training batches over its mesh, parameters keeping the shardings of their logical axes.
  """

  def __init__(self, model: LanguageModel, params: Params, *, batch_size: int = 16,
               buckets: Sequence[int] | None = None, partitioner: Partitioner | None = None):
    spec = model.spec
    if not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f'LoglikelihoodScorer: batch_size={batch_size!r} must be a positive int')
    if spec.moe_layers and not spec.routing.causal:
      raise ValueError(f'LoglikelihoodScorer: {spec.routing.noncausal_setting} is not causal (a later token can '
                       "take an earlier token's expert slot), so scores would depend on padding and batching; use "
                       "moe.routing='token_choice' or 'hash' with moe.slot_priority='position'")
    if partitioner is not None and batch_size % partitioner.num_data_shards:
      raise ValueError(f'LoglikelihoodScorer: batch_size={batch_size} must be divisible by the partitioner\'s '
                       f'{partitioner.num_data_shards} data shards')
    self.model, self.params, self.batch_size = model, params, batch_size
    self.buckets = check_buckets(buckets, spec.model.max_len)
    self.partitioner = partitioner
    score_fn = functools.partial(score_rows, model)
    if partitioner is None:
      self._mix = jax.jit(model.layer_experts)
      self._score = jax.jit(score_fn)
      self._data_sharding = None
    else:
      params_sh = partitioner.logical_to_mesh(model.param_logical_axes())
      experts_sh = partitioner.logical_to_mesh(experts_logical_axes(model))
      self._data_sharding = partitioner.data_sharding()
      data = self._data_sharding
      self._mix = partitioner.partition(model.layer_experts, in_shardings=(params_sh,), out_shardings=experts_sh)
      self._score = partitioner.partition(score_fn, in_shardings=(params_sh, experts_sh, data, data, data),
                                          out_shardings=partitioner.replicated())

  @property
  def compiled_shapes(self) -> int:
    """How many batch shapes the scoring function has been compiled for (one per bucket used)."""
    fn = self._score
    return fn.cache_size() if hasattr(fn, 'cache_size') else fn._cache_size()  # pylint: disable=protected-access

  # ------------------------------------------------------------------------------------------------ requests
  def score(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]:
    """Per (context_ids, continuation_ids): (sum log-prob of continuation tokens, all continuation tokens greedy).

    An empty context scores the continuation after the start token alone. ValueError for a bad request (named
    by its index): ids outside [0, vocab_size), an empty continuation, or one longer than model.max_len.
    """
    vocab, max_len = self.model.spec.model.vocab_size, self.model.spec.model.max_len
    rows = []
    for i, request in enumerate(requests):
      if len(request) != 2:
        raise ValueError(f'request {i}: expected (context_ids, continuation_ids), got {request!r:.200}')
      context = check_token_ids(request[0], vocab, f'request {i} context')
      continuation = check_token_ids(request[1], vocab, f'request {i} continuation')
      try:
        rows.append(scoring_row(context, continuation, max_len))
      except ValueError as e:
        raise ValueError(f'request {i}: {e}') from None
    return self.score_rows(rows)

  def score_rolling(self, token_ids: Sequence[int]) -> float:
    """Whole-text log-likelihood in disjoint windows of max_len (harness loglikelihood_rolling rules)."""
    return self.score_rolling_many([token_ids])[0]

  def score_rolling_many(self, texts: Sequence[Sequence[int]]) -> list[float]:
    """score_rolling of many texts, their windows scored together (an empty text scores 0.0)."""
    vocab, max_len = self.model.spec.model.vocab_size, self.model.spec.model.max_len
    rows, owner = [], []
    for i, text in enumerate(texts):
      tokens = check_token_ids(text, vocab, f'text {i}')
      for context, continuation in rolling_windows(tokens, max_len):
        rows.append(scoring_row(context, continuation, max_len))
        owner.append(i)
    totals = [0.0] * len(texts)
    for i, (ll, _) in zip(owner, self.score_rows(rows)):
      totals[i] += ll
    return totals

  # --------------------------------------------------------------------------------------------------- device
  def score_rows(self, rows: Sequence[ScoringRow]) -> list[tuple[float, bool]]:
    """(log-likelihood, greedy) per row, in the given order; rows sorted by length into bucketed batches."""
    if not rows:
      return []
    experts = self._mix(self.params)   # the SaMoE pool mixed once for all batches of this call
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].inputs))
    out: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
    pending = []
    for start in range(0, len(order), self.batch_size):
      index = order[start:start + self.batch_size]
      arrays = self._batch_arrays([rows[i] for i in index])
      pending.append((index, self._score(self.params, experts, *arrays)))   # dispatched; fetched below
    for index, (ll_B, greedy_B) in pending:
      ll_B, greedy_B = jax.device_get((ll_B, greedy_B))
      for row, i in enumerate(index):
        out[i] = (float(ll_B[row]), bool(greedy_B[row]))
    return out

  def _batch_arrays(self, rows: Sequence[ScoringRow]) -> tuple[jax.Array, ...]:
    """inputs, targets int32 and weights float32 [batch_size, bucket]; dummy rows (all zero) fill the batch."""
    length = pick_bucket(max(len(r.inputs) for r in rows), self.buckets)
    inputs = np.zeros((self.batch_size, length), np.int32)
    targets = np.zeros((self.batch_size, length), np.int32)
    weights = np.zeros((self.batch_size, length), np.float32)
    for b, r in enumerate(rows):
      n = len(r.inputs)
      inputs[b, :n], targets[b, :n] = r.inputs, r.targets
      weights[b, n - r.num_scored:n] = 1.0
    if self._data_sharding is None:
      return jnp.asarray(inputs), jnp.asarray(targets), jnp.asarray(weights)
    # Every process holds the same rows; each device takes its own slice of the global batch.
    return tuple(jax.make_array_from_callback(a.shape, self._data_sharding, lambda idx, a=a: a[idx])
                 for a in (inputs, targets, weights))
