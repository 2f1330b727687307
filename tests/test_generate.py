"""Sampling in the KV-cache decoder (models/sampling.py, models/decoding.py: generate) against full forward passes
and softmax(logits / T), and the `samoe_jax.generate` command on a tiny trained run (tests/fixtures/
checkpoint_pre_mixing: the SaMoE of configs/test_tiny.py after 2 steps, byte vocabulary)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from samoe_jax import generate as generate_cli
from samoe_jax.config.defaults import get_base_config
from samoe_jax.models.decoding import generate, greedy_generate, prompt_inputs
from samoe_jax.models.model import SEQUENCE_ROUTING, LanguageModel
from samoe_jax.models.sampling import GREEDY, SamplingSettings, filter_logits

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = ROOT / 'tests' / 'fixtures' / 'checkpoint_pre_mixing'
V, L, NEW = 64, 32, 6
PROMPTS = [[5, 9, 2], [7], [3, 1, 4, 1, 5, 9, 2, 6, 5, 3], []]


def _tiny(**overrides):
  c = get_base_config()
  c.model.vocab_size, c.model.d_model, c.model.num_layers, c.model.num_heads, c.model.d_ff = V, 16, 1, 2, 32
  c.model.max_len = c.data.seq_len = L
  c.model.init_std = 0.5   # peaked next-token distributions, so that a wrong temperature shows
  c.moe.num_experts, c.moe.top_k, c.moe.capacity_factor_eval, c.moe.min_capacity = 4, 2, 0.5, 1   # drops tokens
  for key, value in overrides.items():
    section, name = key.split('.')
    c[section][name] = value
  return c


@pytest.fixture(scope='module')
def models():
  """A dense model and a SaMoE (learned mixing of a pool of 2, random mixing logits) with random parameters."""
  out = {}
  for name, overrides in (('dense', {'model.layer_plan': 'none'}),
                          ('samoe', {'model.layer_plan': 'all', 'pool.size': 2, 'pool.mixing': 'learned'})):
    model = LanguageModel(_tiny(**overrides))
    params = jax.jit(model.init_params)(jax.random.key(3))
    if 'mixing_logits' in params:
      alpha = params['mixing_logits']['alpha']
      params['mixing_logits']['alpha'] = jax.random.normal(jax.random.key(4), alpha.shape)
    logits = jax.jit(lambda p, t, m=model: m.project(p, m.hidden(p, t, SEQUENCE_ROUTING)[0]))
    out[name] = (model, params, logits)
  return out


def _next_logits(logits_fn, params, inputs) -> np.ndarray:
  """The full forward pass's float64 logits [V] after `inputs` (right-padded to L: causal, never routed)."""
  padded = np.zeros((1, L), np.int32)
  padded[0, :len(inputs)] = inputs
  return np.asarray(logits_fn(params, jnp.asarray(padded))[0, len(inputs) - 1], np.float64)


def _argmax_loop(logits_fn, params, prompt, new):
  inputs, out = list(prompt_inputs(prompt, L, new)), []
  for _ in range(new):
    out.append(int(np.argmax(_next_logits(logits_fn, params, inputs))))
    inputs.append(out[-1])
  return out


@pytest.mark.parametrize('name', ['dense', 'samoe'])
def test_greedy_equals_an_argmax_loop_over_full_forward_passes(models, name):
  model, params, logits_fn = models[name]
  got = generate(model, params, PROMPTS, max_new_tokens=NEW, sampling=GREEDY, batch_size=3)
  assert got == [_argmax_loop(logits_fn, params, p, NEW) for p in PROMPTS]
  assert greedy_generate(model, params, PROMPTS, max_new_tokens=NEW, batch_size=3) == got
  top1 = generate(model, params, PROMPTS, max_new_tokens=NEW, sampling=SamplingSettings(1.0, top_k=1), rng=9,
                  batch_size=3)
  assert top1 == got   # top_k = 1 at temperature 1 is greedy


@pytest.mark.parametrize('name', ['dense', 'samoe'])
def test_samples_are_reproducible_from_the_seed(models, name):
  model, params, _ = models[name]
  hot = SamplingSettings(temperature=3.0)

  def draw(seed, prompts=PROMPTS):
    return generate(model, params, prompts, max_new_tokens=NEW, sampling=hot, rng=seed, batch_size=3)

  first = draw(1)
  assert draw(1) == first
  assert draw(jax.random.key(1)) == first
  assert draw(2) != first and draw(3) != first
  assert all(len(t) == NEW for t in first)
  assert draw(1, PROMPTS[:2]) == first[:2]   # a prompt's draws depend on the seed and its index only


def _tv(p: np.ndarray, q: np.ndarray) -> float:
  return 0.5 * float(np.abs(p - q).sum())


def _softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max())
  return e / e.sum()


N_DRAWS = 4000
TV_BOUND = 0.1   # a correct sampler's expected TV over 64 ids with 4000 draws is <= 0.05 (uniform, worst case)


def _empirical(model, params, prompt, settings, seed=0) -> np.ndarray:
  """One-token samples of `prompt`, N_DRAWS rows in one batch: their frequencies [V]."""
  draws = generate(model, params, [prompt] * N_DRAWS, max_new_tokens=1, sampling=settings, rng=seed,
                   batch_size=N_DRAWS)
  return np.bincount([d[0] for d in draws], minlength=V) / N_DRAWS


def test_samples_follow_softmax_of_logits_over_temperature(models):
  model, params, logits_fn = models['dense']
  prompt = [5, 9, 2]
  logits = _next_logits(logits_fn, params, prompt_inputs(prompt, L, 1))
  t = 2.0
  right, wrong = _softmax(logits / t), _softmax(logits)   # `wrong`: a sampler that ignores the temperature
  assert _tv(right, wrong) > 3 * TV_BOUND                  # so the bound below tells them apart
  freq = _empirical(model, params, prompt, SamplingSettings(temperature=t))
  assert _tv(freq, right) < TV_BOUND, _tv(freq, right)
  assert _tv(freq, wrong) > 2 * TV_BOUND


def test_top_k_and_top_p_sample_from_the_renormalised_kept_set(models):
  model, params, logits_fn = models['dense']
  prompt = [7]
  logits = _next_logits(logits_fn, params, prompt_inputs(prompt, L, 1))
  probs = _softmax(logits)
  order = np.argsort(-probs)
  k = 5
  top_k = np.zeros(V, bool)
  top_k[order[:k]] = True
  p = 0.7
  nucleus = np.zeros(V, bool)   # the smallest set of most likely ids with mass >= p
  nucleus[order[:int(np.searchsorted(np.cumsum(probs[order]), p)) + 1]] = True
  assert 1 < nucleus.sum() < V and probs[nucleus].sum() >= p and probs[nucleus].sum() - probs[nucleus].min() < p
  for settings, kept in ((SamplingSettings(top_k=k), top_k), (SamplingSettings(top_p=p), nucleus)):
    freq = _empirical(model, params, prompt, settings, seed=5)
    expected = np.where(kept, probs, 0.0) / probs[kept].sum()
    assert set(np.flatnonzero(freq)) <= set(np.flatnonzero(kept)), settings   # no other id is ever drawn
    assert all(freq[expected * N_DRAWS >= 20] > 0), settings                  # every likely kept id is
    assert _tv(freq, expected) < TV_BOUND, (settings, _tv(freq, expected))


def test_text_ids_keep_padding_and_the_embeddings_padding_rows_out(models):
  """text_ids=n (a vocabulary of n ids in an embedding padded to V): only ids in [1, n) are produced, greedy is
  the argmax over those, and samples follow softmax(logits / T) renormalised over them."""
  model, params, logits_fn = models['dense']
  n, prompt, t = 40, [7], 3.0
  mask = (np.arange(V) >= 1) & (np.arange(V) < n)
  logits = _next_logits(logits_fn, params, prompt_inputs(prompt, L, 1))
  free = _empirical(model, params, prompt, SamplingSettings(temperature=t), seed=2)
  assert free[~mask].sum() > 0.05   # unrestricted, this prompt draws ids outside [1, n)
  draws = generate(model, params, [prompt] * N_DRAWS, max_new_tokens=1, sampling=SamplingSettings(temperature=t),
                   rng=2, batch_size=N_DRAWS, text_ids=n)
  freq = np.bincount([d[0] for d in draws], minlength=V) / N_DRAWS
  assert freq[~mask].sum() == 0
  expected = np.where(mask, _softmax(np.where(mask, logits / t, -np.inf)), 0.0)
  assert _tv(freq, expected) < TV_BOUND, _tv(freq, expected)
  inputs, want = list(prompt_inputs(PROMPTS[2], L, NEW)), []
  for _ in range(NEW):
    want.append(int(np.argmax(np.where(mask, _next_logits(logits_fn, params, inputs), -np.inf))))
    inputs.append(want[-1])
  assert generate(model, params, [PROMPTS[2]], max_new_tokens=NEW, sampling=GREEDY, text_ids=n) == [want]
  for bad in (1, V + 1, True, 2.5):
    with pytest.raises(ValueError, match=rf'generate: text_ids={bad!r} must be 0 \(every id\) or an int in '
                                         rf'\[2, model.vocab_size=64\]'):
      generate(model, params, [[1]], max_new_tokens=1, text_ids=bad)


def test_filter_logits_keeps_the_top_k_and_the_nucleus():
  logits = jnp.log(jnp.asarray([[0.1, 0.5, 0.15, 0.25]]))
  def kept(**kw):
    return [i for i, x in enumerate(np.asarray(filter_logits(logits, SamplingSettings(**kw)))[0]) if x > -np.inf]
  assert kept(top_k=2) == [1, 3] and kept(top_k=4) == [0, 1, 2, 3] and kept(top_k=0) == [0, 1, 2, 3]
  assert kept(top_p=0.45) == [1] and kept(top_p=0.6) == [1, 3] and kept(top_p=0.8) == [1, 2, 3]
  assert kept(top_p=1.0) == [0, 1, 2, 3] and kept(top_k=3, top_p=0.9) == [1, 2, 3]
  scaled = np.asarray(filter_logits(logits, SamplingSettings(temperature=0.5)))
  np.testing.assert_allclose(scaled, 2 * np.asarray(logits), rtol=1e-6)


@pytest.mark.parametrize('settings, message', [
    (SamplingSettings(temperature=-0.5), r'temperature=-0.5 must be a finite number >= 0 \(0 = greedy decoding\)'),
    (SamplingSettings(temperature=float('nan')), 'temperature=nan must be a finite number >= 0'),
    (SamplingSettings(top_k=-1), r'top_k=-1 must be an int >= 0 \(0 = keep every token\)'),
    (SamplingSettings(top_k=65), 'top_k=65 must be at most the vocabulary size 64'),
    (SamplingSettings(top_p=0.0), r'top_p=0.0 must be in \(0, 1\] \(1 = keep every token\)'),
    (SamplingSettings(top_p=1.5), r'top_p=1.5 must be in \(0, 1\]'),
])
def test_bad_sampling_settings_name_the_value(models, settings, message):
  model, params, _ = models['dense']
  with pytest.raises(ValueError, match='generate: ' + message):
    generate(model, params, [[1]], max_new_tokens=2, sampling=settings)


def test_bad_decoding_arguments_name_the_value(models):
  model, params, _ = models['dense']
  with pytest.raises(ValueError, match=r'generate: max_new_tokens=33 must be an int in \[0, model.max_len=32\]'):
    generate(model, params, [[1]], max_new_tokens=L + 1)
  with pytest.raises(ValueError, match='generate: batch_size=0 must be a positive int'):
    generate(model, params, [[1]], max_new_tokens=1, batch_size=0)


# ------------------------------------------------------------------------------------------------ the command


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  path = tmp_path_factory.mktemp('generate') / 'run'
  shutil.copytree(FIXTURE, path)
  return path


def _options(workdir, **kw):
  return generate_cli.GenerateOptions(workdir=str(workdir), **{'max_new_tokens': 8, **kw})


def test_command_prints_prompts_and_continuations_and_writes_jsonl(workdir, tmp_path, capsys):
  """The command's flags parsed as on a command line, in this process (the exit-code test below runs it as a
  subprocess): greedy without a stop string gives a text; a stop string taken from it cuts there."""
  values = flags.FlagValues()
  generate_cli.define_flags(values)
  greedy = generate_cli.generate_records(_options(workdir, prompts=('ROMEO:',), temperature=0.0))
  text = greedy[0]['continuation']
  assert greedy[0]['step'] == 2 and greedy[0]['finish'] == 'length' and len(text) >= 2, greedy
  stop = next(c for c in text[1:] if c != '\\')
  expected = text.split(stop)[0]
  out = tmp_path / 'samples.jsonl'
  prompts = tmp_path / 'prompts.txt'
  prompts.write_text('To be\\nor not\n\nROMEO:\n')
  values(['samoe_jax.generate', f'--workdir={workdir}', f'--prompt_file={prompts}', '--temperature=0',
          '--max_new_tokens=8', f'--stop={stop}', '--num_samples=2', f'--output_jsonl={out}'])
  capsys.readouterr()
  generate_cli.run(generate_cli.options_from_flags(values))
  printed = capsys.readouterr().out
  records = [json.loads(line) for line in out.read_text().splitlines()]
  assert [(r['prompt_index'], r['sample'], r['prompt']) for r in records] == [
      (0, 0, 'To be\nor not'), (0, 1, 'To be\nor not'), (1, 0, 'ROMEO:'), (1, 1, 'ROMEO:')]
  assert records[2]['continuation'] == records[3]['continuation'] == expected
  assert records[2]['finish'] == 'stop' and records[2]['temperature'] == 0.0 and records[2]['step'] == 2
  assert all(stop not in r['continuation'] for r in records)
  assert printed.count('=== prompt ') == 4 and '=== prompt 2/2, sample 1/2 (step 2; ' in printed
  assert f'PROMPT: ROMEO:\nCONTINUATION: {expected}\n' in printed
  assert 'PROMPT: To be\nor not\nCONTINUATION: ' in printed
  assert generate_cli.unescape(r'a\nb\tc\\n\x') == 'a\nb\tc\\n\\x'


@pytest.mark.parametrize('kw, message', [
    ({'workdir': 'NOWHERE'}, "--workdir='NOWHERE' is not a directory"),
    ({'workdir': 'EMPTY'}, "--workdir='EMPTY' has no config.json"),
    ({'prompts': ()}, 'no prompt: give --prompt=TEXT'),
    ({'prompt_file': 'missing.txt'}, "--prompt_file='missing.txt' does not exist"),
    ({'temperature': -1.0}, '--temperature=-1.0 must be a finite number >= 0'),
    ({'top_p': 2.0}, r'--top_p=2.0 must be in \(0, 1\]'),
    ({'top_k': 300}, '--top_k=300 must be at most the vocabulary size 264'),
    ({'max_new_tokens': 16}, r'--max_new_tokens=16 must be in \[1, 15\]: the model sees model.max_len=16'),
    ({'num_samples': 0}, '--num_samples=0 must be an int >= 1'),
    ({'prompts': ('',)}, r"prompt 0 \(''\) is empty after encoding with the run's 'byte' vocabulary"),
    ({'step': 3}, r"--step='3': no checkpoint of step\(s\) \[3\] in .*; available: \[2\]"),
    ({'stop': ('',)}, "--stop='': a stop string must be non-empty"),
])
def test_bad_command_settings_name_the_value(workdir, tmp_path, kw, message):
  (tmp_path / 'EMPTY').mkdir()
  kw = {'prompts': ('x',), **kw}
  if kw.get('workdir') in ('NOWHERE', 'EMPTY'):
    kw['workdir'] = str(tmp_path / kw['workdir'])
    message = message.replace("'NOWHERE'", '.*NOWHERE\'').replace("'EMPTY'", '.*EMPTY\'')
  options = generate_cli.GenerateOptions(**{'workdir': str(workdir), **kw})
  with pytest.raises(ValueError, match=message):
    generate_cli.generate_records(options)


def test_command_line_errors_are_one_line_and_exit_code_1(workdir):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')
  done = subprocess.run([sys.executable, '-m', 'samoe_jax.generate', f'--workdir={workdir}', '--prompt=x',
                         '--temperature=-1'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                        check=False)
  assert done.returncode == 1
  assert 'Traceback' not in done.stderr
  assert 'samoe_jax.generate: error: --temperature=-1.0 must be a finite number >= 0' in done.stderr
