"""Task and few-shot seed specifications as written in a config or on the command line (docs/evaluation.md).

A leaf module: pure parsing over the task registry's names and the rules on the settings, so the config check of
the eval section (registered here, config/checks.py), the trainer's periodic task evaluation and `python -m
samoe_jax.evaluate` (evaluation/runner.py EvalSettings) share them without importing the evaluation runner,
perplexity or the trainer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import ml_collections

from samoe_jax.config.checks import Problems, register
from samoe_jax.evaluation.tasks.registry import TASK_NAMES

# The zero-shot suite of DeepSpeed-MoE (Rajbhandari et al. 2022) and SaMoE: LAMBADA, PIQA, BoolQ, RACE-h,
# TriviaQA, WebQs (docs/evaluation.md).
DEEPSPEED_MOE_TASKS = ('lambada_openai', 'piqa', 'boolq', 'race', 'triviaqa', 'webqs')
FIRST_SEED = 1234   # lm-evaluation-harness's default few-shot seed


def parse_seeds(text: str) -> tuple[int, ...]:
  """'1234' -> (1234,); '1234,5' -> (1234, 5); '5x' -> five seeds 1234..1238 (the first is the harness's)."""
  text = str(text).strip()
  try:
    if text.endswith('x'):
      return tuple(FIRST_SEED + i for i in range(int(text[:-1])))
    return tuple(int(s) for s in text.split(',') if s.strip())
  except ValueError:
    raise ValueError(f'few-shot seeds {text!r}: use comma-separated integers (1234,5) or a count such as 5x') from None


def parse_tasks(text: str) -> tuple[str, ...]:
  """'piqa,boolq' -> ('piqa', 'boolq'); 'deepspeed' -> the DeepSpeed-MoE six; 'all' -> every task; '' -> ()."""
  text = str(text).strip()
  if text == 'deepspeed':
    return DEEPSPEED_MOE_TASKS
  if text == 'all':
    return TASK_NAMES
  return tuple(t.strip() for t in text.split(',') if t.strip())


def unknown_tasks(tasks: Sequence[str]) -> list[str]:
  """The names in `tasks` that are not registered tasks (evaluation/tasks/registry.py), in their order."""
  return [t for t in tasks if t not in TASK_NAMES]


@dataclasses.dataclass(frozen=True)
class SettingNames:
  """What the problems call each setting: a config key or a command-line flag."""
  tasks: str
  data_dir: str
  num_fewshot: str
  fewshot_seeds: str


CONFIG_NAMES = SettingNames('eval.tasks', 'eval.data_dir', 'eval.num_fewshot', 'eval.fewshot_seeds')
FLAG_NAMES = SettingNames('--tasks', '--eval_data_dir', '--num_fewshot', '--fewshot_seeds')


def check_task_settings(names: SettingNames, tasks: Sequence[str] | None, tasks_text: Any, data_dir: Any,
                        num_fewshot: Any, seeds: Sequence[int] | None, seeds_text: Any, problems: Problems) -> None:
  """The rules on what to evaluate, wherever the settings come from (the config's eval section, evaluate's flags):
  known tasks with a data directory, a number of shots, at least one seed. *_text: the values as written; tasks /
  seeds None: not parsed (the caller names why)."""
  unknown = unknown_tasks(tasks or ())
  if unknown:
    problems.add(names.tasks, tasks_text, f'names unknown task(s) {unknown}; known: {", ".join(TASK_NAMES)}')
  elif tasks and not data_dir:
    problems.add(names.data_dir, data_dir, f'must name the directory of <task>/<split>.jsonl files when {names.tasks} '
                 'is set (docs/evaluation.md says where to get each data set)')
  problems.non_negative(names.num_fewshot, num_fewshot, 'an integer')
  if seeds is not None and not seeds:
    problems.add(names.fewshot_seeds, seeds_text, 'must name at least one seed')


@register('eval')
def check_eval_section(c: ml_collections.ConfigDict, problems: Problems) -> None:
  """The optional eval section (configs written before it existed have none; a registered check,
  config/checks.py)."""
  if 'eval' not in c:
    return
  v = c.eval
  tasks = parse_tasks(v.tasks) if isinstance(v.tasks, str) else None
  if tasks is None:
    problems.add('eval.tasks', v.tasks, "must be a string: comma-separated task names, 'deepspeed', 'all' or ''")
  try:
    seeds = parse_seeds(v.fewshot_seeds)
  except ValueError:
    problems.add('eval.fewshot_seeds', v.fewshot_seeds, "must be comma-separated integers or a count such as '5x'")
    seeds = None
  check_task_settings(CONFIG_NAMES, tasks, v.tasks, v.data_dir, v.num_fewshot, seeds, v.fewshot_seeds, problems)
  problems.non_negative('eval.every', v.every, 'an integer')
  problems.non_negative('eval.limit', v.limit, 'an integer')
  problems.positive_int('eval.batch_size', v.batch_size)
