"""Typed config sections: frozen dataclasses whose field names are the config keys.

`MoeSection.of(config)` is `MoeSection(**config.moe)`, with the keys a config written before a key existed lacks
(an older run's config.json) taken from config/defaults.py, the one place defaults are written, and the old flat
method keys moved to their subsections (config/aliases.py). The model spec (models/spec.py) is composed of these
sections; a method subsection (moe.graph, moe.momentum_smoe, moe.smoe_dropout) is a FrozenConfigDict whose keys are
the method dataclass's fields (GraphConfig(**moe.graph)), so no key is renamed or given a second default on its way
to a layer.
Sections are read after validation (config/checks.py), which names every bad value; a key the defaults do not
know is refused here too, naming it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any, ClassVar

import ml_collections

from samoe_jax.config import aliases
from samoe_jax.config.defaults import get_base_config


@functools.lru_cache(maxsize=None)
def _defaults(section: str) -> tuple[tuple[str, Any], ...]:
  return tuple(get_base_config()[section].to_dict().items())


def section_values(config: ml_collections.ConfigDict, section: str) -> dict[str, Any]:
  """Every key of config.<section>: the config's values over the defaults (a subsection key by key)."""
  values = copy.deepcopy(dict(_defaults(section)))
  config = aliases.resolve(config)
  given = config[section] if section in config else {}
  given = given.to_dict() if isinstance(given, ml_collections.ConfigDict) else dict(given)
  _refuse_unknown(f'config.{section}', values, given)
  return _overlay(values, given)


def _refuse_unknown(where: str, known: dict, given: dict) -> None:
  unknown = sorted(set(given) - set(known))
  if unknown:
    raise ValueError(f'{where} has unknown key(s) {unknown}; known: {sorted(known)}')
  for key, value in given.items():
    if isinstance(known[key], dict) and isinstance(value, dict):
      _refuse_unknown(f'{where}.{key}', known[key], value)


def complete_config(config: ml_collections.ConfigDict | dict) -> ml_collections.ConfigDict:
  """The base config overlaid with `config` (e.g. a run's config.json): every key present, so code reads keys as
  attributes and a run written before a key existed gets its default from config/defaults.py; old flat method keys
  move to their subsections (config/aliases.py). The config's values are kept as given (a wrongly typed value stays
  for validate_config to name)."""
  config = aliases.resolve(config)
  given = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  return ml_collections.ConfigDict(_overlay(get_base_config().to_dict(), given))


def _overlay(base: dict, given: dict) -> dict:
  out = dict(base)
  for key, value in given.items():
    both_dicts = isinstance(value, dict) and isinstance(base.get(key), dict)
    out[key] = _overlay(base[key], value) if both_dicts else value
  return out


@dataclasses.dataclass(frozen=True)
class Section:
  """Base of the typed sections; `name` is the config section."""
  name: ClassVar[str] = ''

  def __post_init__(self):
    for field in dataclasses.fields(self):   # a subsection: immutable and hashable, like the section
      value = getattr(self, field.name)
      if isinstance(value, (dict, ml_collections.ConfigDict)):
        object.__setattr__(self, field.name, ml_collections.FrozenConfigDict(value))

  @classmethod
  def of(cls, config: ml_collections.ConfigDict):
    return cls(**section_values(config, cls.name))

  @classmethod
  def defaults(cls):
    return cls.of(ml_collections.ConfigDict())


@dataclasses.dataclass(frozen=True)
class ModelSection(Section):
  """config.model (config/defaults.py documents every key)."""
  name: ClassVar[str] = 'model'
  attention: str
  d_ff: int
  d_model: int
  dropout_rate: float
  dtype: str
  init_std: float
  layer_plan: str
  max_len: int
  num_heads: int
  num_layers: int
  remat: str
  share_attention: bool
  tie_embeddings: bool
  vocab_size: int


@dataclasses.dataclass(frozen=True)
class MoeSection(Section):
  """config.moe (config/defaults.py documents every key)."""
  name: ClassVar[str] = 'moe'
  capacity_factor_eval: float
  capacity_factor_train: float
  capacity_formula: str
  dispatch: str
  eval_gate: str
  eval_top_k: int
  expert_d_ff: int
  expert_map: str
  experts_per_layer: str
  gate: str
  gate_renorm: str
  graph: ml_collections.FrozenConfigDict            # layers/graph_routing.GraphConfig
  group_size: int
  lb_loss_coef: float
  min_capacity: int
  momentum_smoe: ml_collections.FrozenConfigDict    # layers/momentum.MomentumConfig
  noise: str
  noise_eps: float
  num_experts: int
  residual: str
  router_bias: bool
  router_trainable: bool
  routing: str
  second_policy: str
  slot_priority: str
  smoe_dropout: ml_collections.FrozenConfigDict     # the k schedule (layers/k_schedule.py)
  top_k: int
  z_loss_coef: float


@dataclasses.dataclass(frozen=True)
class PoolSection(Section):
  """config.pool (config/defaults.py documents every key)."""
  name: ClassVar[str] = 'pool'
  assignment: str
  entropy_coef: float
  granularity: str
  init: str
  lr_multiplier: float
  mixing: str
  one_hot_scale: float
  random_init_std: float
  share_router: bool
  size: int
  space: str
  target_reach: float
  temperature: float


@dataclasses.dataclass(frozen=True)
class LowRankSparseSection(Section):
  """config.low_rank_sparse: low-rank plus sparse experts and the pruning of S (docs/compression.md)."""
  name: ClassVar[str] = 'low_rank_sparse'
  rank: int
  sparsity: float
  initial_warmup: float
  final_warmup: float
  beta1: float
  beta2: float
  mask_every: int

  @property
  def prunes(self) -> bool:
    return self.rank > 0 and self.sparsity > 0
