"""The three request kinds of lm-evaluation-harness 0.4.x, and the backend protocol that answers them.

A task turns each document into requests; a backend (the samoe-jax model, or a stub with known answers in tests)
answers them in bulk; the task turns the answers into per-document metrics. The harness bridge hands the
harness's own requests to the same backend, so both paths share one scoring engine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol


@dataclasses.dataclass(frozen=True)
class LoglikelihoodRequest:
  """log P(continuation | context). The backend splits tokens as the harness does (see tokenization.py)."""
  context: str
  continuation: str


@dataclasses.dataclass(frozen=True)
class RollingLoglikelihoodRequest:
  """log P(text) of a whole text, scored in windows of the model's maximum length (perplexity)."""
  text: str


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
  """Greedy continuation of `context`, cut at the first of `until` (strings), at most max_gen_toks tokens."""
  context: str
  until: tuple[str, ...]
  max_gen_toks: int = 256


class Backend(Protocol):
  """What a task needs from a language model (the harness's LM interface, without its Instance wrapper)."""

  def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[tuple[float, bool]]:
    """Per request: (sum of continuation token log-probs, every continuation token is the greedy argmax)."""

  def loglikelihood_rolling(self, requests: Sequence[RollingLoglikelihoodRequest]) -> list[float]:
    """Per request: the summed log-likelihood of every token of the text."""

  def generate_until(self, requests: Sequence[GenerationRequest]) -> list[str]:
    """Per request: the generated text, cut before the first stop string."""
