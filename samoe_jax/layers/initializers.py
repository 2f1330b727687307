"""Parameter initialisers that attach logical axis names (see samoe_jax/sharding/rules.py)."""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn

Names = Sequence[str | None]


def normal(std: float, names: Names) -> Callable:
  """N(0, std^2) initialiser whose parameter carries logical axis `names`."""
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), tuple(names))


def zeros(names: Names) -> Callable:
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), tuple(names))


def ones(names: Names) -> Callable:
  return nn.with_logical_partitioning(nn.initializers.ones_init(), tuple(names))
