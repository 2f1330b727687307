"""The decoder LM: causality of every variant, SaMoE special cases, fused loss, scoring, parameter summary."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samoe_jax.config.defaults import get_base_config
from samoe_jax.models.losses import num_chunks, output_cross_entropy, plain_output_cross_entropy
from samoe_jax.models.model import EVAL, TRAIN, LanguageModel, token_mask

V, L = 64, 12


def tiny(**overrides):
  c = get_base_config()
  c.model.vocab_size, c.model.d_model, c.model.num_layers, c.model.num_heads, c.model.d_ff = V, 16, 4, 2, 32
  c.model.max_len = c.data.seq_len = L
  c.model.init_std = 0.3   # large weights make the routers decisive, so routing changes would show
  c.moe.num_experts, c.moe.top_k = 4, 2
  for key, value in overrides.items():
    section, name = key.split('.')
    c[section][name] = value
  return c


VARIANTS = {
    'dense': {'model.layer_plan': 'none'},
    'moe_gather_dropping': {'pool.size': 2, 'pool.mixing': 'fixed', 'moe.capacity_factor_eval': 0.5},
    'moe_einsum_dropping': {'pool.size': 2, 'pool.mixing': 'fixed', 'moe.dispatch': 'einsum',
                            'moe.capacity_factor_eval': 0.5},
    'moe_top1': {'pool.size': 2, 'pool.mixing': 'fixed', 'moe.top_k': 1, 'moe.capacity_factor_eval': 0.5},
    'samoe_layer': {'pool.size': 2, 'moe.capacity_factor_eval': 0.5},
    'samoe_expert_level': {'pool.size': 3, 'pool.granularity': 'expert', 'model.layer_plan': 'all'},
    'samoe_output_space': {'pool.size': 2, 'pool.space': 'output'},
    'tied': {'pool.size': 1, 'model.layer_plan': 'all', 'moe.capacity_factor_eval': 0.5},
    'group_smaller_than_sequence': {'pool.size': 2, 'moe.group_size': 4, 'moe.capacity_factor_eval': 0.5},
    'group_of_two_sequences': {'pool.size': 2, 'moe.group_size': 2 * L, 'moe.capacity_factor_eval': 0.5},
}


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_causality(variant):
  """Changing tokens after position t never changes the logits at positions <= t."""
  model = LanguageModel(tiny(**VARIANTS[variant]))
  params = model.init_params(jax.random.key(0))
  logits = jax.jit(model.logits)
  tokens = jax.random.randint(jax.random.key(1), (2, L), 1, V)
  base = logits(params, tokens)
  for t in (2, 7):
    changed = tokens.at[:, t + 1:].set(jax.random.randint(jax.random.key(t), (2, L - t - 1), 1, V))
    out = logits(params, changed)
    np.testing.assert_allclose(out[:, :t + 1], base[:, :t + 1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(out[:, t + 1:], base[:, t + 1:])   # the change is visible later on


def _batch(seed=1, b=2):
  tokens = jax.random.randint(jax.random.key(seed), (b, L + 1), 1, V)
  weights = jnp.ones((b, L)).at[1, -3:].set(0.0)
  return {'decoder_input_tokens': tokens[:, :-1], 'decoder_target_tokens': tokens[:, 1:],
          'decoder_loss_weights': weights}


def _hidden_and_aux(model, params):
  return model.hidden(params, _batch()['decoder_input_tokens'], EVAL)


def test_standard_moe_is_samoe_with_one_hot_mixing():
  """Learned mixing with a (numerically) one-hot alpha equals the fixed-mixing standard MoE, same pool."""
  fixed = LanguageModel(tiny(**{'pool.size': 2, 'pool.mixing': 'fixed'}))
  learned = LanguageModel(tiny(**{'pool.size': 2, 'pool.mixing': 'learned'}))
  params = fixed.init_params(jax.random.key(0))
  lparams = copy.deepcopy(learned.init_params(jax.random.key(0)))
  for name in params:   # same weights everywhere; only the mixing logits are extra
    if isinstance(params[name], dict) and 'moe' in params[name]:
      lparams[name]['moe']['router'] = params[name]['moe']['router']
  lparams['expert_pool'] = params['expert_pool']
  lparams['mixing_logits']['alpha'] = 1e4 * jax.nn.one_hot(jnp.asarray(fixed.spec.pool_entry), 2)
  h_fixed, _ = _hidden_and_aux(fixed, params)
  h_learned, _ = _hidden_and_aux(learned, lparams)
  np.testing.assert_allclose(h_fixed, h_learned, rtol=1e-5, atol=1e-5)
  assert fixed.spec.pool_entry == (0, 1)   # P = number of MoE layers, identity assignment
  for got, j in zip(fixed.materialize(params), fixed.spec.pool_entry):
    np.testing.assert_array_equal(got.w_in, params['expert_pool']['w_in'][j])


def test_pool_of_one_is_fully_tied_experts():
  learned = LanguageModel(tiny(**{'pool.size': 1, 'model.layer_plan': 'all'}))
  fixed = LanguageModel(tiny(**{'pool.size': 1, 'pool.mixing': 'fixed', 'model.layer_plan': 'all'}))
  lparams = learned.init_params(jax.random.key(0))
  assert lparams['expert_pool']['w_in'].shape[0] == 1
  np.testing.assert_allclose(learned.mixing_weights(lparams), np.ones((4, 1)))
  fparams = {k: v for k, v in lparams.items() if k != 'mixing_logits'}
  np.testing.assert_allclose(_hidden_and_aux(learned, lparams)[0], _hidden_and_aux(fixed, fparams)[0],
                             rtol=1e-6, atol=1e-6)
  experts = learned.materialize(lparams)
  for ex in experts:   # every layer's effective experts are the one shared set
    np.testing.assert_allclose(ex.w_out, lparams['expert_pool']['w_out'][0], rtol=1e-6)


def test_one_hot_init_and_uniform_init():
  uniform = LanguageModel(tiny(**{'pool.size': 2}))
  np.testing.assert_allclose(uniform.mixing_weights(uniform.init_params(jax.random.key(0))), 0.5)
  one_hot = LanguageModel(tiny(**{'pool.size': 2, 'pool.init': 'one_hot', 'pool.one_hot_scale': 3.0}))
  w = one_hot.mixing_weights(one_hot.init_params(jax.random.key(0)))
  hi = np.exp(3.0) / (np.exp(3.0) + 1)
  np.testing.assert_allclose(w, [[hi, 1 - hi], [1 - hi, hi]], rtol=1e-6)


def test_fused_cross_entropy_matches_plain():
  t, d, v = 1536, 8, 50
  h = jax.random.normal(jax.random.key(0), (t, d))
  emb = jax.random.normal(jax.random.key(1), (v, d))
  targets = jax.random.randint(jax.random.key(2), (t,), 0, v)
  weights = (jax.random.uniform(jax.random.key(3), (t,)) > 0.3).astype(jnp.float32)
  assert num_chunks(t) == 3
  fused = output_cross_entropy(h, emb, targets, weights)
  plain = plain_output_cross_entropy(h, emb, targets, weights)
  np.testing.assert_allclose(fused, plain, rtol=1e-5)
  g_fused = jax.grad(lambda a, b: 2.0 * output_cross_entropy(a, b, targets, weights)[0], (0, 1))(h, emb)
  g_plain = jax.grad(lambda a, b: 2.0 * plain_output_cross_entropy(a, b, targets, weights)[0], (0, 1))(h, emb)
  for a, b in zip(g_fused, g_plain):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_loss_and_score_batch_agree_and_ignore_padding():
  model = LanguageModel(tiny(**{'pool.size': 2}))
  params = model.init_params(jax.random.key(0))
  batch = _batch()
  loss, metrics = model.loss_fn(params, batch, None, EVAL)
  scores = model.score_batch(params, batch)
  np.testing.assert_allclose(-jnp.sum(scores) / jnp.sum(batch['decoder_loss_weights']),
                             metrics['cross_entropy'], rtol=1e-5)
  assert float(metrics['num_tokens']) == 2 * L - 3
  np.testing.assert_allclose(loss, metrics['cross_entropy'] + metrics['aux_loss'], rtol=1e-6)
  np.testing.assert_allclose(metrics['aux_loss'], 0.01 * metrics['moe/lb_loss'] + 0.001 * metrics['moe/z_loss'],
                             rtol=1e-6)
  # Changing a padded target changes nothing.
  other = dict(batch, decoder_target_tokens=batch['decoder_target_tokens'].at[1, -1].set(5))
  np.testing.assert_allclose(model.loss_fn(params, other, None, EVAL)[0], loss)
  assert metrics['pool/mixing_weights'].shape == (2, 2)
  assert metrics['moe/layer1/expert_load'].shape == (4,)


def test_token_mask_marks_start_and_real_tokens():
  tokens = jnp.asarray([[0, 5, 6, 0, 0]])
  np.testing.assert_array_equal(token_mask(tokens), [[True, True, True, False, False]])


def test_param_summary_by_hand():
  model = LanguageModel(tiny(**{'pool.size': 3}))
  s = model.param_summary()
  d, f, e, layers = 16, 32, 4, 4
  per_expert = d * f + f + f * d + d
  attention = d * 3 * d + 3 * d + d * d + d
  norms = 2 * 2 * d
  dense_ffn = d * f + f + f * d + d
  non_expert = V * d + L * d + layers * (attention + norms) + 2 * dense_ffn + 2 * d
  assert s['params_per_expert'] == per_expert
  assert s['expert_pool'] == 3 * e * per_expert
  assert s['mixing_logits'] == 2 * 3
  assert s['routers'] == 2 * d * e
  assert s['non_expert'] == non_expert
  assert s['total'] == non_expert + 3 * e * per_expert + 6 + 2 * d * e
  assert s['materialized'] == non_expert + 2 * d * e + 2 * e * per_expert
  assert s['active_per_token'] == non_expert + 2 * d * e + 2 * 2 * per_expert
  params = model.init_params(jax.random.key(0))
  assert sum(x.size for x in jax.tree.leaves(params)) == s['total']


@pytest.mark.parametrize('dispatch', ['gather', 'einsum'])
def test_bfloat16_compute_matches_float32(dispatch):
  """The paper-scale configs compute in bfloat16 (parameters, router and loss stay float32)."""
  f32 = LanguageModel(tiny(**{'pool.size': 2, 'moe.dispatch': dispatch}))
  bf16 = LanguageModel(tiny(**{'pool.size': 2, 'moe.dispatch': dispatch, 'model.dtype': 'bfloat16'}))
  params = f32.init_params(jax.random.key(0))
  batch = _batch()
  loss32, _ = f32.loss_fn(params, batch, None, TRAIN)
  (loss16, metrics16), grads16 = jax.value_and_grad(bf16.loss_fn, has_aux=True)(params, batch, None, TRAIN)
  assert jax.tree.leaves(grads16)[0].dtype == jnp.float32
  np.testing.assert_allclose(loss16, loss32, rtol=2e-2)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads16))
  assert float(metrics16['moe/dropped_fraction']) >= 0.0
