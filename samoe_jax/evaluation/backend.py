"""ModelBackend: the harness's three request kinds answered by a samoe-jax model on device.

Strings become token ids through the model's own vocabulary with the harness's context/continuation split
(tokenization.py); log-likelihoods come from the bucketed, batched scorer (scorer.py) and generations from
greedy decoding with a KV cache (models/decoding.py). `samoe_jax.evaluate` and the lm-eval adapter (harness.py)
both use this class, so they give identical numbers for identical requests; `samoe_jax.generate` uses its
`load_run` and `generate_texts` with sampling settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import ml_collections
from absl import logging

from samoe_jax.evaluation import checkpoints
from samoe_jax.evaluation.requests import (GenerationRequest, LoglikelihoodRequest,
                                           RollingLoglikelihoodRequest)
from samoe_jax.config.gin_config import load_config_file
from samoe_jax.evaluation.scorer import LoglikelihoodScorer
from samoe_jax.evaluation.tokenization import EvalTokenizer
from samoe_jax.models.decoding import generate
from samoe_jax.models.model import LanguageModel
from samoe_jax.models.sampling import GREEDY, SamplingSettings
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

    At most model.max_len - 1 new tokens are generated (the prompt keeps at least one token; it is left-truncated
    to max_len - max_new_tokens tokens, as the harness's HF model does). See `generate_texts`.
    """
    out: list[str] = [''] * len(requests)
    by_budget: dict[tuple[int, tuple[str, ...]], list[int]] = {}
    for i, r in enumerate(requests):
      by_budget.setdefault((r.max_gen_toks, r.until), []).append(i)
    for (max_gen_toks, until), indices in by_budget.items():
      max_gen_toks = min(max_gen_toks, self.model.spec.model.max_len - 1)   # leave room for at least one context token
      prompts = [self.tokenizer.encode(requests[i].context) for i in indices]
      self.truncated += sum(len(p) > self.model.spec.model.max_len - max_gen_toks for p in prompts)
      generated = generate_texts(self.model, self.params, self.tokenizer, prompts, max_new_tokens=max_gen_toks,
                                 until=until, batch_size=self.batch_size)
      for i, continuation in zip(indices, generated):
        out[i] = continuation.text
    return out


@dataclasses.dataclass(frozen=True)
class Continuation:
  """A generated text: `new_tokens` ids were kept, and finish is 'stop' (EOS or a stop string ended it) or
  'length' (max_new_tokens ran out first), as in the OpenAI completions API's finish_reason."""
  text: str
  new_tokens: int
  finish: str


def generate_texts(model: LanguageModel, params: Any, tokenizer: EvalTokenizer, prompts: Sequence[Sequence[int]],
                   *, max_new_tokens: int, until: Sequence[str] = (), sampling: SamplingSettings = GREEDY,
                   rng: Any = 0, batch_size: int = 16) -> list[Continuation]:
  """The decoded continuation of every prompt (token ids), cut at the first stop string of `until`; the EOS
  token always stops. Stop strings are also given to the decoder as token sequences so that it can stop early;
  the text is then cut at the first stop string, which is exact whatever the tokenization of the stop string.
  Only ids the vocabulary decodes to text are produced (not padding, nor the embedding's padding rows)."""
  stops = [[tokenizer.eos_id]] + [tokenizer.encode(s) for s in until if s]
  generated = generate(model, params, prompts, max_new_tokens=max_new_tokens, sampling=sampling, rng=rng,
                       stop_sequences=[s for s in stops if s], batch_size=batch_size,
                       text_ids=min(tokenizer.vocab_size, model.spec.model.vocab_size))
  out = []
  for ids in generated:
    ids = [t for t in ids if t != tokenizer.eos_id]
    full = tokenizer.decode(ids)
    text = cut_at_stop(full, until)
    finish = 'stop' if len(ids) < max_new_tokens or len(text) < len(full) else 'length'
    out.append(Continuation(text, len(ids), finish))
  return out


@dataclasses.dataclass(frozen=True)
class LoadedRun:
  """One checkpoint of a training run, ready to evaluate or generate from (see `load_run`)."""
  config: ml_collections.ConfigDict
  step: int
  model: LanguageModel
  partitioner: Partitioner
  params: Any
  tokenizer: EvalTokenizer


def load_run(workdir: str, *, checkpoint: str = 'latest', config_path: str | None = None,
             config: ml_collections.ConfigDict | None = None, flag: str = '--checkpoint') -> LoadedRun:
  """The model, parameters (only: no optimizer state) and vocabulary of one checkpoint of a run (`checkpoint`:
  'latest' or a step; errors name it as the flag `flag`); config: the run's config.json unless given as a file
  or a ConfigDict."""
  if config is None:
    if config_path:
      config = load_config_file(config_path)
    else:
      config = checkpoints.run_config(workdir)
  steps = checkpoints.select_steps(workdir, checkpoint, flag)
  if len(steps) != 1:
    raise ValueError(f'{flag}={checkpoint!r} names {len(steps)} checkpoints; one is needed')
  model = LanguageModel(config)
  partitioner = Partitioner(make_mesh(config.mesh))
  params = checkpoints.restore_params(model, partitioner, workdir, steps[0])
  return LoadedRun(config, steps[0], model, partitioner, params, EvalTokenizer.from_config(config))


def load_backend(workdir: str, *, checkpoint: str = 'latest', config_path: str | None = None,
                 config: ml_collections.ConfigDict | None = None, batch_size: int = 16) -> ModelBackend:
  """A backend over one checkpoint of a run (`checkpoint`: 'latest' or a step); config: the run's config.json
  unless given as a file or a ConfigDict."""
  run = load_run(workdir, checkpoint=checkpoint, config_path=config_path, config=config)
  logging.info('evaluation backend: %s step %d', workdir, run.step)
  return ModelBackend(run.model, run.params, run.tokenizer, batch_size=batch_size, partitioner=run.partitioner)
