"""What changed between a workdir's saved config.json and the config a rerun brings.

A refused resume names the config keys that differ, those that change parameter shapes or the data order first,
then the parameters; a resume that goes on with other changes (a longer train.steps, a new learning rate) logs
them and keeps the previous config.json as config_until_step_<S>.json instead of overwriting it. A config.json
written with the moe section's old flat method keys is compared in the subsections' keys (config/aliases.py).
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from samoe_jax.config import aliases

# Keys whose change alters parameter shapes or what "the next batch" means: listed first.
SHAPE_PREFIXES = ('model.', 'moe.', 'pool.', 'data.vocabulary', 'data.seq_len', 'data.batch_size', 'data.task',
                  'data.shuffle_seed', 'train.seed', 'mesh.')


def flatten(node: Any, prefix: str = '') -> dict[str, Any]:
  """{'a.b.c': leaf} of a nested dict (lists and scalars are leaves)."""
  if not isinstance(node, dict):
    return {prefix: node}
  out: dict[str, Any] = {}
  for key, value in node.items():
    out.update(flatten(value, f'{prefix}.{key}' if prefix else str(key)))
  return out


def as_saved(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as config.json stores it (the same JSON round trip), flattened."""
  return flatten(aliases.resolve(json.loads(config.to_json_best_effort(sort_keys=True))))


def read_saved(workdir: str) -> dict[str, Any] | None:
  """WORKDIR/config.json flattened, or None when it is missing or unreadable."""
  try:
    with open(os.path.join(workdir, 'config.json')) as f:
      return flatten(aliases.resolve(json.load(f)))
  except (OSError, ValueError):
    return None


def _shape_first(key: str) -> tuple[int, str]:
  return (0 if key.startswith(SHAPE_PREFIXES) else 1, key)


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """'key: saved -> current' lines for every key that differs, shape-relevant keys first."""
  missing = object()
  lines = []
  for key in sorted(set(saved) | set(current), key=_shape_first):
    old, new = saved.get(key, missing), current.get(key, missing)
    if old != new:
      lines.append(f'{key}: {"(absent)" if old is missing else repr(old)} -> '
                   f'{"(absent)" if new is missing else repr(new)}')
  return lines


def config_changes(workdir: str, config: ml_collections.ConfigDict) -> list[str]:
  """The differences between WORKDIR/config.json and `config` (empty when it is missing or equal)."""
  saved = read_saved(workdir)
  return [] if saved is None else differences(saved, as_saved(config))


def refusal_message(directory: str, step: int, config_lines: list[str], checkpoint_lines: list[str],
                    limit: int = 20) -> str:
  """The IncompatibleCheckpointError text: the config keys that differ, then the checkpoint's differences."""
  def block(lines: list[str]) -> str:
    shown = lines[:limit] + ([f'... and {len(lines) - limit} more'] if len(lines) > limit else [])
    return ''.join(f'\n  {line}' for line in shown)
  parts = [f'{directory} holds a checkpoint (step {step}) from an incompatible config; refusing to overwrite it.']
  if config_lines:
    parts.append(f'Config keys that differ (config.json in the workdir -> this command):{block(config_lines)}')
  parts.append(f'What the checkpoint cannot continue with:{block(checkpoint_lines)}')
  parts.append("Use a new --workdir, or set these config values back to the checkpoint's.")
  return '\n'.join(parts)
