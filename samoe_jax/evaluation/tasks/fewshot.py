"""Few-shot prompts, drawn and laid out exactly as lm-evaluation-harness 0.4.13 does (api/samplers.py, task.py).

Sampling: one random.Random(seed) per task run, shared by all documents in evaluation order, so the shots of a
document depend on the seed and on the documents before it (as in the harness, where the evaluator seeds the
task's sampler once). For each document:
  - without exclusion:  shots = rnd.sample(pool, k)
  - with exclusion:     shots = [d for d in rnd.sample(pool, k + 1) if d != doc][:k]; if fewer than k remain
                        (copies of the document in the pool), shots = rnd.sample(pool without any copy, k)
Which tasks exclude the document is a property of the harness's YAML (base.Task.exclude_eval_doc_from_shots).

Layout: description + for each shot (text + target_delimiter + answer + fewshot_delimiter) + the document's text,
with no delimiter after the description; a shot whose target is empty contributes its text only.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from samoe_jax.evaluation.tasks.base import Doc, Task


class ShotSampler:
  """Draws few-shot examples from `pool` with one random.Random(seed) (the harness's ContextSampler)."""

  def __init__(self, pool: Sequence[Doc], seed: int | None):
    if not pool:
      raise ValueError('the few-shot pool is empty: there are no documents to draw shots from')
    self.pool = list(pool)
    self.seed = seed
    self._rnd = random.Random(seed)

  def sample(self, k: int, eval_doc: Doc | None = None) -> list[Doc]:
    """k shots; with `eval_doc`, none equal to it (dict equality, as in the harness)."""
    if k < 0:
      raise ValueError(f'number of shots k={k}: must be >= 0')
    if k == 0:
      return []
    draw = k if eval_doc is None else k + 1
    if draw > len(self.pool):
      extra = ' + 1 to leave out the evaluated one' if eval_doc is not None else ''
      raise ValueError(f'cannot draw {draw} documents ({k} shots{extra}) from a few-shot pool of {len(self.pool)}')
    shots = self._rnd.sample(self.pool, draw)
    if eval_doc is None:
      return shots
    shots = [d for d in shots if d != eval_doc][:k]
    if len(shots) < k:
      others = [d for d in self.pool if d != eval_doc]
      if len(others) < k:
        raise ValueError(f'only {len(others)} documents of the few-shot pool differ from the evaluated one; '
                         f'{k} shots requested')
      shots = self._rnd.sample(others, k)
    return shots


def fewshot_context(task: Task, doc: Doc, num_fewshot: int, sampler: ShotSampler | None) -> str | list[str]:
  """The prompt of `doc` with `num_fewshot` shots from `sampler` (a list of prompts for multiple-input tasks)."""
  prefix = task.description
  if num_fewshot > 0:
    if sampler is None:
      raise ValueError(f'task {task.name!r}: num_fewshot={num_fewshot} needs a ShotSampler over the few-shot pool')
    eval_doc = doc if task.exclude_eval_doc_from_shots else None
    for shot in sampler.sample(num_fewshot, eval_doc=eval_doc):
      text, answer = task.shot_text(shot), task.shot_answer(shot)
      prefix += text if answer is None else text + task.target_delimiter + answer + task.fewshot_delimiter
  return task.eval_context(prefix, doc)
