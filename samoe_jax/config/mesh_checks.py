"""The mesh's rules: its sizes, and what it splits (the batch, routing groups and microbatches over data x expert,
the experts over expert, widths over model).

The pass (config/checks.py) checks the sizes a config gives (a -1 axis, filled with the devices left, is left
unchecked); the trainer (training/loop.check_mesh_fits) calls check_mesh_fit again with the resolved mesh.
"""

from __future__ import annotations

from typing import Mapping

import ml_collections

from samoe_jax.config.checks import Problems, is_int, register
from samoe_jax.config.layer_plan import group_rows
from samoe_jax.config.pyramid import stored_counts

MESH_AXES = ('data', 'expert', 'model')


def check_mesh_fit(c: ml_collections.ConfigDict, sizes: Mapping[str, int], has_moe: bool, group_tokens: int | None,
                   problems: Problems) -> None:
  """Divisibility of what the mesh splits. sizes: axis -> size, -1 for the axis the devices left resolve (only the
  known ones are checked); group_tokens: tokens per routing group, to check the routing groups' split too (None:
  not checked)."""
  batch, expert = c.data.batch_size, sizes.get('expert', -1)
  moe = c.moe
  if has_moe and expert > 0 and is_int(moe.num_experts) and moe.num_experts % expert:
    problems.add('moe.num_experts', moe.num_experts, f'must be divisible by mesh.expert={expert} (experts are '
                 'split over the expert axis)')
  if has_moe and expert > 1:   # Pyramid-MoE (config/pyramid.py): every expert group is split over the expert axis
    try:
      counts = stored_counts(c)
    except (ValueError, TypeError):   # reported by the pyramid check
      counts = ()
    bad = [n for n in sorted(set(counts)) if n != moe.num_experts and n % expert]
    if bad:
      problems.add('moe.experts_per_layer', moe.experts_per_layer, f'expert count(s) {bad} are not divisible by '
                   f"mesh.expert={expert} (every group's experts are split over the expert axis)")
  # Batch rows (and routing groups) are split over ('data', 'expert') together.
  known = [(a, sizes[a]) for a in ('data', 'expert') if sizes.get(a, -1) > 0]
  dp = 1
  for _, v in known:
    dp *= v
  if dp <= 1 or not (is_int(batch) and batch >= 1):
    return
  names = ' * '.join(f'mesh.{a}={v}' for a, v in known)
  exact = len(known) == 2
  if batch % dp:
    problems.add('data.batch_size', batch, f'must be divisible by the data-parallel size {names} = {dp}'
                 + ('' if exact else ' (whatever the -1 axis resolves to)'))
    return
  if group_tokens and has_moe:
    groups = batch * c.data.seq_len // group_tokens
    if groups % dp:
      problems.add('moe.group_size', moe.group_size, f'gives {groups} routing groups per batch, not divisible by '
                   f'the data-parallel size {names} = {dp}')
  micro = c.train.microbatches
  if not (exact and is_int(micro) and micro > 1):
    return
  try:
    rows = group_rows(c)
  except (ValueError, TypeError):   # reported by the model / moe checks
    return
  if not batch % (micro * rows) and batch % (dp * micro * rows):   # (the first: section_checks.check_microbatches)
    group = f' x {rows} sequences per routing group' if rows > 1 else ''
    mesh = ' '.join(f'{a}={n}' for a, n in sizes.items())
    problems.line(f'data.batch_size={batch} must be divisible by train.microbatches={micro} x the {dp} data shards '
                  f'of the mesh ({mesh}){group} = {dp * micro * rows}, so that every microbatch is split evenly over '
                  'the devices without moving data')


@register('mesh')
def check_mesh(c: ml_collections.ConfigDict, problems: Problems) -> None:
  """Mesh sizes: each -1 (fill with the devices left) or >= 1, at most one -1; divisibility of what they split."""
  mesh = c.mesh
  sizes: dict[str, int] = {}
  for axis in MESH_AXES:
    v = mesh[axis]
    if not is_int(v) or (v != -1 and v < 1):
      problems.add(f'mesh.{axis}', v, 'must be -1 (the devices left) or an integer >= 1')
    else:
      sizes[axis] = v
  if not isinstance(mesh.fsdp, bool):
    problems.add('mesh.fsdp', mesh.fsdp, 'must be True or False (shard the non-expert training state over data x '
                 'expert)')
  fill = [a for a, v in sizes.items() if v == -1]
  if len(fill) > 1:
    problems.line(f'mesh: {", ".join(f"mesh.{a}=-1" for a in fill)}: at most one mesh axis may be -1')
  num_moe, model = problems.num_moe, sizes.get('model', -1)
  if model > 1:
    m = c.model
    for key, value in (('model.num_heads', m.num_heads), ('model.vocab_size', m.vocab_size)):
      if is_int(value) and value % model:
        problems.add(key, value, f'must be divisible by mesh.model={model}')
    if num_moe < m.num_layers and is_int(m.d_ff) and m.d_ff % model:
      problems.add('model.d_ff', m.d_ff, f'must be divisible by mesh.model={model}')
    expert_ff = c.moe.expert_d_ff or m.d_ff
    if num_moe and is_int(expert_ff) and expert_ff % model:
      problems.add('moe.expert_d_ff' if c.moe.expert_d_ff else 'model.d_ff', expert_ff,
                   f'the expert FFN width must be divisible by mesh.model={model}')
  check_mesh_fit(c, sizes, bool(num_moe), problems.group_tokens, problems)
