"""Expert capacity C (slots per expert per routing group) under the formulas of docs/methods/routing.md step 4.

T tokens per group, E experts, k choices per token, CF capacity factor:

  'deepspeed' (default) C = max(ceil(k T CF / E), min_capacity), capped at k T (DeepSpeed `_capacity`, with the k
                        of GShard/fairseq's top-k; the cap only removes slots no choice could ever fill)
  'switch'              C = ceil(k T CF / E)              (Switch Transformer, Fedus et al. 2021; no minimum)
  'fairseq'             C = k ceil(T / E)                 (fairseq top-2 training: 2 ceil(T/E); CF is ignored)
  'none'                C = T                             (no dropping: a token picks an expert at most once, so an
                                                           expert never gets more than T assignments)
"""

from __future__ import annotations

import dataclasses
import math

CAPACITY_FORMULAS = ('deepspeed', 'switch', 'fairseq', 'none')


def expert_capacity(tokens_per_group: int, num_experts: int, top_k: int, capacity_factor: float,
                    min_capacity: int, formula: str = 'deepspeed') -> int:
  """Slots per expert per group, an int >= 1 (see the module docstring for each formula)."""
  t, e, k = tokens_per_group, num_experts, top_k
  if formula == 'deepspeed':
    c = math.ceil(k * t * capacity_factor / e)
    return int(min(max(c, min_capacity), k * t))
  if formula == 'switch':
    return int(max(math.ceil(k * t * capacity_factor / e), 1))
  if formula == 'fairseq':
    return int(k * math.ceil(t / e))
  if formula == 'none':
    return int(t)
  raise ValueError(f'moe.capacity_formula={formula!r} is not one of {CAPACITY_FORMULAS}')


@dataclasses.dataclass(frozen=True)
class Capacity:
  """An MoE layer's routing groups and slots: the moe.capacity_* keys plus the resolved group sizes.

  group_size: tokens per training/validation routing group (divides B*L; a multiple or divisor of L).
  eval_group_size: positions per evaluation-routing run (layers/inference.py); 0 = group_size.
  """
  group_size: int
  capacity_factor_train: float
  capacity_factor_eval: float
  min_capacity: int
  capacity_formula: str
  eval_group_size: int = 0

  @property
  def run(self) -> int:
    """Positions per evaluation-routing run."""
    return self.eval_group_size or self.group_size

  def slots(self, tokens: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """C for a group of `tokens` tokens (see the module docstring)."""
    return expert_capacity(tokens, num_experts, top_k, capacity_factor, self.min_capacity, self.capacity_formula)
