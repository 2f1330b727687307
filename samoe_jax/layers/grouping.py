"""Routing groups: how a batch of sequences is cut into the groups that compete for expert capacity.

Einsum letters: B batch, L length, G groups, S tokens per group, D width.

Training and validation route groups of moe.group_size tokens (to_groups); evaluation routing (layers/inference.py)
routes each sequence on its own in runs of eval_group_size positions (to_runs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def to_groups(x_BLD: jax.Array, group_size: int) -> jax.Array:
  """Routing groups x_GSD. A group is a run of positions of one sequence (group_size <= L) or R = S / L whole
  sequences interleaved position-major (token order t0 of each sequence, then t1, ...), so a token's slot
  depends only on tokens at earlier or equal positions and routing stays causal."""
  b, l, d = x_BLD.shape
  if group_size <= l:
    return x_BLD.reshape(b * l // group_size, group_size, d)
  r = group_size // l
  return jnp.swapaxes(x_BLD.reshape(b // r, r, l, d), 1, 2).reshape(b // r, group_size, d)


def from_groups(x_GSD: jax.Array, b: int, l: int) -> jax.Array:
  """Inverse of to_groups: x_GSD -> x_BLD."""
  g, s, d = x_GSD.shape
  if s <= l:
    return x_GSD.reshape(b, l, d)
  return jnp.swapaxes(x_GSD.reshape(g, l, s // l, d), 1, 2).reshape(b, l, d)


def to_runs(x_BLD: jax.Array, run: int) -> jax.Array:
  """Evaluation routing groups x_GSD: runs of `run` positions of one sequence (G = B * ceil(L / run)), the last
  run padded with zeros (pass a mask padded the same way, so the padding is never routed)."""
  b, l, d = x_BLD.shape
  runs = -(-l // run)
  x_BLD = jnp.pad(x_BLD, ((0, 0), (0, runs * run - l), (0, 0)))
  return x_BLD.reshape(b * runs, run, d)


def from_runs(x_GSD: jax.Array, b: int, l: int) -> jax.Array:
  """Inverse of to_runs: x_GSD -> x_BLD (drops the padding)."""
  return x_GSD.reshape(b, -1, x_GSD.shape[-1])[:, :l]
