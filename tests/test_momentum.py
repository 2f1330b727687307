"""MomentumSMoE / AdamSMoE (samoe_jax/layers/momentum.py, docs/methods/momentum.md).

References: `reference_hidden` runs the decoder as a plain Python loop over its blocks, calling the real layers
(LayerNorm, attention, dense FFN, MoE FFN) with the model's parameters and combining the MoE outputs with the
momentum state by hand in numpy (float64); greedy decoding is checked against a naive full-prefix loop and the
scorer against one unbatched forward pass per request (tests/test_scorer.py's reference).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from method_checks import (assert_causal, assert_loss_falls, load_config_file, shrink_for_training,
                           tiny_model_config)
from samoe_jax.models import accounting
from samoe_jax import describe as describe_lib
from samoe_jax.training.config_checks import config_errors, validate_config
from samoe_jax.evaluation.scorer import LoglikelihoodScorer
from samoe_jax.layers import momentum as momentum_lib
from samoe_jax.layers.attention import CausalSelfAttention
from samoe_jax.layers.mlp import DenseFFN, LayerNorm
from samoe_jax.models.decoding import greedy_generate
from samoe_jax.models.model import EVAL, SEQUENCE_ROUTING, TRAIN, LanguageModel, token_mask
from samoe_jax.models.transformer import make_moe_ffn

PLAN = 'MMDM'   # three MoE layers with a dense block between the second and the third
SETTINGS = {
    'heavy_ball': {'moe.momentum': 'heavy_ball', 'moe.momentum_mu': 0.6, 'moe.momentum_gamma': 0.8},
    'adam_all': {'moe.momentum': 'adam', 'moe.adam_layers': 'all', 'moe.momentum_gamma': 0.05,
                 'moe.adam_beta1': 0.8, 'moe.adam_beta2': 0.9, 'moe.adam_eps': 1e-6},
    'adam_first': {'moe.momentum': 'adam', 'moe.adam_layers': 'first', 'moe.momentum_mu': 0.6,
                   'moe.momentum_gamma': 0.05, 'moe.adam_beta1': 0.8, 'moe.adam_beta2': 0.9,
                   'moe.adam_eps': 1e-6},
}


def config_for(setting: str | None, **overrides):
  base = {'model.layer_plan': PLAN, 'pool.size': 3, 'pool.mixing': 'fixed'}
  return tiny_model_config(**{**base, **(SETTINGS[setting] if setting else {}), **overrides})


# ------------------------------------------------------------------------------------------ the reference
def reference_hidden(model: LanguageModel, params, tokens_BL: jax.Array) -> np.ndarray:
  """Final hidden states by a Python loop over the blocks; momentum combined by hand (numpy, float64)."""
  spec, mc = model.spec, model.spec.momentum
  experts = model.layer_experts(params)
  mask_BL = token_mask(tokens_BL)
  length = tokens_BL.shape[1]
  x = np.asarray(params['token_embedding'])[np.asarray(tokens_BL)] + np.asarray(
      params['position_embedding'])[:length][None]
  x = x.astype(np.float64)
  p = np.zeros_like(x)
  m = np.zeros_like(x)
  v = np.zeros_like(x)
  norm = LayerNorm(dtype=spec.compute_dtype)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  moe_index = 0
  for i in range(spec.model.num_layers):
    bp = params[f'block_{i}']
    h = norm.apply({'params': bp['attention_norm']}, f32(x))
    h = CausalSelfAttention(spec.model.num_heads, spec.model.init_std, spec.out_init_std, spec.model.dropout_rate,
                            spec.compute_dtype).apply({'params': bp['attention']}, h, train=False)
    x = x + np.asarray(h, np.float64)
    h = norm.apply({'params': bp['ffn_norm']}, f32(x))
    if i not in spec.moe_layers:
      x = x + np.asarray(DenseFFN(spec.model.d_ff, spec.model.init_std, spec.out_init_std, spec.compute_dtype).apply(
          {'params': bp['ffn']}, h, train=False), np.float64)
      continue
    f, _ = make_moe_ffn(spec, None).apply({'params': bp['moe']}, h, experts[i].experts, mask_BL, train=False)
    f = np.asarray(f, np.float64)
    adam_here = mc.kind == 'adam' and (mc.adam_layers == 'all' or moe_index == 0)
    if adam_here:
      m = mc.beta1 * m + (1 - mc.beta1) * f
      v = mc.beta2 * v + (1 - mc.beta2) * f * f
    if not (mc.kind == 'adam' and mc.adam_layers == 'all'):
      p = mc.mu * p + mc.gamma * f
    x = x + (mc.gamma * m / np.sqrt(v + mc.eps) if adam_here else p)
    moe_index += 1
  return np.asarray(norm.apply({'params': params['final_norm']}, f32(x)))


@pytest.fixture(scope='module')
def tokens():
  return jax.random.randint(jax.random.key(1), (2, 12), 1, 64)


@pytest.fixture(scope='module')
def params():
  """Parameters of config_for(...): the same for every setting (momentum adds none), so initialised once."""
  return jax.jit(LanguageModel(config_for(None)).init_params)(jax.random.key(0))


@pytest.mark.parametrize('setting', sorted(SETTINGS))
def test_model_equals_layer_loop_reference(setting, tokens, params):
  model = LanguageModel(config_for(setting))
  got, auxes = jax.jit(lambda p, t: model.hidden(p, t))(params, tokens)
  assert len(auxes) == 3 and all('momentum' not in a for a in auxes)
  want = reference_hidden(model, params, tokens)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_mu_zero_gamma_one_is_the_plain_model_exactly(tokens, params):
  """p_l = 0 p + 1 f_l = f_l: the same final hidden states as the plain MoE with the same parameters, bit for bit
  (evaluation routing, so the dropped-token path is used too)."""
  plain = LanguageModel(config_for(None, **{'moe.capacity_factor_eval': 0.5}))
  hb = LanguageModel(config_for('heavy_ball', **{'moe.momentum_mu': 0.0, 'moe.momentum_gamma': 1.0,
                                                  'moe.capacity_factor_eval': 0.5}))
  a, b = [np.asarray(jax.jit(lambda p, t, m=m: m.hidden(p, t, SEQUENCE_ROUTING)[0])(params, tokens))
          for m in (plain, hb)]
  np.testing.assert_array_equal(a, b)


def test_state_accumulates_the_dropped_out_moe_outputs(tokens, params):
  """Training with dropout: each block's residual dropout outputs are recorded (flax intercept_methods); an MoE
  block's output is x + Dropout(attention) + p_l with p_l = mu p_{l-1} + gamma Dropout(f_l), a dense block's
  x + Dropout(attention) + Dropout(FFN): the residual dropout acts on the FFN output before the state."""
  model = LanguageModel(config_for('heavy_ball', **{'model.dropout_rate': 0.3}))

  @jax.jit
  def traced_calls(params, tokens):
    """{block name: its residual dropouts' outputs (attention branch, FFN branch)}, {block name: (x in, x out)}."""
    dropouts, blocks = {}, {}

    def record(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      module = context.module
      if isinstance(module, nn.Dropout) and type(module.parent).__name__ == 'Block':
        dropouts.setdefault(module.parent.name, []).append(out)
      elif type(module).__name__ == 'Block' and context.method_name == '__call__':
        blocks[module.name] = (args[0], out[0])
      return out

    with nn.intercept_methods(record):
      model.hidden(params, tokens, TRAIN, rng=jax.random.key(4))
    return dropouts, blocks

  dropouts, blocks = jax.tree.map(lambda a: np.asarray(a, np.float64), traced_calls(params, tokens))
  mc = model.spec.momentum
  p = 0.0
  for i in range(model.spec.model.num_layers):
    (attn, ffn), (x_in, x_out) = dropouts[f'block_{i}'], blocks[f'block_{i}']
    if i in model.spec.moe_layers:
      p = mc.mu * p + mc.gamma * ffn
      step = p
    else:
      step = ffn
    np.testing.assert_allclose(x_out, x_in + attn + step, rtol=1e-5, atol=1e-5)
    assert np.mean(ffn == 0) > 0.1   # dropout really dropped something


def test_default_none_leaves_the_computation_untouched():
  """moe.momentum='none' (the default) traces to the very same jaxpr whatever the other momentum keys say, and
  as a config written before the keys existed; heavy ball adds operations."""
  def jaxpr(config):
    model = LanguageModel(config)
    toks = jnp.zeros((2, 12), jnp.int32)
    batch = {'decoder_input_tokens': toks, 'decoder_target_tokens': toks, 'decoder_loss_weights': jnp.ones((2, 12))}
    grad = jax.grad(lambda q: model.loss_fn(q, batch, None, EVAL)[0])
    return str(jax.make_jaxpr(grad)(model.abstract_params()))
  default = tiny_model_config()
  old = tiny_model_config()
  del old.moe['momentum_smoe']
  odd = tiny_model_config(**{'moe.momentum_mu': 0.3, 'moe.momentum_gamma': 2.0, 'moe.adam_layers': 'all'})
  base = jaxpr(default)
  assert jaxpr(old) == base and jaxpr(odd) == base
  assert jaxpr(tiny_model_config(**{'moe.momentum': 'heavy_ball'})) != base


def test_remat_keeps_gradients(tokens):
  batch = {'decoder_input_tokens': tokens, 'decoder_target_tokens': jnp.roll(tokens, -1, axis=1),
           'decoder_loss_weights': jnp.ones(tokens.shape)}
  out, params = [], None
  for remat in ('none', 'block'):   # same parameters under both modes
    model = LanguageModel(config_for('adam_first', **{'model.remat': remat, 'model.num_layers': 2,
                                                      'model.layer_plan': 'MM', 'pool.size': 2}))
    params = jax.jit(model.init_params)(jax.random.key(0)) if params is None else params
    out.append(jax.jit(jax.grad(lambda p, m=model: m.loss_fn(p, batch, None, EVAL)[0]))(params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), out[0], out[1])


# ------------------------------------------------------------------------------------ pure update functions
def test_update_functions_by_hand():
  f = jnp.asarray([[[1.0, -2.0]]])
  p = momentum_lib.heavy_ball_update(jnp.asarray([[[0.5, 0.5]]]), f, mu=0.5, gamma=2.0)
  np.testing.assert_allclose(p, [[[2.25, -3.75]]])
  m, v = momentum_lib.adam_moments(jnp.zeros_like(f), jnp.zeros_like(f), f, 0.9, 0.99)
  np.testing.assert_allclose(m, [[[0.1, -0.2]]], rtol=1e-6)
  np.testing.assert_allclose(v, [[[0.01, 0.04]]], rtol=1e-5)
  step = momentum_lib.adam_step(m, v, gamma=1.0, eps=0.0)
  np.testing.assert_allclose(step, [[[1.0, -1.0]]], rtol=1e-5)   # the first Adam step is sign-like
  rules = momentum_lib.layer_rules(dataclasses.replace(momentum_lib.MomentumConfig.off(), kind='adam', adam_layers='first'), 3)
  assert [(r.step, r.advance_heavy_ball, r.advance_adam) for r in rules] == [
      ('adam', True, True), ('heavy_ball', True, False), ('heavy_ball', True, False)]
  assert momentum_lib.layer_rules(momentum_lib.MomentumConfig.off(), 3) == ()
  state = momentum_lib.init_state(dataclasses.replace(momentum_lib.MomentumConfig.off(), kind='adam', adam_layers='all'), 2, (1, 1, 2))
  assert state.p_BLD is None and state.m_BLD.shape == (1, 1, 2) and state.v_BLD.dtype == jnp.float32


# ---------------------------------------------------------------------------------- causality, decoding, scoring
@pytest.mark.parametrize('setting', ['heavy_ball', 'adam_first'])
def test_causal(setting):
  assert_causal(config_for(setting, **{'moe.capacity_factor_eval': 0.5}))


def _scorer_config(setting: str):
  """tests/test_scorer.py's tiny model (V 300, L 32, 2 MoE layers, eval capacity factor 0.5: tokens are dropped)."""
  from test_scorer import tiny   # pylint: disable=g-import-not-at-top
  return tiny(**{**SETTINGS[setting], 'pool.size': 2, 'pool.mixing': 'fixed'})


@pytest.mark.parametrize('setting', ['adam_first'])   # an Adam layer, then a heavy-ball layer
def test_kv_cache_decoding_equals_naive_loop_and_scores_match(setting):
  from test_decoding import naive_generate   # pylint: disable=g-import-not-at-top
  from test_scorer import V, reference_loglikelihood   # pylint: disable=g-import-not-at-top
  model = LanguageModel(_scorer_config(setting))
  params = jax.jit(model.init_params)(jax.random.key(1))
  logits_fn = jax.jit(lambda p, t: model.logits(p, t, sequence_routing=True))
  rng = np.random.default_rng(0)
  prompts = [[int(t) for t in rng.integers(1, V, n)] for n in (4, 2, 4)]   # few prefix lengths: few compiles
  new = 5
  got = greedy_generate(model, params, prompts, max_new_tokens=new, batch_size=3)
  for prompt, generated in zip(prompts, got):
    assert generated == naive_generate(logits_fn, params, prompt, new), len(prompt)
  # Evaluation-routing scoring: the bucketed, batched scorer equals one unpadded forward pass per request.
  requests = [(prompts[i], got[i]) for i in range(len(prompts))] + [([], prompts[2]), (prompts[1], prompts[0])]
  requests.append((prompts[0] * 3, prompts[2] * 2))
  scores = LoglikelihoodScorer(model, params, batch_size=4).score(requests)
  for (context, continuation), (ll, greedy) in zip(requests, scores):
    ref_ll, ref_greedy = reference_loglikelihood(logits_fn, params, [0] + context, continuation)
    np.testing.assert_allclose(ll, ref_ll, rtol=1e-5, atol=1e-4)
    assert greedy == ref_greedy
  assert all(greedy for _, greedy in scores[:len(prompts)])   # the generations are the greedy continuations


# --------------------------------------------------------------------------------------- config and accounting
@pytest.mark.parametrize('overrides, expected', [
    ({'moe.momentum': 'nesterov'}, "moe.momentum='nesterov': must be one of 'none', 'heavy_ball', 'adam'"),
    ({'moe.momentum': 'heavy_ball', 'moe.momentum_mu': 1.0}, 'moe.momentum_mu=1.0: must lie in [0.0, 1.0)'),
    ({'moe.momentum': 'heavy_ball', 'moe.momentum_mu': -0.1}, 'moe.momentum_mu=-0.1: must lie in [0.0, 1.0)'),
    ({'moe.momentum': 'heavy_ball', 'moe.momentum_gamma': 0.0}, 'moe.momentum_gamma=0.0: must be a number > 0'),
    ({'moe.momentum': 'adam', 'moe.adam_beta1': 1.0}, 'moe.adam_beta1=1.0: must lie in [0.0, 1.0)'),
    ({'moe.momentum': 'adam', 'moe.adam_beta2': 1.5}, 'moe.adam_beta2=1.5: must lie in [0.0, 1.0)'),
    ({'moe.momentum': 'adam', 'moe.adam_eps': 0.0}, 'moe.adam_eps=0.0: must be a number > 0'),
    ({'moe.momentum': 'adam', 'moe.adam_layers': 'last'}, "moe.adam_layers='last': must be one of 'first', 'all'"),
    ({'moe.momentum': 'heavy_ball', 'model.layer_plan': 'none'}, "moe.momentum='heavy_ball': needs MoE layers"),
])
def test_validation_errors(overrides, expected):
  with pytest.raises(ValueError) as err:
    validate_config(tiny_model_config(**overrides))
  assert expected in str(err.value)


def test_momentum_keys_are_ignored_when_off():
  assert config_errors(tiny_model_config(**{'moe.momentum_mu': 5.0, 'moe.adam_eps': -1.0})) == []
  assert config_errors(tiny_model_config(**{'moe.momentum': 'adam', 'moe.adam_layers': 'all',
                                            'moe.momentum_mu': 0.0, 'moe.adam_beta1': 0.0})) == []


@pytest.mark.parametrize('name, kind', [('tiny_momentum_smoe', 'heavy_ball'), ('tiny_adam_smoe', 'adam')])
def test_configs_accounting_and_describe(name, kind):
  config = load_config_file(name)
  validate_config(config)
  assert config.moe.momentum_smoe.kind == kind and config.pool.mixing == 'fixed'
  counts = accounting.param_counts(config)
  assert counts['total'] == LanguageModel(config).param_summary()['total']
  assert counts == accounting.param_counts(load_config_file('tiny_moe'))   # no parameters added
  report = describe_lib.describe(config)
  d, num_moe = config.model.d_model, 2
  flops = {'heavy_ball': num_moe * 3 * d, 'adam': (3 + 7 + 4) * d + 3 * d}[kind]   # adam: first layer, then HB
  assert report['momentum']['elementwise_flops_per_token'] == flops and report['momentum']['params'] == 0
  text = describe_lib.format_text(report)
  assert ('MomentumSMoE: heavy-ball p = 0.7 p + 1 f' if kind == 'heavy_ball' else 'AdamSMoE (official code') in text
  assert 'momentum' not in describe_lib.describe(load_config_file('tiny_moe'))


# ------------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize('name', ['tiny_momentum_smoe', 'tiny_adam_smoe'])
def test_loss_falls(name, tmp_path):
  assert_loss_falls(shrink_for_training(load_config_file(name)), tmp_path)
