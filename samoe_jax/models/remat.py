"""Activation rematerialisation (model.remat): which activations of a transformer block the backward pass keeps.

  'none'   keep every activation the backward pass needs (fastest, most memory).
  'block'  keep nothing inside a block: only its inputs (the residual stream x_BLD, the experts, the token mask)
           are saved, and the block's forward pass is recomputed during the backward pass
           (jax.checkpoint_policies.nothing_saveable). About one extra forward pass of compute; activation memory
           drops from every intermediate of every block to one [B, L, D] tensor per block.
  'dots'   keep the outputs of the weight matmuls (dots without batch dimensions: the QKV, attention-output,
           FFN and expert projections) and recompute the rest (layer norms, GeLU, softmax, attention scores,
           dropout masks) (jax.checkpoint_policies.dots_with_no_batch_dims_saveable): between the two.

Parameters and their names are the same under every mode, so checkpoints move freely between them.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import ml_collections

from samoe_jax.config.checks import Problems, register

REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    'none': None,
    'block': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _remat_problem(mode: object) -> str | None:
  """Why mode is not a known model.remat value (None when it is)."""
  if not isinstance(mode, str) or mode not in REMAT_POLICIES:
    return (f'model.remat={mode!r}: must be one of {sorted(REMAT_POLICIES)} ("none": keep all activations; '
            '"block": recompute each transformer block in the backward pass; "dots": keep only the weight-matmul '
            'outputs)')
  return None


@register('model')
def check_remat_config(c: ml_collections.ConfigDict, problems: Problems) -> None:
  """model.remat (a registered check, config/checks.py)."""
  problem = _remat_problem(c.model.remat)
  if problem:
    problems.line(problem)


def check_remat(mode: object) -> str:
  """Returns mode when it is a known model.remat value; ValueError naming the allowed ones otherwise (a guard for
  a model built from an unchecked config)."""
  problem = _remat_problem(mode)
  if problem:
    raise ValueError(problem)
  return mode


def remat_module(module_cls: type[nn.Module], mode: str, static_argnums: tuple[int, ...] = ()) -> type[nn.Module]:
  """module_cls itself for 'none', else nn.remat(module_cls) with mode's policy.

  static_argnums counts `self` as 0 (flax's convention) and names the Python (non-array) arguments of __call__,
  which must be passed positionally: jax.checkpoint traces every keyword argument.
  """
  policy = REMAT_POLICIES[check_remat(mode)]
  if mode == 'none':
    return module_cls
  return nn.remat(module_cls, policy=policy, static_argnums=static_argnums)
