"""InferenceMode: how an evaluation forward pass routes MoE tokens and uses the decoding caches.

Every inference pass uses *evaluation routing*: each sequence is routed on its own, in runs of
`ModelSpec.eval_group_size` positions (the training group: moe.group_size, or one data.seq_len sequence; a
training group of several sequences gives each sequence its own seq_len run), with the capacity of such a run at
capacity_factor_eval. With the causal 'position' slot priority a token's routing then depends only on the earlier
tokens of its own run, so the padded length, the batch and the other rows cannot change it.

`cache` says what happens to the flax 'cache' collection (KV caches and per-MoE-layer slot counts):
  'none'     plain scoring; no caches.
  'prefill'  rows of tokens from position 0 with real lengths index_B (int32 [B]); caches of `cache_len`
             positions are written (pass mutable=['cache']).
  'step'     one token per row at position index_B (int32 [B]); caches are read and updated at that position.
"""

from __future__ import annotations

import dataclasses

import jax

CACHE_KINDS = ('none', 'prefill', 'step')


@dataclasses.dataclass(frozen=True)
class InferenceMode:
  """See the module docstring. index_B: lengths ('prefill') or positions ('step'); None for 'none'."""
  cache: str = 'none'
  cache_len: int = 0
  index_B: jax.Array | None = None

  def __post_init__(self):
    if self.cache not in CACHE_KINDS:
      raise ValueError(f'InferenceMode.cache={self.cache!r} is not one of {CACHE_KINDS}')

  @classmethod
  def prefill(cls, lengths_B: jax.Array, cache_len: int) -> 'InferenceMode':
    _check_cache_len(cache_len)
    return cls('prefill', cache_len, lengths_B)

  @classmethod
  def step(cls, positions_B: jax.Array, cache_len: int) -> 'InferenceMode':
    _check_cache_len(cache_len)
    return cls('step', cache_len, positions_B)


def _check_cache_len(cache_len: int) -> None:
  if not isinstance(cache_len, int) or cache_len < 1:
    raise ValueError(f'InferenceMode: cache_len={cache_len!r} must be a positive int (the model.max_len)')


jax.tree_util.register_dataclass(InferenceMode, data_fields=['index_B'], meta_fields=['cache', 'cache_len'])
