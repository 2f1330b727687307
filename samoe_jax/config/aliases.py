"""The one alias table: the moe section's flat method keys of configs written before the method subsections.

Configs written before the method subsections (December 2026) held each method's options as flat keys with a method
prefix (moe.graph_lambda, moe.momentum_mu, moe.k_min, ...). They now live in subsections whose field names are the
method dataclasses' (moe.graph.* = layers/graph_routing.GraphConfig, moe.momentum_smoe.* =
layers/momentum.MomentumConfig, moe.smoe_dropout.* = the k schedule of layers/k_schedule.py). A subsection's name
never equals an old flat key, so a config written with the old keys (a Python config file, a gin file, a
--config.moe.KEY override, a run's config.json) still loads: `resolve` moves every old key to its new place (an old
key given wins over the default of its new one), and the config checks name a bad value by the key the config was
written with.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Sequence

import ml_collections

# old key of config.moe -> (subsection of config.moe, field)
MOE_ALIASES: dict[str, tuple[str, str]] = {
    'graph_routing': ('graph', 'kind'),
    'graph_lambda': ('graph', 'lam'),
    'graph_lambda_learned': ('graph', 'lam_learned'),
    'similarity_temperature': ('graph', 'temperature'),
    'similarity_metric': ('graph', 'metric'),
    'similarity_dim': ('graph', 'dim'),
    'momentum': ('momentum_smoe', 'kind'),
    'momentum_mu': ('momentum_smoe', 'mu'),
    'momentum_gamma': ('momentum_smoe', 'gamma'),
    'adam_beta1': ('momentum_smoe', 'beta1'),
    'adam_beta2': ('momentum_smoe', 'beta2'),
    'adam_eps': ('momentum_smoe', 'eps'),
    'adam_layers': ('momentum_smoe', 'adam_layers'),
    'k_schedule': ('smoe_dropout', 'kind'),
    'k_min': ('smoe_dropout', 'k_min'),
    'k_max': ('smoe_dropout', 'k_max'),
    'k_schedule_steps': ('smoe_dropout', 'steps'),
}

# 'moe.graph_lambda' -> 'moe.graph.lam'
DOTTED: dict[str, str] = {f'moe.{old}': f'moe.{sub}.{field}' for old, (sub, field) in MOE_ALIASES.items()}


def old_keys(config: ml_collections.ConfigDict | dict) -> list[str]:
  """The old flat keys config.moe holds (empty for a config written with the subsections)."""
  moe = config['moe'] if 'moe' in config else None
  if not hasattr(moe, 'keys'):
    return []
  return [key for key in moe.keys() if key in MOE_ALIASES]


def resolve(config: ml_collections.ConfigDict | dict) -> Any:
  """`config` with every old flat key of config.moe moved to its subsection field (a ConfigDict stays a ConfigDict,
  a dict a dict; the config itself when it has none)."""
  if not old_keys(config):
    return config
  is_config_dict = isinstance(config, ml_collections.ConfigDict)
  out = config.to_dict() if is_config_dict else copy.deepcopy(dict(config))
  moe = out['moe']
  for key in [k for k in list(moe) if k in MOE_ALIASES]:
    sub, field = MOE_ALIASES[key]
    if not isinstance(moe.get(sub), dict):
      moe[sub] = {}
    moe[sub][field] = moe.pop(key)
  return ml_collections.ConfigDict(out) if is_config_dict else out


def written_as(config: ml_collections.ConfigDict | dict) -> dict[str, str]:
  """{'moe.graph.lam': 'moe.graph_lambda'} for the old keys `config` holds: how its problems should name them."""
  return {DOTTED[f'moe.{key}']: f'moe.{key}' for key in old_keys(config)}


def as_written(line: str, names: dict[str, str]) -> str:
  """A problem line with each new key replaced by the old one the config was written with (`names` from
  written_as), followed by the new names."""
  shown, renamed = line, []
  for new, old in sorted(names.items()):
    shown, count = re.subn(re.escape(new) + r'(?![\w.])', old, shown)
    if count:
      renamed.append(f'{old} is now {new}')
  return f'{shown} ({"; ".join(renamed)})' if renamed else line


def rewrite_override_args(argv: Sequence[str], flag: str = 'config') -> list[str]:
  """--config.moe.OLD_KEY=VALUE arguments as --config.moe.SUBSECTION.FIELD=VALUE (any other argument as given)."""
  out = []
  for arg in argv:
    name, eq, value = arg.partition('=')
    prefix = f'--{flag}.'
    if name.startswith(prefix) and name[len(prefix):] in DOTTED:
      arg = f'{prefix}{DOTTED[name[len(prefix):]]}{eq}{value}'
    out.append(arg)
  return out
