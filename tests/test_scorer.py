"""The scoring engine against a slow reference that follows lm-evaluation-harness's HF model literally.

Reference: one unbatched, unpadded `model.logits` call per request (the harness's `(context_enc +
continuation_enc)[-(max_length + 1):][:-1]`, context_enc = [start 0] + context), a log-softmax and a plain
Python loop over the continuation's positions.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from lm_eval import utils as harness_utils

from samoe_jax.config.defaults import get_base_config
from samoe_jax.evaluation.scorer import LoglikelihoodScorer, rolling_windows, scoring_row
from samoe_jax.models.buckets import default_buckets
from samoe_jax.models.model import SEQUENCE_ROUTING, LanguageModel, token_mask

V, L = 300, 32


def tiny(**overrides):
  c = get_base_config()
  c.model.vocab_size, c.model.d_model, c.model.num_layers, c.model.num_heads, c.model.d_ff = V, 32, 2, 2, 64
  c.model.max_len = c.data.seq_len = L
  c.model.init_std = 0.3   # decisive routers, so routing differences would show
  c.model.layer_plan = 'all'
  c.moe.num_experts, c.moe.top_k = 4, 2
  c.moe.capacity_factor_eval, c.moe.min_capacity = 0.5, 1   # C = ceil(2 * 32 * 0.5 / 4) = 8: tokens get dropped
  for key, value in overrides.items():
    section, name = key.split('.')
    c[section][name] = value
  return c


CONFIGS = {
    'dense': {'model.layer_plan': 'none'},
    'moe': {'pool.size': 2, 'pool.mixing': 'fixed'},            # standard MoE: one pool entry per MoE layer
    'samoe': {'pool.size': 3, 'pool.granularity': 'expert'},     # learned expert-level mixing of a pool of 3
    'moe_runs': {'pool.size': 2, 'moe.group_size': 8},           # training groups of 8 positions
}


@pytest.fixture(scope='module')
def models():
  out = {}
  for name, overrides in CONFIGS.items():
    model = LanguageModel(tiny(**overrides))
    params = jax.jit(model.init_params)(jax.random.key(0))
    if 'mixing_logits' in params:   # non-uniform mixing weights, so that mixing errors would show
      alpha = params['mixing_logits']['alpha']
      params['mixing_logits']['alpha'] = jax.random.normal(jax.random.key(5), alpha.shape)
    logits = jax.jit(lambda p, t, m=model: m.logits(p, t, sequence_routing=True))
    out[name] = (model, params, logits)
  return out


def _random_ids(rng, n):
  return [int(t) for t in rng.integers(1, V, n)]


def _requests(seed=0):
  """Short, medium and over-long requests, empty contexts, and a continuation of exactly max_len; only three
  input lengths (8, 13, 32), so that the reference compiles few shapes."""
  rng = np.random.default_rng(seed)
  shapes = [(5, 3), (0, 8), (7, 1), (12, 1), (0, 13), (30, 6), (40, 10), (3, 29), (0, L), (15, 17)]
  return [(_random_ids(rng, c), _random_ids(rng, x)) for c, x in shapes]


def reference_loglikelihood(logits_fn, params, context_enc, continuation_enc):
  """(sum log p(continuation), all greedy) as the harness's HF model computes it, one request at a time."""
  inp = (list(context_enc) + list(continuation_enc))[-(L + 1):][:-1]
  logits = np.asarray(logits_fn(params, jnp.asarray([inp], jnp.int32))[0], np.float64)
  peak = logits.max(-1, keepdims=True)
  logprobs = logits - peak - np.log(np.sum(np.exp(logits - peak), -1, keepdims=True))
  cont = logprobs[len(inp) - len(continuation_enc):len(inp)]
  total, greedy = 0.0, True
  for i, token in enumerate(continuation_enc):
    total += cont[i, token]
    greedy = greedy and int(np.argmax(cont[i])) == token
  return total, greedy


@pytest.mark.parametrize('name', ['dense', 'moe', 'samoe', 'moe_runs'])
def test_scores_match_reference(models, name):
  model, params, logits_fn = models[name]
  requests = _requests()
  scorer = LoglikelihoodScorer(model, params, batch_size=4)
  got = scorer.score(requests)
  for (context, continuation), (ll, greedy) in zip(requests, got):
    ref_ll, ref_greedy = reference_loglikelihood(logits_fn, params, [0] + context, continuation)
    np.testing.assert_allclose(ll, ref_ll, rtol=1e-5, atol=1e-4)
    assert greedy == ref_greedy
  assert scorer.compiled_shapes == 2   # buckets 16 and 32 only


def test_greedy_flag_is_true_for_the_models_own_argmax(models):
  model, params, logits_fn = models['samoe']
  context = _random_ids(np.random.default_rng(3), 6)
  continuation = []
  for _ in range(3):   # the greedy continuation, one token at a time
    logits = logits_fn(params, jnp.asarray([[0] + context + continuation], jnp.int32))
    continuation.append(int(jnp.argmax(logits[0, -1])))
  scorer = LoglikelihoodScorer(model, params, batch_size=2)
  (_, greedy), (_, not_greedy) = scorer.score([(context, continuation), (context, continuation[:2] + [
      (continuation[2] + 1) % V])])
  assert greedy and not not_greedy


def test_bucketing_and_batch_size_never_change_a_score(models):
  """One bucket of max_len vs many buckets, different batch sizes: identical, with tokens being dropped (the
  default buckets are checked against the unpadded reference above)."""
  requests = _requests(seed=1)
  for name in ('moe', 'moe_runs'):
    model, params, _ = models[name]
    rows = [scoring_row(c, x, L).inputs for c, x in requests]
    inputs = jnp.asarray([list(r) + [0] * (L - len(r)) for r in rows], jnp.int32)
    _, auxes = jax.jit(lambda p, t, m=model: m.hidden(p, t, SEQUENCE_ROUTING))(params, inputs)
    dropped = [float(a['dropped_fraction']) for a in auxes]   # share of real tokens' choices without a slot
    assert min(dropped) > 0.1, f'{name}: too few tokens are dropped ({dropped}), so the test would prove nothing'
    results = [LoglikelihoodScorer(model, params, batch_size=b, buckets=buckets).score(requests)
               for b, buckets in [(3, (L,)), (5, (8, 16, 24, L))]]   # the default buckets: test above
    base = np.asarray([ll for ll, _ in results[0]])
    for other in results[1:]:
      np.testing.assert_allclose([ll for ll, _ in other], base, rtol=1e-5)
      assert [g for _, g in other] == [g for _, g in results[0]]


def test_batch_routing_would_depend_on_the_padded_length(models):
  """Why evaluation routing exists: with the training routing (capacity from the padded group), the same
  sequence padded to 16 or to 32 positions gets different outputs; with evaluation routing it never does."""
  model, params, _ = models['moe']
  tokens = jnp.asarray([[0] + _random_ids(np.random.default_rng(4), 13)], jnp.int32)
  padded = {n: jnp.pad(tokens, ((0, 1), (0, n - tokens.shape[1]))) for n in (16, 32)}  # 2 rows: 16 needs pairs
  logits = jax.jit(model.logits, static_argnames='sequence_routing')
  train_routing = {n: logits(params, t)[0, :14] for n, t in padded.items()}
  eval_routing = {n: logits(params, t, sequence_routing=True)[0, :14] for n, t in padded.items()}
  assert not np.allclose(train_routing[16], train_routing[32], atol=1e-3)
  np.testing.assert_allclose(eval_routing[16], eval_routing[32], rtol=1e-5, atol=1e-5)


def test_rolling_windows_match_the_harness():
  for n in (0, 1, 31, 32, 33, 64, 70, 100):
    tokens = list(range(1, n + 1))
    harness = [harness_utils.make_disjoint_window(w)
               for w in harness_utils.get_rolling_token_windows(tokens, prefix_token=0, max_seq_len=L, context_len=1)]
    ours = rolling_windows(tokens, L)
    assert len(ours) == len(harness)
    for (context, continuation), (h_context, h_continuation) in zip(ours, harness):
      assert list(continuation) == h_continuation
      # Same decoder inputs: the harness's context already holds the prefix token.
      assert list(scoring_row(context, continuation, L).inputs) == (h_context + h_continuation)[-(L + 1):][:-1]


@pytest.mark.parametrize('name', ['dense', 'samoe'])
def test_score_rolling_equals_the_sum_of_token_loglikelihoods(models, name):
  model, params, logits_fn = models[name]
  text = _random_ids(np.random.default_rng(2), 2 * L + 7)   # three windows: 32, 32 and 7 tokens
  windows = [harness_utils.make_disjoint_window(w)
             for w in harness_utils.get_rolling_token_windows(text, prefix_token=0, max_seq_len=L, context_len=1)]
  expected = sum(reference_loglikelihood(logits_fn, params, c, x)[0] for c, x in windows)
  scorer = LoglikelihoodScorer(model, params, batch_size=2)
  np.testing.assert_allclose(scorer.score_rolling(text), expected, rtol=1e-5)
  short = text[:5]
  many = scorer.score_rolling_many([text, [], short])
  np.testing.assert_allclose(many, [expected, 0.0, reference_loglikelihood(logits_fn, params, [0], short)[0]],
                             rtol=1e-5)


def test_scoring_row_truncates_like_the_harness():
  assert scoring_row([5, 6], [7, 8], 8) == scoring_row((5, 6), (7, 8), 8)
  row = scoring_row([5, 6], [7, 8], 8)
  assert (row.inputs, row.targets, row.num_scored) == ((0, 5, 6, 7), (5, 6, 7, 8), 2)
  row = scoring_row([1, 2, 3, 4, 5], [6, 7], 4)      # targets: the last 4 tokens; inputs: the token before each
  assert (row.inputs, row.targets, row.num_scored) == ((3, 4, 5, 6), (4, 5, 6, 7), 2)
  row = scoring_row([], [6, 7, 8, 9], 4)               # no room for the start token's slot: it is still the input
  assert (row.inputs, row.targets) == ((0, 6, 7, 8), (6, 7, 8, 9))


def test_default_buckets():
  assert default_buckets(32) == (16, 32)
  assert default_buckets(100) == (16, 32, 64, 100)
  assert default_buckets(8) == (8,)


def test_bad_input_is_refused_early(models):
  model, params, _ = models['moe']
  scorer = LoglikelihoodScorer(model, params, batch_size=2)
  with pytest.raises(ValueError, match='request 1: .*continuation is empty'):
    scorer.score([([1], [2]), ([1], [])])
  with pytest.raises(ValueError, match=r'request 0 continuation: token id 300 is outside \[0, vocab_size=300\)'):
    scorer.score([([1], [300])])
  with pytest.raises(ValueError, match='request 0: .*33 tokens, more than the model.max_len=32'):
    scorer.score([([1], [2] * 33)])
  with pytest.raises(ValueError, match='must include max_len=32'):
    LoglikelihoodScorer(model, params, buckets=(16,))
  with pytest.raises(ValueError, match='batch_size=0'):
    LoglikelihoodScorer(model, params, batch_size=0)
  choice = LanguageModel(tiny(**{'pool.size': 2, 'pool.mixing': 'fixed', 'moe.slot_priority': 'choice'}))
  with pytest.raises(ValueError, match="slot_priority='choice' is not causal"):
    LoglikelihoodScorer(choice, params)
  with pytest.raises(ValueError, match="needs moe.slot_priority='position'"):
    choice.logits(params, jnp.zeros((1, 4), jnp.int32), sequence_routing=True)


def test_eval_group_size_is_a_training_run_within_one_sequence():
  assert LanguageModel(tiny()).spec.eval_group_size == L                            # group 0: one sequence
  assert LanguageModel(tiny(**{'moe.group_size': 8})).spec.eval_group_size == 8     # runs of 8 positions
  assert LanguageModel(tiny(**{'moe.group_size': 2 * L})).spec.eval_group_size == L  # its sequence's share


_SHARDED_CHECK = '''
import jax, numpy as np, sys
sys.path.insert(0, {tests!r})
from test_scorer import tiny, _requests
from samoe_jax.evaluation.scorer import LoglikelihoodScorer
from samoe_jax.models.model import LanguageModel
from samoe_jax.sharding.mesh import make_mesh
from samoe_jax.sharding.partitioner import Partitioner
model = LanguageModel(tiny(**{{'pool.size': 3}}))
params = model.init_params(jax.random.key(0))
plain = LoglikelihoodScorer(model, params, batch_size=4).score(_requests())
partitioner = Partitioner(make_mesh({{'data': 2, 'expert': 2, 'model': 1}}))
shardings = partitioner.logical_to_mesh(model.param_logical_axes())
sharded_params = jax.device_put(params, shardings)
scorer = LoglikelihoodScorer(model, sharded_params, batch_size=4, partitioner=partitioner)
sharded = scorer.score(_requests())
np.testing.assert_allclose([a for a, _ in sharded], [a for a, _ in plain], rtol=1e-5)
assert [g for _, g in sharded] == [g for _, g in plain]
print('OK', len(jax.devices()))
'''


def test_sharded_scoring_equals_one_device():
  """On 4 fake CPU devices (data=2, expert=2), a subprocess: batch split over data x expert, experts over expert."""
  tests = os.path.dirname(os.path.abspath(__file__))
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4',
             PYTHONPATH=os.path.dirname(tests) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  done = subprocess.run([sys.executable, '-c', _SHARDED_CHECK.format(tests=tests)], env=env, capture_output=True,
                        text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-4000:]
  assert done.stdout.strip().endswith('OK 4')


def test_backend_counts_the_requests_it_cuts_to_the_model_length(models):
  """Contexts longer than the model are cut from the left as the harness cuts them; the backend counts them so
  that the evaluation can warn and record how many (evaluation/runner.py)."""
  import seqio  # pylint: disable=g-import-not-at-top
  from samoe_jax.evaluation.backend import ModelBackend  # pylint: disable=g-import-not-at-top
  from samoe_jax.evaluation.requests import LoglikelihoodRequest  # pylint: disable=g-import-not-at-top
  from samoe_jax.evaluation.tokenization import EvalTokenizer  # pylint: disable=g-import-not-at-top
  model, params, _ = models['dense']
  backend = ModelBackend(model, params, EvalTokenizer(seqio.ByteVocabulary()), batch_size=4)
  fits = LoglikelihoodRequest('a' * (L - 2), ' b')          # 30 + 2 bytes = L: nothing cut
  edge = LoglikelihoodRequest('a' * (L - 1), ' b')          # L + 1: the start token goes, no context token
  cut = LoglikelihoodRequest('a' * (2 * L), ' b')           # 2L context bytes: cut from the left
  backend.loglikelihood([fits, edge])
  assert backend.truncated == 0
  backend.loglikelihood([fits, cut, cut])
  assert backend.truncated == 2
