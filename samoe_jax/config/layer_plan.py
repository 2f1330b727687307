"""Resolving model.layer_plan (which blocks have an MoE FFN) and pool.assignment (MoE layer -> pool entry).

Pure Python, no JAX: the model, validate_config, accounting and describe all share these two functions.
"""

from __future__ import annotations

from typing import Any

NAMED_PLANS: tuple[str, ...] = ('every_other', 'all', 'none', 'first_half', 'second_half')
PLAN_LETTERS: tuple[str, ...] = ('D', 'M')  # dense, MoE
ASSIGNMENTS: tuple[str, ...] = ('modulo', 'block')


def _resolve(plan: str, num_layers: int) -> list[int]:
  """Block indices (0-based, ascending) with an MoE FFN; raises ValueError for a bad plan."""
  if plan == 'every_other':
    return [i for i in range(num_layers) if i % 2 == 1]
  if plan == 'all':
    return list(range(num_layers))
  if plan == 'none':
    return []
  if plan == 'first_half':
    return list(range(num_layers // 2))
  if plan == 'second_half':
    return list(range(num_layers - num_layers // 2, num_layers))
  if plan and set(plan) <= set(PLAN_LETTERS):
    if len(plan) != num_layers:
      raise ValueError(
          f'model.layer_plan={plan!r} has {len(plan)} letters but model.num_layers={num_layers}: an explicit plan '
          f'needs exactly one letter per block ({num_layers} letters of {"/".join(PLAN_LETTERS)}).')
    return [i for i, letter in enumerate(plan) if letter == 'M']
  example = 'DM' * (num_layers // 2) + 'D' * (num_layers % 2)
  raise ValueError(
      f'model.layer_plan={plan!r} is not a known plan: use one of {", ".join(map(repr, NAMED_PLANS))}, or an '
      f'explicit pattern of the letters {"/".join(PLAN_LETTERS)} (D = dense FFN, M = MoE FFN), one per block '
      f'({num_layers} letters for model.num_layers={num_layers}), e.g. {example!r}.')


def moe_layer_indices(model_cfg: Any) -> list[int]:
  """The 0-based block indices that get an MoE FFN, from model_cfg.layer_plan and model_cfg.num_layers.

  Named plans: 'every_other' (blocks 1, 3, 5, ...), 'all', 'none' (dense model), 'first_half' (blocks
  0 .. L//2 - 1), 'second_half' (the last L//2 blocks; with odd L the middle block stays dense in both halves so
  the two plans have the same number of MoE layers). Otherwise an explicit pattern such as 'DMDM' (one letter per
  block). Raises ValueError naming the plan, the allowed values and the required length.
  """
  plan = model_cfg.layer_plan
  num_layers = int(model_cfg.num_layers)
  if not isinstance(plan, str):
    raise ValueError(f'model.layer_plan={plan!r} must be a string (a named plan or a D/M pattern).')
  if num_layers < 1:
    raise ValueError(f'model.num_layers={num_layers} must be >= 1.')
  return _resolve(plan, num_layers)


def pool_assignment(num_moe_layers: int, pool_size: int, assignment: str) -> list[int]:
  """The pool entry of each MoE layer (in MoE-layer order).

  'modulo': MoE layer l -> l mod P (P = num_moe_layers gives the identity: a standard MoE under fixed mixing).
  'block':  MoE layer l -> l * P // num_moe_layers (contiguous runs of layers share an entry).
  With fixed mixing this is the entry a layer uses; with learned mixing, the entry the one-hot init favours.
  """
  if num_moe_layers < 0:
    raise ValueError(f'num_moe_layers={num_moe_layers} must be >= 0.')
  if pool_size < 1:
    raise ValueError(f'pool.size={pool_size} must be >= 1.')
  if assignment == 'modulo':
    return [l % pool_size for l in range(num_moe_layers)]
  if assignment == 'block':
    return [l * pool_size // num_moe_layers for l in range(num_moe_layers)]
  raise ValueError(f'pool.assignment={assignment!r} is not one of {", ".join(map(repr, ASSIGNMENTS))}.')


def group_rows(config: Any) -> int:
  """R: sequences in one MoE routing group (moe.group_size > data.seq_len spans several), 1 for a model without MoE
  layers after model.layer_plan (an explicit all-dense plan such as 'DDDD' too). The one definition shared by the
  trainer's checks, the accumulating train step and mesh_plan."""
  if not moe_layer_indices(config.model):
    return 1
  return max(1, (config.moe.group_size or config.data.seq_len) // config.data.seq_len)
