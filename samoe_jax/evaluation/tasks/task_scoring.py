"""evaluate_task: a task's documents -> prompts (per few-shot seed) -> one backend call per request kind -> metrics.

Several seeds (Artetxe et al. average k-shot results over random shot sets): each seed draws its own shots with
one random.Random(seed) over the documents in order (fewshot.py); the requests of all seeds are pooled and
de-duplicated, so each request kind is one backend call and a zero-shot run costs the same for any number of
seeds. Each seed's metrics are aggregated as the harness aggregates them; the reported value is their mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from samoe_jax.evaluation.requests import Backend, GenerationRequest, LoglikelihoodRequest
from samoe_jax.evaluation.requests import RollingLoglikelihoodRequest
from samoe_jax.evaluation.tasks import metrics
from samoe_jax.evaluation.tasks.base import Answer, Doc, Request, Task
from samoe_jax.evaluation.tasks.fewshot import ShotSampler, fewshot_context

_BACKEND_METHOD = {LoglikelihoodRequest: 'loglikelihood', RollingLoglikelihoodRequest: 'loglikelihood_rolling',
                   GenerationRequest: 'generate_until'}


def _check_args(num_fewshot: int, fewshot_seeds: Sequence[int], limit: int | None) -> None:
  if not isinstance(num_fewshot, int) or num_fewshot < 0:
    raise ValueError(f'num_fewshot={num_fewshot!r}: must be an integer >= 0')
  if not fewshot_seeds:
    raise ValueError('fewshot_seeds is empty: give at least one seed')
  if limit is not None and (not isinstance(limit, int) or limit < 1):
    raise ValueError(f'limit={limit!r}: must be a positive integer or None (all documents)')


def build_prompts(task: Task, docs: Sequence[Doc], num_fewshot: int, seed: int | None) -> list[str | list[str]]:
  """The prompt of every document in order, shots drawn with one random.Random(seed) (the harness's sampler)."""
  sampler = ShotSampler(task.docs(task.fewshot_split), seed) if num_fewshot > 0 else None
  return [fewshot_context(task, doc, num_fewshot, sampler) for doc in docs]


def answer_all(backend: Backend, requests: Sequence[Request]) -> dict[Request, Answer]:
  """Answers to the distinct `requests`: one backend call per request kind."""
  by_kind: dict[type, list[Request]] = {}
  for request in dict.fromkeys(requests):
    if type(request) not in _BACKEND_METHOD:
      raise ValueError(f'unknown request type {type(request).__name__}')
    by_kind.setdefault(type(request), []).append(request)
  answers: dict[Request, Answer] = {}
  for kind, batch in by_kind.items():
    method = _BACKEND_METHOD[kind]
    results = list(getattr(backend, method)(batch))
    if len(results) != len(batch):
      raise ValueError(f'backend.{method} returned {len(results)} answers for {len(batch)} requests')
    answers.update(zip(batch, results))
  return answers


def aggregate(task: Task, per_doc: Sequence[dict[str, float]], bootstrap_iters: int) -> tuple[dict, dict]:
  """(metric -> aggregated value, metric -> standard error or None) over per-document results."""
  values, errors = {}, {}
  for name, agg in task.metric_aggregations.items():
    xs = [r[name] for r in per_doc]
    values[name] = metrics.AGGREGATIONS[agg](xs)
    errors[name] = metrics.stderr(agg, xs, bootstrap_iters)
  return values, errors


def _mean_or_none(xs: Sequence[float | None]) -> float | None:
  return None if any(x is None for x in xs) else metrics.mean(xs)


def evaluate_task(task: Task, backend: Backend, *, num_fewshot: int = 0, fewshot_seeds: Sequence[int] = (1234,),
                  limit: int | None = None, split: str | None = None, bootstrap_iters: int = 100000) -> dict[str, Any]:
  """Evaluates `task` with `backend` on the first `limit` documents of `split` (default: the task's evaluated split).

  Returns {'task', 'split', 'num_fewshot', 'num_docs', 'fewshot_seeds',
           'metrics': metric -> mean over seeds of the per-seed aggregate,
           'stderr': metric -> mean over seeds of the per-seed standard error (None where the harness says N/A),
           'seed_stddev': metric -> sample standard deviation of the per-seed aggregates (None for one seed),
           'per_seed': [{'seed', 'metrics', 'stderr'}, ...], 'higher_is_better': metric -> bool}.
  bootstrap_iters as the harness's (it bootstraps the perplexity's standard error; 0 turns all errors off).
  """
  _check_args(num_fewshot, fewshot_seeds, limit)
  split = task.eval_split if split is None else split
  docs = task.docs(split)[:limit]
  prompts = {seed: build_prompts(task, docs, num_fewshot, seed) for seed in fewshot_seeds}
  requests = {seed: [task.build_requests(doc, p) for doc, p in zip(docs, prompts[seed])] for seed in fewshot_seeds}
  answers = answer_all(backend, [r for seed in fewshot_seeds for doc_requests in requests[seed] for r in doc_requests])

  per_seed = []
  for seed in fewshot_seeds:
    per_doc = [task.process_results(doc, [answers[r] for r in doc_requests])
               for doc, doc_requests in zip(docs, requests[seed])]
    values, errors = aggregate(task, per_doc, bootstrap_iters)
    per_seed.append({'seed': seed, 'metrics': values, 'stderr': errors})

  names = list(task.metric_aggregations)
  spread = {m: (metrics.sample_stddev([s['metrics'][m] for s in per_seed]) if len(per_seed) > 1 else None)
            for m in names}
  return {
      'task': task.name, 'split': split, 'num_fewshot': num_fewshot, 'num_docs': len(docs),
      'fewshot_seeds': list(fewshot_seeds),
      'metrics': {m: metrics.mean([s['metrics'][m] for s in per_seed]) for m in names},
      'stderr': {m: _mean_or_none([s['stderr'][m] for s in per_seed]) for m in names},
      'seed_stddev': spread, 'per_seed': per_seed,
      'higher_is_better': {m: task.higher_is_better[m] for m in names},
  }
