"""Per-document scoring helpers and corpus aggregations, numerically as lm-evaluation-harness 0.4.13 computes them.

Aggregations (over the per-document values of one metric):
  mean         sum(xs) / len(xs)                        (acc, acc_norm, exact_match, LAMBADA acc)
  perplexity   exp(-mean(xs)) over per-document summed log-likelihoods (LAMBADA perplexity: one value per
               document, so a long target weighs as much as a short one; not a per-token perplexity)
Standard errors as the harness reports them: `mean` has the closed form stddev(xs, ddof=1) / sqrt(n);
`perplexity` is bootstrapped: `iters` resamples drawn with random.Random(i).choices in chunks of
min(1000, iters) (chunk i seeded with i), and the sample standard deviation of the resampled perplexities.
The resampling below draws the same indices as Python's `random` (same Mersenne Twister state, same
floor(random() * n)) but vectorised in numpy, and sums sequentially like Python's sum, so the value equals the
harness's to the last bit while running about a hundred times faster.
"""

from __future__ import annotations

import math
import random
import string
from collections.abc import Callable, Sequence

import numpy as np

Aggregation = Callable[[Sequence[float]], float]

_PUNCTUATION_TABLE = str.maketrans('', '', string.punctuation)


def mean(xs: Sequence[float]) -> float:
  """sum / count, summed left to right in Python (the harness's `mean`)."""
  return sum(xs) / len(xs)


def perplexity(lls: Sequence[float]) -> float:
  """exp(-mean(lls)) over per-document log-likelihoods (the harness's `perplexity` aggregation)."""
  return math.exp(-mean(lls))


AGGREGATIONS: dict[str, Aggregation] = {'mean': mean, 'perplexity': perplexity}


def sample_stddev(xs: Sequence[float]) -> float:
  """Standard deviation with Bessel's correction (n - 1), in pure Python like the harness."""
  mu = mean(xs)
  return math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1))


def mean_stderr(xs: Sequence[float]) -> float:
  """Standard error of the mean: sample_stddev / sqrt(n)."""
  return sample_stddev(xs) / math.sqrt(len(xs))


def _resample_perplexities(lls_N: np.ndarray, seed: int, count: int) -> list[float]:
  """`count` perplexities of resamples drawn as random.Random(seed).choices(lls, k=N) draws them, in order."""
  n = lls_N.shape[0]
  state = random.Random(seed).getstate()[1]
  generator = np.random.RandomState()
  generator.set_state(('MT19937', np.asarray(state[:-1], dtype=np.uint32), state[-1]))
  # random.choices picks population[floor(random() * n)]; RandomState.random_sample is the same 53-bit double.
  index_CN = np.floor(generator.random_sample(count * n) * float(n)).astype(np.int64).reshape(count, n)
  sums_C = np.cumsum(lls_N[index_CN], axis=1)[:, -1]  # cumsum adds left to right, as Python's sum does
  return [math.exp(-(float(s) / n)) for s in sums_C]


def perplexity_stderr(lls: Sequence[float], iters: int) -> float:
  """The harness's bootstrap standard error of `perplexity(lls)` with `iters` resamples (its default: 100000)."""
  if iters <= 0:
    raise ValueError(f'bootstrap iters={iters}: must be positive')
  chunk = min(1000, iters)
  lls_N = np.asarray(lls, dtype=np.float64)
  values: list[float] = []
  for i in range(iters // chunk):
    values.extend(_resample_perplexities(lls_N, i, chunk))
  return sample_stddev(values)


def stderr(aggregation: str, xs: Sequence[float], bootstrap_iters: int) -> float | None:
  """The harness's standard error of an aggregated metric; None where it reports 'N/A' (one value, no iters)."""
  if len(xs) < 2 or bootstrap_iters <= 0:
    return None
  if aggregation == 'mean':
    return mean_stderr(xs)
  if aggregation == 'perplexity':
    return perplexity_stderr(xs, bootstrap_iters)
  raise ValueError(f'no standard error for aggregation {aggregation!r}: use one of {sorted(AGGREGATIONS)}')


def argmax(values: Sequence[float] | np.ndarray) -> int:
  """Index of the largest value, the first on ties (numpy.argmax, which also picks the first NaN)."""
  return int(np.argmax(np.asarray(values, dtype=np.float64)))


def normalize_answer(text: str) -> str:
  """TriviaQA exact-match form: lower case, ASCII punctuation removed (the harness's ignore_case and
  ignore_punctuation on numpy string arrays, which also drop trailing NUL characters)."""
  return text.rstrip('\x00').lower().translate(_PUNCTUATION_TABLE).rstrip('\x00')
