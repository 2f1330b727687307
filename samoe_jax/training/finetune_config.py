"""The config of a fine-tuning run (python -m samoe_jax.finetune; compress's fine-tuning before scoring): the
source run's config with the fine-tuning keys set (the list: samoe_jax/finetune.py), then any --set KEY=VALUE."""

from __future__ import annotations

import ast
from typing import Any, Sequence

from samoe_jax.config.defaults import get_base_config


def parse_value(text: str) -> Any:
  """A --set value: a Python literal (1e-4, True, 'x') or, failing that, the plain string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config: Any, assignments: Sequence[str]) -> None:
  """KEY=VALUE assignments onto existing keys of `config` (a mistyped key is an error naming it)."""
  for item in assignments:
    key, sep, text = item.partition('=')
    if not sep or not key:
      raise ValueError(f'--set={item!r}: expected KEY=VALUE, e.g. --set=train.weight_decay=0.01')
    *sections, leaf = key.split('.')
    node = config
    for part in sections:
      if part not in node:
        raise ValueError(f'--set={item!r}: the config has no section {part!r}')
      node = node[part]
    if leaf not in node:
      raise ValueError(f'--set={item!r}: the config has no key {key!r}')
    node[leaf] = parse_value(text)


def finetune_config(source: Any, *, task: str, eval_data_dir: str, init_from: str, init_step: int = 0,
                    steps: int = 200, learning_rate: float = 1e-4, warmup_steps: int = -1, batch_size: int = 0,
                    eval_every: int = 0, eval_limit: int = 0, eval_batches: int = 8, distill: bool = False,
                    distill_alpha: float = 0.2, distill_temperature: float = 2.0,
                    overrides: Sequence[str] = ()) -> Any:
  """The fine-tuning run's config: the defaults, then the source run's config, then the fine-tuning keys."""
  config = get_base_config()
  config.update(source)   # a config.json of an older version lacks newer keys: they keep their defaults
  d, t, e = config.data, config.train, config.eval
  d.task, d.finetune_task, d.finetune_data_dir = 'task_finetune', task, eval_data_dir
  if batch_size:
    d.batch_size = batch_size
  t.steps, t.learning_rate, t.decay_steps = steps, learning_rate, 0
  t.warmup_steps = min(16, steps) if warmup_steps < 0 else warmup_steps
  t.eval_every = t.checkpoint_every = eval_every or steps
  t.eval_batches = eval_batches
  e.tasks, e.data_dir, e.every, e.limit, e.num_fewshot = task, eval_data_dir, eval_every, eval_limit, 0
  e.batch_size = d.batch_size
  config.init.from_workdir, config.init.step, config.init.mode = init_from, init_step, 'same'
  config.init.noise_std = 0.0
  config.distill.teacher_workdir = init_from if distill else ''
  config.distill.teacher_config, config.distill.teacher_step = '', init_step
  config.distill.alpha, config.distill.temperature, config.distill.stop_step = distill_alpha, distill_temperature, 0
  apply_overrides(config, overrides)
  return config
