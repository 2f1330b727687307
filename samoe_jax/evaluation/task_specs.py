"""Task and few-shot seed specifications as written in a config or on the command line (docs/evaluation.md).

A leaf module: pure parsing over the task registry's names, so config validation (config/validate.py), the
trainer's periodic task evaluation and `python -m samoe_jax.evaluate` share it without importing the evaluation
runner, perplexity or the trainer.
"""

from __future__ import annotations

from collections.abc import Sequence

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
