"""Greedy decoding with a KV cache (samoe_jax/models/decoding.py) against a naive loop that reruns the whole
prefix through the full forward pass every step, for dense, MoE with dropped tokens and SaMoE models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samoe_jax.evaluation.scorer import LoglikelihoodScorer
from samoe_jax.models.decoding import cut_at_stop, greedy_generate, prompt_inputs
from samoe_jax.models.model import SEQUENCE_ROUTING, LanguageModel
from test_scorer import CONFIGS, L, V, tiny

NEW = 12


@pytest.fixture(scope='module')
def models():
  out = {}
  for name in ('dense', 'moe', 'samoe', 'moe_runs'):
    model = LanguageModel(tiny(**CONFIGS[name]))
    params = model.init_params(jax.random.key(1))
    if 'mixing_logits' in params:
      alpha = params['mixing_logits']['alpha']
      params['mixing_logits']['alpha'] = jax.random.normal(jax.random.key(7), alpha.shape)
    logits = jax.jit(lambda p, t, m=model: m.logits(p, t, sequence_routing=True))
    out[name] = (model, params, logits)
  return out


def naive_generate(logits_fn, params, prompt, max_new_tokens):
  """Full forward pass over [0] + prompt + generated so far, argmax of the last position, max_new_tokens times.

  The inputs are right-padded with zeros to the model's L positions, so one compiled forward pass serves every
  length: padding never reaches an earlier position (causal attention; evaluation routing never routes padding,
  tests/test_scorer.py checks that lengths and buckets never change a score)."""
  inputs = list(prompt_inputs(prompt, L, max_new_tokens))
  generated = []
  for _ in range(max_new_tokens):
    padded = np.zeros((1, L), np.int32)
    padded[0, :len(inputs)] = inputs
    logits = np.asarray(logits_fn(params, jnp.asarray(padded))[0, len(inputs) - 1])
    token = int(np.argmax(logits))
    generated.append(token)
    inputs.append(token)
  return generated


def _prompts(seed=0):
  rng = np.random.default_rng(seed)
  return [[int(t) for t in rng.integers(1, V, n)] for n in (1, 7, 3, 19, 30, 12, 0)]


@pytest.mark.parametrize('name', ['dense', 'moe', 'samoe', 'moe_runs'])
def test_kv_cache_decoding_equals_the_naive_loop(models, name):
  model, params, logits_fn = models[name]
  prompts = _prompts()
  got = greedy_generate(model, params, prompts, max_new_tokens=NEW, batch_size=3)   # mixed lengths per batch
  for prompt, tokens in zip(prompts, got):
    assert tokens == naive_generate(logits_fn, params, prompt, NEW), (name, len(prompt))


def test_moe_fixture_really_drops_tokens(models):
  """The MoE configs use capacity factor 0.5: decoding equality above covers the dropped-token path."""
  model, params, _ = models['moe']
  tokens = jnp.asarray([prompt_inputs(_prompts()[4], L, 1)], jnp.int32)
  _, auxes = model.hidden(params, tokens, SEQUENCE_ROUTING)
  assert max(float(a['dropped_fraction']) for a in auxes) > 0.0


def test_batch_gives_what_each_prompt_gives_alone(models):
  model, params, _ = models['samoe']
  prompts = _prompts(1)
  together = greedy_generate(model, params, prompts, max_new_tokens=NEW, batch_size=4)
  alone = [greedy_generate(model, params, [p], max_new_tokens=NEW, batch_size=1)[0] for p in prompts]
  assert together == alone


def test_generations_score_as_greedy_continuations(models):
  """The scorer agrees: every generated continuation is the greedy argmax at each of its positions."""
  model, params, _ = models['moe']
  prompts = [p for p in _prompts(2) if p]
  generated = greedy_generate(model, params, prompts, max_new_tokens=6)
  scorer = LoglikelihoodScorer(model, params, batch_size=4)
  for (ll, greedy), prompt, tokens in zip(scorer.score(list(zip(prompts, generated))), prompts, generated):
    assert greedy and ll < 0.0, (prompt, tokens)


def test_stop_sequences_cut_before_the_stop(models):
  model, params, logits_fn = models['dense']
  prompt = _prompts()[3]
  full = naive_generate(logits_fn, params, prompt, NEW)
  stop = full[4:6]
  expected = cut_at_stop(full, [stop])
  assert len(expected) <= 4
  got = greedy_generate(model, params, [prompt], max_new_tokens=NEW, stop_sequences=[[V - 1, V - 2, V - 3], stop])
  assert got == [expected]
  assert cut_at_stop([5, 1, 2, 3, 1, 2], [[1, 2], [3]]) == [5]
  assert cut_at_stop([5, 6], [[7]]) == [5, 6]


def test_prompt_truncation_leaves_room_for_new_tokens():
  assert prompt_inputs(list(range(1, 41)), L, NEW) == tuple(range(20, 41))      # last max_len - NEW + 1 = 21
  assert prompt_inputs([], L, NEW) == (0,)


def test_bad_arguments_are_refused(models):
  model, params, _ = models['dense']
  with pytest.raises(ValueError, match=r'max_new_tokens=33 must be an int in \[0, model.max_len=32\]'):
    greedy_generate(model, params, [[1]], max_new_tokens=L + 1)
  with pytest.raises(ValueError, match=r'prompt 0 has a token id outside \[0, vocab_size=300\)'):
    greedy_generate(model, params, [[V]], max_new_tokens=2)
  with pytest.raises(ValueError, match='stop sequences must be non-empty'):
    greedy_generate(model, params, [[1]], max_new_tokens=2, stop_sequences=[[]])
  assert greedy_generate(model, params, [[1], [2]], max_new_tokens=0) == [[], []]
