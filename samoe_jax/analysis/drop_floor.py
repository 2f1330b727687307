"""The drop floor: the share of (token, choice) assignments an MoE layer drops under uniform random routing.

A routing group of T tokens, E experts, k choices per token (k distinct experts, every k-set equally likely) and C
slots per expert (layers/capacity.py). Token t chooses expert e with probability k / E, independently of the other
tokens, so expert e's load is exactly L_e ~ Binomial(T, k / E) (for k = 1 the marginal of the multinomial; no
approximation). The expert keeps min(L_e, C) of its assignments whatever the slot priority, so by linearity the
expected dropped share of the T k assignments is

  floor(T, E, k, C) = E * E[max(0, L - C)] / (T k),   L ~ Binomial(T, k / E).

It is what a router with no preference drops by chance: a trained router less balanced than uniform drops more.
With moe.group_size = 0 (one sequence of 128 tokens), E = 16 top-1 at capacity factor 1.25 ('deepspeed': C = 10)
the floor is 4.9 % (9.9 % at E = 32 with C = 5, 1.9 % at E = 8 with C = 20), which is why the suites route larger
groups (experiments/suites.py). Pure Python and numpy: no JAX.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from samoe_jax.config.layer_plan import moe_layer_indices
from samoe_jax.config.pyramid import stored_counts
from samoe_jax.layers.capacity import expert_capacity


def binomial_pmf(n: int, p: float) -> np.ndarray:
  """P(L = l) for l = 0 .. n, L ~ Binomial(n, p): float64 [n + 1] (through log-gamma, so any n)."""
  l = np.arange(n + 1)
  if p <= 0.0 or p >= 1.0:
    return (l == (0 if p <= 0.0 else n)).astype(np.float64)
  log_comb = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in l])
  return np.exp(log_comb + l * math.log(p) + (n - l) * math.log1p(-p))


def uniform_drop_fraction(tokens: int, num_experts: int, top_k: int, capacity: int) -> float:
  """Expected share of the tokens * top_k assignments dropped under uniform routing (module docstring), in [0, 1)."""
  if not 1 <= top_k <= num_experts:
    raise ValueError(f'top_k={top_k} must be in [1, num_experts={num_experts}]')
  if capacity >= tokens:
    return 0.0
  pmf = binomial_pmf(tokens, top_k / num_experts)
  excess = np.maximum(np.arange(tokens + 1) - capacity, 0)
  return float(num_experts * np.sum(pmf * excess) / (tokens * top_k))


def group_tokens(config: Any) -> int:
  """T: tokens per training/validation routing group (moe.group_size; 0 = one sequence of data.seq_len)."""
  return int(config.moe.group_size or config.data.seq_len)


def config_drop_floors(config: Any, train: bool = True) -> dict[int, float]:
  """{E: floor} for every expert count of the config's MoE layers (moe.experts_per_layer), at its routing groups:
  training (top_k, capacity_factor_train) or validation (eval_top_k or top_k, capacity_factor_eval). {} for a dense
  model; 0 for the dropless dispatch (moe.dispatch='ragged'). Raises ValueError for moe.routing='expert_choice'
  (experts pick tokens: no assignment is dropped, tokens go unpicked instead)."""
  if not moe_layer_indices(config.model):
    return {}
  moe = config.moe
  if moe.routing == 'expert_choice':
    raise ValueError("moe.routing='expert_choice' has no token-choice capacity: no drop floor")
  t = group_tokens(config)
  k = moe.top_k if train else (moe.eval_top_k or moe.top_k)
  cf = moe.capacity_factor_train if train else moe.capacity_factor_eval
  out = {}
  for e in sorted(set(stored_counts(config))):
    if moe.dispatch == 'ragged':
      out[e] = 0.0
      continue
    c = expert_capacity(t, e, k, cf, moe.min_capacity, moe.capacity_formula)
    out[e] = uniform_drop_fraction(t, e, k, c)
  return out


def whole_sequence_group_sizes(seq_len: int, batch_size: int) -> list[int]:
  """The moe.group_size values of whole sequences that the config checks accept (config/checks.py), ascending:
  seq_len and the multiples of it that divide batch_size * seq_len. Smaller groups are left out: moe.min_capacity
  pads them past the capacity factor (at T <= min_capacity every expert has T slots, a capacity factor of E), so
  their low floor is bought with expert buffers several times the tokens."""
  return [r * seq_len for r in range(1, batch_size + 1) if batch_size % r == 0]


def smallest_group_size(configs: list[Any], bound: float = 0.01) -> int:
  """The smallest whole-sequence moe.group_size at which every config's training and validation floors are
  < bound (the configs share data.seq_len and data.batch_size). Raises ValueError when the whole batch is not
  enough."""
  seq, batch = configs[0].data.seq_len, configs[0].data.batch_size
  for g in whole_sequence_group_sizes(seq, batch):
    if all(max_floor(c, g) < bound for c in configs):
      return g
  raise ValueError(f'no moe.group_size up to the whole batch ({batch * seq} tokens) has a drop floor < {bound}')


def max_floor(config: Any, group_size: int | None = None) -> float:
  """The largest training or validation floor over the config's MoE layers (0 for a dense model), at its own
  moe.group_size or at `group_size`."""
  if group_size is not None:
    config = config.copy_and_resolve_references()
    config.moe.group_size = group_size
  floors = list(config_drop_floors(config, True).values()) + list(config_drop_floors(config, False).values())
  return max(floors, default=0.0)
