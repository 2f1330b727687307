"""Helpers shared by the data-pipeline tests: taking batches from an iterator and comparing batch lists."""

from __future__ import annotations

import numpy as np

KEYS = ('decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights')


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert set(x) == set(y) == set(KEYS)
    for key in KEYS:
      np.testing.assert_array_equal(x[key], y[key])
