"""One way to check a config: the collector of problems, the registry of checks and the pass that runs them.

Every rule is a check `check(config, problems)` registered with `register(section)`: it reads the complete config
(config/sections.complete_config) and adds one 'key=value: what is allowed' line per problem to `problems`, which
also carries what several checks need, derived once (the MoE layer indices, tokens per routing group). A method's
rules live in the method's own module; the config's own rules (sizes, layer plan, pyramid, expert map, mesh) in
config/. The one pass (training/config_checks.py, above every module that registers checks) imports them all and
calls `run_checks`, which runs them section by section (SECTIONS order) and returns every problem at once.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import ml_collections

from samoe_jax.config import aliases
from samoe_jax.config.defaults import get_base_config
from samoe_jax.config.layer_plan import moe_layer_indices
from samoe_jax.config.sections import complete_config

# The order the pass reports problems in: a check registers under the config section its rules are about.
SECTIONS = ('model', 'data', 'moe', 'pool', 'train', 'eval', 'mesh', 'distill', 'init', 'low_rank_sparse')
REQUIRED_SECTIONS = ('model', 'moe', 'pool', 'data', 'train', 'mesh')


def is_int(x: Any) -> bool:
  """An int that is not a bool."""
  return isinstance(x, int) and not isinstance(x, bool)


class Problems:
  """Collects 'key=value: what is allowed' lines, and carries what the checks share, derived once by the pass:
  moe_layers (the MoE layer indices; None when model.layer_plan cannot be resolved) and group_tokens (tokens per
  routing group; None when invalid or the model is dense)."""

  def __init__(self, moe_layers: list[int] | None = None, group_tokens: int | None = None):
    self.lines: list[str] = []
    self.moe_layers = moe_layers
    self.group_tokens = group_tokens

  @property
  def num_moe(self) -> int:
    """The number of MoE layers (0 for a dense model or an unresolvable layer plan)."""
    return len(self.moe_layers) if self.moe_layers else 0

  def add(self, key: str, value: Any, allowed: str) -> None:
    self.lines.append(f'{key}={value!r}: {allowed}')

  def line(self, text: str) -> None:
    """A problem worded whole (one naming several keys, or a helper's message that already names its key)."""
    self.lines.append(text)

  def positive_int(self, key: str, value: Any) -> bool:
    if not is_int(value) or value < 1:
      self.add(key, value, 'must be an integer >= 1')
      return False
    return True

  def non_negative(self, key: str, value: Any, what: str = 'a number') -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
      self.add(key, value, f'must be {what} >= 0')
      return False
    return True

  def positive(self, key: str, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
      self.add(key, value, 'must be a number > 0')
      return False
    return True

  def one_of(self, key: str, value: Any, allowed: Sequence[str]) -> bool:
    if value not in allowed:
      self.add(key, value, f'must be one of {", ".join(map(repr, allowed))}')
      return False
    return True

  def in_range(self, key: str, value: Any, lo: float, hi: float, hi_open: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value and (
        value < hi if hi_open else value <= hi)
    if not ok:
      self.add(key, value, f'must lie in [{lo}, {hi}{")" if hi_open else "]"}')

  def raise_if_any(self, what: str = 'invalid config') -> None:
    """One ValueError listing every line (none: returns)."""
    if self.lines:
      n = len(self.lines)
      raise ValueError(f'{what} ({n} problem{"s" if n > 1 else ""}):\n' + '\n'.join(f'  {l}' for l in self.lines))


Check = Callable[[ml_collections.ConfigDict, Problems], None]
_REGISTRY: dict[str, list[tuple[Check, bool]]] = {section: [] for section in SECTIONS}


def register(section: str, moe_only: bool = False) -> Callable[[Check], Check]:
  """Decorator: adds a check to the pass under `section` (one of SECTIONS); moe_only: skipped for dense models
  (no MoE layers after resolving model.layer_plan), which ignore the moe and pool sections."""
  if section not in _REGISTRY:
    raise ValueError(f'register: unknown section {section!r}; one of {SECTIONS}')

  def add(check: Check) -> Check:
    _REGISTRY[section].append((check, moe_only))
    return check
  return add


def registered() -> list[tuple[str, Check, bool]]:
  """(section, check, moe_only) in the order the pass runs them: by section, then module, then source line (so
  the order does not depend on which module was imported first)."""
  out = []
  for section in SECTIONS:
    for check, moe_only in sorted(_REGISTRY[section],
                                  key=lambda c: (c[0].__module__, c[0].__code__.co_firstlineno)):
      out.append((section, check, moe_only))
  return out


def _check_finite(node: Any, prefix: str, problems: Problems) -> None:
  """Every float anywhere in the config (lists included) must be finite: a NaN learning rate would train."""
  if isinstance(node, (ml_collections.ConfigDict, dict)):
    for key in node.keys():
      _check_finite(node[key], f'{prefix}.{key}' if prefix else str(key), problems)
  elif isinstance(node, (list, tuple)):
    for i, item in enumerate(node):
      _check_finite(item, f'{prefix}[{i}]', problems)
  elif isinstance(node, float) and not math.isfinite(node):
    problems.add(prefix, node, 'must be a finite number (NaN and Inf are not allowed anywhere in the config)')


def _check_known_keys(c: ml_collections.ConfigDict, problems: Problems) -> list[tuple[str, str]]:
  """Every key of a section the defaults define must be a key of config/defaults.py (a typo is not ignored);
  returns the unknown (section, key) pairs."""
  base = get_base_config()
  out = []
  for section in base.keys():
    for where, node, known in _sections_and_subsections(c, base, section):
      for key in sorted(set(node.keys()) - set(known.keys())):
        problems.add(f'{where}.{key}', node[key], f'unknown key; config.{where} has: '
                     + ', '.join(sorted(known.keys())))
        out.append((where, key))
  return out


def _sections_and_subsections(c: ml_collections.ConfigDict, base: ml_collections.ConfigDict, section: str):
  """(dotted name, the config's node, the defaults' node) for config.<section> and each of its subsections."""
  if section not in c or not hasattr(c[section], 'keys'):
    return []
  out = [(section, c[section], base[section])]
  for key in base[section].keys():
    if isinstance(base[section][key], ml_collections.ConfigDict) and hasattr(c[section].get(key), 'keys'):
      out.append((f'{section}.{key}', c[section][key], base[section][key]))
  return out


def resolved_moe_layers(model: ml_collections.ConfigDict) -> list[int] | None:
  """The MoE layer indices, or None when model.num_layers or model.layer_plan is invalid (the model checks say
  why)."""
  if not (is_int(model.num_layers) and model.num_layers >= 1):
    return None
  try:
    return moe_layer_indices(model)
  except (ValueError, TypeError):
    return None


def group_tokens_problem(c: ml_collections.ConfigDict) -> tuple[int | None, tuple[str, Any, str] | None]:
  """Tokens per routing group from moe.group_size and the batch, and the (key, value, allowed) problem when
  moe.group_size does not fit (None, None when the batch itself is invalid)."""
  g, seq, batch = c.moe.group_size, c.data.seq_len, c.data.batch_size
  if not (is_int(seq) and seq >= 1 and is_int(batch) and batch >= 1):
    return None, None
  if not is_int(g) or g < 0:
    return None, ('moe.group_size', g, 'must be an integer >= 0 (0 = one sequence per routing group)')
  if g == 0:
    return seq, None
  if g <= seq and seq % g:
    return None, ('moe.group_size', g, f'must divide data.seq_len={seq} (a group within a sequence) or be a '
                  'multiple of it')
  if g > seq and (g % seq or (batch * seq) % g):
    return None, ('moe.group_size', g, f'a group longer than a sequence must be a multiple of data.seq_len={seq} '
                  f'and divide data.batch_size * data.seq_len={batch * seq}')
  return g, None


def run_checks(config: ml_collections.ConfigDict) -> list[str]:
  """Every problem the registered checks find in config, one line each (empty when valid)."""
  problems = Problems()
  for section in REQUIRED_SECTIONS:
    if section not in config:
      problems.line(f'{section}: missing config section (start from samoe_jax.config.defaults.get_base_config())')
  if problems.lines:
    return problems.lines
  written_as = aliases.written_as(config)   # a problem names an old flat key as the config wrote it
  config = aliases.resolve(config)
  unknown = _check_known_keys(config, problems)
  config = complete_config(config)   # keys a config omits take their one default (config/defaults.py)
  _check_finite(config, '', problems)
  for where, key in unknown:         # reported above; the other checks run on the known keys
    node = config
    for part in where.split('.'):
      node = node[part]
    del node[key]
  problems.moe_layers = resolved_moe_layers(config.model)
  if problems.num_moe:
    problems.group_tokens = group_tokens_problem(config)[0]
  for _, check, moe_only in registered():
    if problems.num_moe or not moe_only:
      check(config, problems)
  return [aliases.as_written(line, written_as) for line in problems.lines]
