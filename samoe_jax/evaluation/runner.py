"""One evaluation pass of one set of parameters: the zero/few-shot tasks, text-file perplexity, validation perplexity.

Shared by `python -m samoe_jax.evaluate` (restored checkpoints) and the trainer's periodic task evaluation
(the live parameters). Returns `scores` ({task: {metric: float}}, for tables and plots) and `details` (the full
per-task results: stderr, per-seed values, number of documents).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from absl import logging

from samoe_jax.config.checks import Problems
from samoe_jax.evaluation import perplexity
from samoe_jax.evaluation.task_specs import (DEEPSPEED_MOE_TASKS, FLAG_NAMES, check_task_settings, parse_seeds,
                                             parse_tasks)
from samoe_jax.evaluation.tasks import evaluate_task, get_task

__all__ = ['DEEPSPEED_MOE_TASKS', 'EvalSettings', 'parse_seeds', 'parse_tasks', 'run_evaluation']


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

  def problems(self) -> list[str]:
    """Every problem with the settings themselves (nothing is read), one line each: the eval section's rules
    (task_specs.check_task_settings, named by evaluate's flags) and the document limit."""
    problems = Problems()
    check_task_settings(FLAG_NAMES, self.tasks, ','.join(self.tasks), self.data_dir, self.num_fewshot,
                        self.fewshot_seeds, ','.join(map(str, self.fewshot_seeds)), problems)
    if self.limit is not None and self.limit < 1:
      problems.line(f'--limit={self.limit!r} must be >= 1 (or unset for every document)')
    return problems.lines

  def check(self) -> None:
    """Raises one ValueError listing every problem of `problems` (the config path checks the same rules for the
    eval section in the one config pass, training/config_checks.py)."""
    problems = self.problems()
    if len(problems) == 1:
      raise ValueError(problems[0])
    if problems:
      raise ValueError(f'evaluation settings ({len(problems)} problems):\n' + '\n'.join(f'  {p}' for p in problems))

  def data_problems(self) -> list[str]:
    """Every problem with the tasks' data and the perplexity files, found by reading them (nothing compiled):
    a missing or malformed file, a gold answer outside the choices, more shots than the few-shot pool holds."""
    problems = []
    for name in self.tasks:
      task = get_task(name, self.data_dir)
      try:
        docs = task.docs()
        if self.num_fewshot:
          pool = task.docs(task.fewshot_split)
          leave_out = task.exclude_eval_doc_from_shots and task.fewshot_split == task.eval_split
          need = self.num_fewshot + (1 if leave_out else 0)
          if need > len(pool):
            extra = ' + 1 to leave out the evaluated document' if leave_out else ''
            problems.append(f'{name}: {self.num_fewshot} shots{extra} need {need} documents, but the few-shot '
                            f'pool {task.path(task.fewshot_split)} holds {len(pool)}')
        del docs
      except (ValueError, OSError) as err:
        problems.append(f'{name}: {err}')
    for path in self.perplexity_files:
      try:
        perplexity.read_documents(path)
      except (ValueError, OSError) as err:
        problems.append(str(err))
    return problems

  def check_data(self) -> None:
    """Raises one ValueError listing every data problem (see data_problems), before anything is compiled."""
    self.check()
    problems = self.data_problems()
    if problems:
      raise ValueError(f'evaluation data ({len(problems)} problem{"s" if len(problems) > 1 else ""}):\n'
                       + '\n'.join(f'  {p}' for p in problems))

  def setting(self) -> dict[str, Any]:
    """What distinguishes this evaluation's results from another's of the same step (evaluation/outputs.py)."""
    return {'num_fewshot': self.num_fewshot, 'fewshot_seeds': list(self.seeds()), 'limit': self.limit}

  def seeds(self) -> tuple[int, ...]:
    """Zero-shot prompts draw no shots, so one seed is enough whatever fewshot_seeds says."""
    return self.fewshot_seeds if self.num_fewshot else self.fewshot_seeds[:1]


def _max_len(backend: Any) -> str:
  """The model.max_len of the backend's model, '?' for a backend without one."""
  try:
    return str(backend.model.spec.model.max_len)
  except AttributeError:
    return '?'


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
    cut_before = getattr(backend, 'truncated', 0)
    result = evaluate_task(task, backend, num_fewshot=settings.num_fewshot, fewshot_seeds=settings.seeds(),
                           limit=settings.limit, bootstrap_iters=settings.bootstrap_iters)
    result['truncated_requests'] = cut = getattr(backend, 'truncated', 0) - cut_before
    if cut:
      logging.warning('%s (%d-shot): %d request(s) longer than model.max_len=%s, cut from the left (as '
                      'lm-evaluation-harness cuts them)', name, settings.num_fewshot, cut, _max_len(backend))
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
