"""Evaluation scores with their uncertainty: value, standard error and number of documents per (task, metric).

The standard error is the one the evaluator reported (details[task]['stderr'], lm-evaluation-harness's: the
sample standard error of the per-document values, the bootstrap one for perplexities). Where it reported none
(bootstrap_iters=0, as the trainer's periodic evaluation runs) an accuracy-like metric gets the binomial one,
sqrt(p (1 - p) / (n - 1)): for per-document 0/1 values this is exactly the harness's stderr of one seed. A task
scored on fewer than MIN_DOCS documents is `too_few`: its score is noise (3 documents give +-33 points).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

BINOMIAL = ('acc', 'acc_norm', 'exact_match')   # per-document values are 0 or 1
MIN_DOCS = 100


@dataclasses.dataclass(frozen=True)
class Score:
  """One (task, metric): value, stderr (None when unknown), stderr_kind ('reported', 'binomial' or None) and
  num_docs (None when the results do not say)."""
  task: str
  metric: str
  value: float
  stderr: float | None
  stderr_kind: str | None
  num_docs: int | None

  @property
  def too_few(self) -> bool:
    """True when fewer than MIN_DOCS documents were scored (unknown counts are not flagged)."""
    return self.num_docs is not None and self.num_docs < MIN_DOCS


def binomial_stderr(p: float, n: int) -> float | None:
  """sqrt(p (1 - p) / (n - 1)), the sample standard error of n values 0/1 with mean p; None for n < 2."""
  if n < 2 or not 0.0 <= p <= 1.0:
    return None
  return math.sqrt(p * (1.0 - p) / (n - 1))


def score(task: str, metric: str, value: float, detail: Mapping[str, Any] | None) -> Score:
  """The Score of scores[task][metric] given details[task] (None or {} when the results hold none)."""
  detail = detail or {}
  n = detail.get('num_docs')
  n = int(n) if n is not None else None
  reported = (detail.get('stderr') or {}).get(metric)
  if reported is not None and math.isfinite(reported):
    return Score(task, metric, value, float(reported), 'reported', n)
  if metric in BINOMIAL and n is not None and value is not None:
    se = binomial_stderr(value, n)
    if se is not None:
      return Score(task, metric, value, se, 'binomial', n)
  return Score(task, metric, value, None, None, n)


def scores_with_errors(scores: Mapping[str, Mapping[str, float]],
                       details: Mapping[str, Any] | None) -> list[Score]:
  """Every (task, metric) of `scores`, sorted by task then metric, with its stderr and document count."""
  details = details or {}
  return [score(task, metric, scores[task][metric], details.get(task))
          for task in sorted(scores) for metric in sorted(scores[task])]
