"""One evaluation pass of one set of parameters: the zero/few-shot tasks, text-file perplexity, validation perplexity.

Shared by `python -m samoe_jax.evaluate` (restored checkpoints) and the trainer's periodic task evaluation
(the live parameters). Returns `scores` ({task: {metric: float}}, for tables and plots) and `details` (the full
per-task results: stderr, per-seed values, number of documents).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from absl import logging

from samoe_jax.evaluation import perplexity
from samoe_jax.evaluation.tasks import TASK_NAMES, evaluate_task, get_task

# The zero-shot suite of DeepSpeed-MoE and SaMoE (methods.md §2, §3.4).
DEEPSPEED_MOE_TASKS = ('lambada_openai', 'piqa', 'boolq', 'race', 'triviaqa', 'webqs')


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """What to evaluate. fewshot_seeds: one evaluation per seed, averaged (Artetxe et al. 2021 average k-shot
  results over several random shot sets); the harness's single default seed is 1234."""
  tasks: tuple[str, ...] = DEEPSPEED_MOE_TASKS
  data_dir: str = ''
  num_fewshot: int = 0
  fewshot_seeds: tuple[int, ...] = (1234,)
  limit: int | None = None
  perplexity_files: tuple[str, ...] = ()
  validation_batches: int = -1        # -1: skip; 0: the whole validation split; N: its first N batches
  bootstrap_iters: int = 100000

  def check(self) -> None:
    unknown = [t for t in self.tasks if t not in TASK_NAMES]
    if unknown:
      raise ValueError(f'unknown task(s) {unknown}: use any of {", ".join(TASK_NAMES)}')
    if self.tasks and not self.data_dir:
      raise ValueError('evaluation tasks need a data directory (--eval_data_dir): it holds <task>/<split>.jsonl, '
                       'see docs/evaluation.md for where to get each data set')
    if not isinstance(self.num_fewshot, int) or self.num_fewshot < 0:
      raise ValueError(f'num_fewshot={self.num_fewshot!r} must be an integer >= 0')
    if not self.fewshot_seeds:
      raise ValueError('fewshot_seeds must name at least one seed')
    if self.limit is not None and self.limit < 1:
      raise ValueError(f'limit={self.limit!r} must be >= 1 (or unset for every document)')

  def seeds(self) -> tuple[int, ...]:
    """Zero-shot prompts draw no shots, so one seed is enough whatever fewshot_seeds says."""
    return self.fewshot_seeds if self.num_fewshot else self.fewshot_seeds[:1]


def parse_seeds(text: str) -> tuple[int, ...]:
  """'1234' -> (1234,); '1234,5' -> (1234, 5); '5x' -> five seeds 1234..1238 (the first is the harness's)."""
  text = str(text).strip()
  try:
    if text.endswith('x'):
      return tuple(1234 + i for i in range(int(text[:-1])))
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


def run_evaluation(backend: Any, settings: EvalSettings, *, model: Any = None, params: Any = None,
                   partitioner: Any = None, config: Any = None) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
  """Evaluates every configured task and perplexity; model/params/partitioner/config are needed only for the
  validation-split perplexity."""
  settings.check()
  scores: dict[str, dict[str, float]] = {}
  details: dict[str, Any] = {}
  for name in settings.tasks:
    start = time.time()
    task = get_task(name, settings.data_dir)
    result = evaluate_task(task, backend, num_fewshot=settings.num_fewshot, fewshot_seeds=settings.seeds(),
                           limit=settings.limit, bootstrap_iters=settings.bootstrap_iters)
    scores[name] = dict(result['metrics'])
    details[name] = result
    logging.info('%s (%d docs, %d-shot): %s in %.1fs', name, result['num_docs'], settings.num_fewshot,
                 ', '.join(f'{k} {v:.4f}' for k, v in result['metrics'].items()), time.time() - start)
  if settings.perplexity_files:
    for name, metrics in perplexity.text_perplexity(backend, backend.tokenizer, settings.perplexity_files).items():
      scores[name] = metrics
      details[name] = dict(metrics)
  if settings.validation_batches >= 0:
    if model is None or config is None:
      raise ValueError('validation perplexity needs the model, its parameters, the partitioner and the config')
    metrics = perplexity.validation_perplexity(model, params, partitioner, config, settings.validation_batches)
    key = f'ppl:{config.data.task}/{config.data.eval_split}'
    scores[key] = metrics
    details[key] = dict(metrics)
  return scores, details
