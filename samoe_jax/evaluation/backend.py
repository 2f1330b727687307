"""ModelBackend: the harness's three request kinds answered by a samoe-jax model on device.

Strings become token ids through the model's own vocabulary with the harness's context/continuation split
(tokenization.py); log-likelihoods come from the bucketed, batched scorer (scorer.py) and generations from
greedy decoding with a KV cache (models/decoding.py). `samoe_jax.evaluate` and the lm-eval adapter (harness.py)
both use this class, so they give identical numbers for identical requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_collections
from absl import logging

from samoe_jax.evaluation import checkpoints
from samoe_jax.evaluation.requests import (GenerationRequest, LoglikelihoodRequest,
                                           RollingLoglikelihoodRequest)
from samoe_jax.evaluation.scorer import LoglikelihoodScorer
from samoe_jax.evaluation.tokenization import EvalTokenizer
from samoe_jax.models.decoding import greedy_generate
from samoe_jax.models.model import LanguageModel
from samoe_jax.sharding.mesh import make_mesh
from samoe_jax.sharding.partitioner import Partitioner


def cut_at_stop(text: str, until: Sequence[str]) -> str:
  """The text before the first occurrence of any stop string (the harness's post-processing)."""
  for stop in until:
    if stop:
      text = text.split(stop, 1)[0]
  return text


class ModelBackend:
  """Backend (requests.py) over one model and its parameters. `truncated` counts the requests so far whose
  context was cut from the left to fit model.max_len (the harness does the same, silently)."""

  def __init__(self, model: LanguageModel, params: Any, tokenizer: EvalTokenizer, *, batch_size: int = 16,
               partitioner: Partitioner | None = None):
    self.model = model
    self.params = params
    self.tokenizer = tokenizer
    self.batch_size = batch_size
    self.scorer = LoglikelihoodScorer(model, params, batch_size=batch_size, partitioner=partitioner)
    self.truncated = 0

  def set_params(self, params: Any) -> None:
    """New parameters of the same model (the trainer's periodic evaluation); compiled shapes are reused."""
    self.params = params
    self.scorer.params = params

  def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[tuple[float, bool]]:
    pairs = [self.tokenizer.split_context_continuation(r.context, r.continuation) for r in requests]
    self.truncated += sum(len(c) + len(x) > self.model.spec.model.max_len + 1 for c, x in pairs)   # scorer.scoring_row
    return self.scorer.score(pairs)

  def loglikelihood_rolling(self, requests: Sequence[RollingLoglikelihoodRequest]) -> list[float]:
    return self.scorer.score_rolling_many([self.tokenizer.encode(r.text) for r in requests])

  def generate_until(self, requests: Sequence[GenerationRequest]) -> list[str]:
    """Greedy generations cut at the first stop string; the EOS token always stops (as the harness adds it).

    Stop strings are also given to the decoder as token sequences so that it can stop early; the text is then
    cut at the first stop string, which is exact whatever the tokenization of the stop string. At most
    model.max_len - 1 new tokens are generated (the prompt keeps at least one token; it is left-truncated to
    max_len - max_new_tokens tokens, as the harness's HF model does).
    """
    out: list[str] = [''] * len(requests)
    by_budget: dict[tuple[int, tuple[str, ...]], list[int]] = {}
    for i, r in enumerate(requests):
      by_budget.setdefault((r.max_gen_toks, r.until), []).append(i)
    for (max_gen_toks, until), indices in by_budget.items():
      max_gen_toks = min(max_gen_toks, self.model.spec.model.max_len - 1)   # leave room for at least one context token
      stops = [[self.tokenizer.eos_id]] + [self.tokenizer.encode(s) for s in until if s]
      prompts = [self.tokenizer.encode(requests[i].context) for i in indices]
      self.truncated += sum(len(p) > self.model.spec.model.max_len - max_gen_toks for p in prompts)
      generated = greedy_generate(self.model, self.params, prompts, max_new_tokens=max_gen_toks,
                                  stop_sequences=[s for s in stops if s], batch_size=self.batch_size)
      for i, ids in zip(indices, generated):
        ids = [t for t in ids if t != self.tokenizer.eos_id]
        out[i] = cut_at_stop(self.tokenizer.decode(ids), until)
    return out


def load_backend(workdir: str, *, checkpoint: str = 'latest', config_path: str | None = None,
                 config: ml_collections.ConfigDict | None = None, batch_size: int = 16) -> ModelBackend:
  """A backend over one checkpoint of a run (`checkpoint`: 'latest' or a step); config: the run's config.json
  unless given as a file or a ConfigDict."""
  if config is None:
    if config_path:
      from samoe_jax.config.gin_config import load_config_file  # pylint: disable=g-import-not-at-top
      config = load_config_file(config_path)
    else:
      config = checkpoints.run_config(workdir)
  steps = checkpoints.select_steps(workdir, checkpoint)
  if len(steps) != 1:
    raise ValueError(f'checkpoint={checkpoint!r} names {len(steps)} checkpoints; the backend serves one')
  model = LanguageModel(config)
  partitioner = Partitioner(make_mesh(config.mesh))
  params = checkpoints.restore_params(model, partitioner, workdir, steps[0])
  logging.info('evaluation backend: %s step %d', workdir, steps[0])
  return ModelBackend(model, params, EvalTokenizer.from_config(config), batch_size=batch_size,
                      partitioner=partitioner)
