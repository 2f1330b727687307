"""Padded lengths for evaluation batches: a handful of shapes, so a few compiled functions serve a whole task."""

from __future__ import annotations

from collections.abc import Sequence


def default_buckets(max_len: int, smallest: int = 16) -> tuple[int, ...]:
  """Powers of two from `smallest` below max_len, then max_len itself: (16, 32, 64, max_len) for max_len 100."""
  if max_len < 1:
    raise ValueError(f'max_len={max_len} must be >= 1')
  out, b = [], smallest
  while b < max_len:
    out.append(b)
    b *= 2
  return tuple(out) + (max_len,)


def check_buckets(buckets: Sequence[int] | None, max_len: int) -> tuple[int, ...]:
  """Sorted unique buckets (default_buckets when None); ValueError unless they are ints in [1, max_len] that
  include max_len (so every sequence fits one)."""
  if buckets is None:
    return default_buckets(max_len)
  values = tuple(buckets)
  if not values or any(not isinstance(b, int) or isinstance(b, bool) or not 1 <= b <= max_len for b in values):
    raise ValueError(f'buckets={values!r} must be a non-empty sequence of ints in [1, max_len={max_len}]')
  if max(values) != max_len:
    raise ValueError(f'buckets={values!r} must include max_len={max_len}, so that every sequence fits one')
  return tuple(sorted(set(values)))


def pick_bucket(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= length (buckets sorted); ValueError when none is long enough."""
  for b in buckets:
    if b >= length:
      return b
  raise ValueError(f'length {length} exceeds the largest bucket {buckets[-1]}')
