"""WideNet sharing (shared router, shared attention), manual sharing strategies, SaMoE ablations and the mixing-entropy
regulariser (docs/model.md; samoe_jax/layers/shared.py; docs/methods/sharing.md).

References: the shared models are compared with the unshared model whose per-block router / attention parameters
are all set to the same values (outputs equal; the shared parameter's gradient equals the sum of the per-block
gradients), KV-cache decoding with a naive full-prefix loop, the entropy term with a hand computation in numpy,
and the analytic parameter counts with the real parameter tree.
"""

from __future__ import annotations

import copy
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from method_checks import assert_causal, assert_loss_falls, load_config_file, shrink_for_training, tiny_model_config
from samoe_jax.models import accounting
from samoe_jax.training.config_checks import config_errors, validate_config
from samoe_jax.describe import describe, format_text
from samoe_jax.models.decoding import greedy_generate, prompt_inputs
from samoe_jax.models.model import EVAL, LanguageModel
from samoe_jax.training.metrics_writer import read_metrics

V, L = 64, 12
ATTENTION = ('qkv_kernel', 'qkv_bias', 'out_kernel', 'out_bias')
WIDENET_FULL = {'model.layer_plan': 'all', 'pool.size': 1, 'pool.mixing': 'fixed', 'pool.share_router': True,
                'model.share_attention': True}
CONFIG_FILES = ('tiny_widenet', 'tiny_widenet_full', 'tiny_manual_adjacent', 'tiny_manual_strided',
                'tiny_samoe_expert_level', 'tiny_samoe_output_space', 'tiny_samoe_entropy', 'tiny_tied')


def _tokens(seed=1, b=2):
  return jax.random.randint(jax.random.key(seed), (b, L), 1, V)


def _batch(seed=1, b=2):
  tokens = jax.random.randint(jax.random.key(seed), (b, L + 1), 1, V)
  return {'decoder_input_tokens': tokens[:, :-1], 'decoder_target_tokens': tokens[:, 1:],
          'decoder_loss_weights': jnp.ones((b, L)).at[1, -3:].set(0.0)}


def _blocks(params):
  return sorted((k for k in params if k.startswith('block_')), key=lambda k: int(k.split('_')[1]))


# ------------------------------------------------------------------------------------------------ parameter tree
def test_default_tree_is_unchanged_and_shared_parts_replace_per_block_ones():
  default = LanguageModel(tiny_model_config()).abstract_params()
  assert not any(k.startswith('shared_') for k in default)
  assert 'router' in default['block_1']['moe'] and 'attention' in default['block_0']
  shared = LanguageModel(tiny_model_config(**WIDENET_FULL)).abstract_params()
  assert shared['shared_router']['kernel'].shape == (16, 4)
  assert {k: v.shape for k, v in shared['shared_attention'].items()} == {
      k: v.shape for k, v in default['block_0']['attention'].items()}
  for block in _blocks(shared):   # per-block LayerNorms only
    assert sorted(shared[block]) == ['attention_norm', 'ffn_norm'], shared[block].keys()


# ----------------------------------------------------------------------------- shared == tied reference model
def _tie(shared_model, shared_params, ref_model, seed=0):
  """Reference params: the unshared model's, with every block's router / attention set to the shared values and
  everything else copied from the shared params."""
  ref = copy.deepcopy(jax.jit(ref_model.init_params)(jax.random.key(seed)))
  for name, value in shared_params.items():
    if not name.startswith('block_') and not name.startswith('shared_'):
      ref[name] = value
  for block in _blocks(ref):
    for sub in shared_params[block]:   # LayerNorms, dense FFNs and the unshared parts
      ref[block][sub] = shared_params[block][sub]
    if 'shared_attention' in shared_params:
      ref[block]['attention'] = dict(shared_params['shared_attention'])
    if 'moe' in ref[block]:
      ref[block]['moe']['router'] = ({'kernel': shared_params['shared_router']['kernel']}
                                     if 'shared_router' in shared_params else shared_params[block]['moe']['router'])
  return ref


@pytest.mark.parametrize('overrides', [
    {'pool.share_router': True, 'moe.capacity_factor_eval': 0.5},                  # SaMoE P=2, every other block
    WIDENET_FULL,
], ids=['share_router_samoe', 'widenet_full'])
def test_shared_model_equals_unshared_model_with_tied_values(overrides):
  base = {k: v for k, v in overrides.items() if k not in ('pool.share_router', 'model.share_attention')}
  shared_model = LanguageModel(tiny_model_config(**overrides))
  ref_model = LanguageModel(tiny_model_config(**base))
  params = jax.jit(shared_model.init_params)(jax.random.key(3))
  if 'mixing_logits' in params:
    params['mixing_logits']['alpha'] = jax.random.normal(jax.random.key(4), params['mixing_logits']['alpha'].shape)
  ref = _tie(shared_model, params, ref_model)
  tokens, batch = _tokens(), _batch()

  def run(model):   # evaluation-routing logits, and the training-routing loss with its gradient
    grad_fn = jax.value_and_grad(lambda p: model.loss_fn(p, batch, None, EVAL)[0])
    return jax.jit(lambda p: (model.logits(p, tokens, sequence_routing=True), *grad_fn(p)))

  logits, loss, g = run(shared_model)(params)
  logits_ref, loss_ref, g_ref = run(ref_model)(ref)
  np.testing.assert_allclose(logits, logits_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
  # The shared parameter's gradient is the sum of the tied copies' gradients.
  blocks = _blocks(ref)
  if 'shared_router' in params:
    want = sum(g_ref[b]['moe']['router']['kernel'] for b in blocks if 'moe' in g_ref[b])
    np.testing.assert_allclose(g['shared_router']['kernel'], want, rtol=1e-4, atol=1e-6)
  if 'shared_attention' in params:
    for name in ATTENTION:
      want = sum(g_ref[b]['attention'][name] for b in blocks)
      np.testing.assert_allclose(g['shared_attention'][name], want, rtol=1e-4, atol=1e-6)
  for b in blocks:   # per-block LayerNorms keep per-block gradients
    np.testing.assert_allclose(g[b]['ffn_norm']['scale'], g_ref[b]['ffn_norm']['scale'], rtol=1e-4, atol=1e-6)


def test_shared_router_routes_differently_per_depth():
  """WideNet's point: one router, per-block LayerNorms, so the routing differs between MoE layers."""
  model = LanguageModel(tiny_model_config(**WIDENET_FULL))
  params = jax.jit(model.init_params)(jax.random.key(0))
  for i, block in enumerate(_blocks(params)):   # give each block's ffn_norm its own scale
    params[block]['ffn_norm']['scale'] = jax.random.normal(jax.random.key(10 + i), (16,))
  _, auxes = jax.jit(model.hidden)(params, _tokens())
  loads = [np.asarray(a['expert_load']) for a in auxes]
  assert len(loads) == 4 and any(not np.allclose(loads[0], x) for x in loads[1:])


# ------------------------------------------------------------------------------------------- causality, decoding
@pytest.mark.parametrize('overrides', [
    {'pool.share_router': True, 'moe.capacity_factor_eval': 0.5},
    dict(WIDENET_FULL, **{'moe.capacity_factor_eval': 0.5}),
    {'pool.entropy_coef': 0.1},
], ids=['share_router', 'share_attention_widenet', 'entropy'])
def test_causal(overrides):
  assert_causal(tiny_model_config(**overrides))


def test_kv_cache_decoding_with_shared_attention_equals_the_naive_loop():
  """Each block keeps its own cache although the attention weights are shared (token dropping included)."""
  model = LanguageModel(tiny_model_config(**dict(WIDENET_FULL, **{'moe.capacity_factor_eval': 0.5})))
  params = jax.jit(model.init_params)(jax.random.key(1))
  logits_fn = jax.jit(lambda p, t: model.logits(p, t, sequence_routing=True))
  new = 5
  rng = np.random.default_rng(0)
  prompts = [[int(t) for t in rng.integers(1, V, n)] for n in (1, 6, 0)]
  got = greedy_generate(model, params, prompts, max_new_tokens=new, batch_size=2)
  for prompt, tokens in zip(prompts, got):
    inputs = list(prompt_inputs(prompt, L, new))
    want = []
    for _ in range(new):   # the whole prefix through the full forward pass (zero padding is never routed)
      padded = jnp.asarray([inputs + [0] * (L - len(inputs))], jnp.int32)
      token = int(np.argmax(np.asarray(logits_fn(params, padded)[0, len(inputs) - 1])))
      want.append(token)
      inputs.append(token)
    assert tokens == want, prompt
  _, cache = model.prefill(params, jnp.asarray([[0, 5, 9, 2]], jnp.int32), jnp.asarray([4]))
  keys = [np.asarray(cache[b]['attention']['key']) for b in _blocks(params)]
  assert len(keys) == 4 and not np.allclose(keys[0], keys[1])   # one cache per block, different contents


# ------------------------------------------------------------------------------------------ manual sharing
@pytest.mark.parametrize('assignment,entries', [('block', [0, 0, 1, 1]), ('modulo', [0, 1, 0, 1])])
def test_manual_sharing_uses_exactly_the_assigned_pool_entry(assignment, entries):
  config = tiny_model_config(**{'model.layer_plan': 'all', 'pool.size': 2, 'pool.mixing': 'fixed',
                                'pool.assignment': assignment})
  model = LanguageModel(config)
  assert list(model.spec.pool_entry) == entries
  params = jax.jit(model.init_params)(jax.random.key(0))
  pool = params['expert_pool']
  materialized = model.materialize(params)
  in_forward = model.layer_experts(params)   # what the blocks receive in the forward pass
  for layer, (block, entry) in enumerate(zip(model.spec.moe_layers, entries)):
    for name in ('w_in', 'b_in', 'w_out', 'b_out'):
      np.testing.assert_array_equal(getattr(materialized[layer], name), pool[name][entry])
      np.testing.assert_array_equal(getattr(in_forward[block].experts, name), pool[name][entry])
  for a in range(4):
    for b in range(4):
      same = np.array_equal(materialized[a].w_in, materialized[b].w_in)
      assert same == (entries[a] == entries[b]), (a, b)
  mapping = describe(config)['pool_mapping']
  assert mapping == {j: [b for b, e in zip(model.spec.moe_layers, entries) if e == j] for j in (0, 1)}


def test_manual_config_files_and_describe_mapping():
  adjacent, strided = load_config_file('tiny_manual_adjacent'), load_config_file('tiny_manual_strided')
  assert describe(adjacent)['pool_mapping'] == {0: [0, 1], 1: [2, 3]}
  assert describe(strided)['pool_mapping'] == {0: [0, 2], 1: [1, 3]}
  assert 'entry 0 <- blocks 0, 1 | entry 1 <- blocks 2, 3' in format_text(describe(adjacent))
  widenet = format_text(describe(load_config_file('tiny_widenet_full')))
  assert 'one router shared by the 4 MoE layers and one attention shared by the 4 blocks' in widenet
  assert load_config_file('tiny_samoe_expert_level').pool.granularity == 'expert'
  assert load_config_file('tiny_samoe_output_space').pool.space == 'output'
  assert load_config_file('tiny_samoe_entropy').pool.entropy_coef == 0.01
  assert load_config_file('tiny_samoe_entropy', '-0.05').pool.entropy_coef == -0.05
  with pytest.raises(ValueError, match='must be a number'):
    load_config_file('tiny_samoe_entropy', 'x')


# ------------------------------------------------------------------------------------------- entropy regulariser
def _hand_entropy(alpha, tau):
  """mean over rows of -sum_j w_j log w_j, w = softmax(alpha / tau), with Python floats."""
  rows = np.asarray(alpha, np.float64).reshape(-1, alpha.shape[-1])
  hs = []
  for row in rows:
    e = [math.exp(a / tau) for a in row]
    w = [x / sum(e) for x in e]
    hs.append(-sum(x * math.log(x) for x in w))
  return sum(hs) / len(hs)


@pytest.mark.parametrize('granularity', ['layer', 'expert'])
def test_entropy_term_equals_hand_computation_and_its_gradient_direction(granularity):
  tau, coef = 0.7, 0.3
  overrides = {'pool.size': 3, 'pool.granularity': granularity, 'pool.temperature': tau}
  reg = LanguageModel(tiny_model_config(**overrides, **{'pool.entropy_coef': coef}))
  off = LanguageModel(tiny_model_config(**overrides))
  params = jax.jit(reg.init_params)(jax.random.key(0))
  alpha = jax.random.normal(jax.random.key(5), params['mixing_logits']['alpha'].shape)
  params['mixing_logits']['alpha'] = alpha
  batch = _batch()

  def run(model):   # loss, metrics and (layer granularity) the gradient w.r.t. alpha
    f = lambda a: model.loss_fn(dict(params, mixing_logits={'alpha': a}), batch, None, EVAL)
    if granularity == 'expert':   # the same code path; only the value is checked, to save compile time
      return jax.jit(f)(alpha), None
    return jax.jit(jax.value_and_grad(f, has_aux=True))(alpha)

  (loss, metrics), g_reg = run(reg)
  (loss0, metrics0), g_off = run(off)
  hand = _hand_entropy(np.asarray(alpha), tau)
  np.testing.assert_allclose(metrics['pool/mixing_entropy'], hand, rtol=1e-5)
  np.testing.assert_allclose(loss - loss0, coef * hand, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(metrics['aux_loss'] - metrics0['aux_loss'], coef * hand, rtol=1e-4, atol=1e-6)
  assert 'pool/mixing_entropy' not in metrics0   # coef 0: not computed at all
  if granularity == 'expert':
    return
  # Gradient of the added term w.r.t. alpha: coef * dH/dalpha, dH/da_j = -(w_j / tau)(log w_j + H) / rows.
  g = g_reg - g_off
  a = np.asarray(alpha, np.float64)
  w = np.exp(a / tau) / np.exp(a / tau).sum(-1, keepdims=True)
  h = -(w * np.log(w)).sum(-1, keepdims=True)
  rows = a.size // a.shape[-1]
  np.testing.assert_allclose(g, coef * (-(w / tau) * (np.log(w) + h)) / rows, rtol=1e-3, atol=1e-7)
  # Descent on a positive coefficient lowers the entropy (towards one entry); a negative one raises it.
  for sign in (1.0, -1.0):
    stepped = alpha - 0.5 * sign * g
    if sign > 0:
      assert _hand_entropy(np.asarray(stepped), tau) < hand
    else:
      assert _hand_entropy(np.asarray(stepped), tau) > hand


def test_entropy_off_adds_nothing_to_the_graph():
  batch = _batch()
  count = lambda overrides: len(jax.make_jaxpr(
      lambda p, m=LanguageModel(tiny_model_config(**overrides)): m.loss_fn(p, batch, None, EVAL))(
          LanguageModel(tiny_model_config()).abstract_params()).jaxpr.eqns)
  assert count({}) == count({'pool.entropy_coef': 0.0}) < count({'pool.entropy_coef': 0.1})


# ------------------------------------------------------------------------------------------- accounting
@pytest.mark.parametrize('name', CONFIG_FILES)
def test_analytic_counts_equal_the_real_parameter_tree(name):
  config = load_config_file(name)
  validate_config(config)
  analytic = accounting.param_counts(config)
  summary = LanguageModel(config).param_summary()
  for key in ('total', 'expert_pool', 'mixing_logits', 'routers', 'non_expert', 'materialized',
              'active_per_token', 'params_per_expert', 'num_moe_layers'):
    assert analytic[key] == summary[key], (key, analytic[key], summary[key])


def test_widenet_counts_by_hand():
  """tiny_widenet_full: V 8192, D 128, F 512, max_len 128, 4 blocks, 8 experts top-2, all shared but LayerNorms."""
  d, f, v, e = 128, 512, 8192, 8
  attention, ln, expert, router = 4 * d * d + 4 * d, 2 * d, 2 * d * f + f + d, d * e
  non_expert = v * d + 128 * d + ln + attention + 4 * 2 * ln
  counts = accounting.param_counts(load_config_file('tiny_widenet_full'))
  assert counts['total'] == non_expert + e * expert + router
  # Active per token is a compute count: shared attention / router once per block that runs them (4 x), and
  # top-2 of the shared experts in each of the 4 MoE layers: exactly the unshared model's active count.
  assert counts['active_per_token'] == non_expert + 3 * attention + 4 * router + 4 * 2 * expert
  assert counts['routers'] == router
  unshared = accounting.param_counts(load_config_file('tiny_widenet'))   # attention per block
  assert unshared['total'] - counts['total'] == 3 * attention
  tied = accounting.param_counts(load_config_file('tiny_widenet'))
  tied_config = load_config_file('tiny_widenet')
  tied_config.pool.share_router = False
  assert accounting.param_counts(tied_config)['routers'] - tied['routers'] == 3 * router
  tied_config.model.share_attention = False
  assert accounting.param_counts(tied_config)['active_per_token'] == counts['active_per_token']
  # FLOPs are unchanged by sharing: every block still runs attention and its router.
  assert (accounting.flops_per_token(load_config_file('tiny_widenet_full'))['forward']
          == accounting.flops_per_token(tied_config)['forward'])


# ------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize('overrides,message', [
    ({'pool.share_router': 1}, 'pool.share_router=1: must be True or False'),
    ({'model.share_attention': 'yes'}, "model.share_attention='yes': must be True or False"),
    ({'pool.entropy_coef': 0.1, 'pool.mixing': 'fixed'}, "pool.entropy_coef=0.1: needs pool.mixing='learned'"),
    ({'pool.entropy_coef': 0.1, 'pool.size': 1}, 'pool.entropy_coef=0.1: needs pool.size >= 2'),
    ({'pool.entropy_coef': float('nan')}, 'pool.entropy_coef=nan: must be a finite number'),
])
def test_bad_values_are_refused(overrides, message):
  config = tiny_model_config()
  for key, value in overrides.items():   # bypass ConfigDict's type locking
    section, name = key.split('.')
    del config[section][name]
    config[section][name] = value
  assert any(message in line for line in config_errors(config)), config_errors(config)
  with pytest.raises(ValueError, match='invalid config'):
    validate_config(config)


def test_good_values_pass():
  for overrides in (WIDENET_FULL, {'pool.entropy_coef': -0.2}, {'model.layer_plan': 'none',
                                                                'model.share_attention': True}):
    assert config_errors(tiny_model_config(**overrides)) == []


# ------------------------------------------------------------------------------------------- training
def test_widenet_loss_falls(tmp_path):
  assert_loss_falls(shrink_for_training(load_config_file('tiny_widenet_full')), tmp_path)


def test_samoe_entropy_loss_falls_and_logs_the_entropy(tmp_path):
  assert_loss_falls(shrink_for_training(load_config_file('tiny_samoe_entropy')), tmp_path)
  entropy = [r['pool/mixing_entropy'] for r in read_metrics(str(tmp_path), 'train')]
  assert entropy and all(0.0 <= h <= math.log(2) + 1e-6 for h in entropy), entropy
