"""Gradient-flow statistics (train.grad_stats_every, samoe_jax/training/grad_stats.py) against a direct computation.

For a dense model, a standard MoE (fixed one-hot mixing, P = L_moe), a SaMoE (learned pool) and a two-group
Pyramid-MoE, one jitted train step with statistics is compared with: jax.grad of the model's loss and norms by
hand over hand-listed parameter paths; the applied update (new - old parameters); the gradient with respect to
each MoE layer's effective experts computed through the model's `experts=` override (not the probes); and the
chain rule grad pool_j = sum_l softmax(alpha_l)_j dL/dW^(l), which the probes measure rather than assume. With
train.microbatches = 2 the statistics equal one big batch's. The trainer writes 'grad_stats' records only at
steps s % N == 0 and keeps them out of the averaged train records.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from samoe_jax.config.defaults import get_base_config
from samoe_jax.config.presets import set_sharing
from samoe_jax.training.config_checks import validate_config
from samoe_jax.models.model import TRAIN, LanguageModel, token_cross_entropy
from samoe_jax.training import grad_stats as grad_stats_lib
from samoe_jax.training import optimizer as optimizer_lib
from samoe_jax.training import state as state_lib
from samoe_jax.training.step import train_step
from samoe_jax.training.step_options import StepOptions

B, L = 4, 8
FAST = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}
RTOL = 2e-5


def tiny(kind: str, **overrides):
  """3 blocks (MoE on 0 and 2 unless dense: 4 experts top-2), d_model 16, batch 4 x 8, byte vocabulary."""
  c = get_base_config()
  c.model.vocab_size, c.model.d_model, c.model.num_layers, c.model.num_heads, c.model.d_ff = 264, 16, 3, 2, 32
  c.model.layer_plan, c.model.init_std = 'MDM', 0.2
  c.model.max_len = c.data.seq_len = L
  c.data.batch_size, c.data.vocabulary = B, 'byte'
  c.moe.num_experts, c.moe.top_k = 4, 2
  c.train.warmup_steps, c.train.steps = 1, 10
  # The Switch balancing loss is the one term gradient accumulation does not reproduce exactly (accumulate.py):
  # off, so the microbatch test can compare with the same one-batch step; the z-loss stays on.
  c.moe.lb_loss_coef = 0.0
  if kind == 'pyramid':
    c.moe.experts_per_layer = '4,8'
    set_sharing(c, 'moe', num_moe_layers=2)
  else:
    set_sharing(c, kind, num_moe_layers=2)
  c.update_from_flattened_dict(overrides)
  validate_config(c)
  return c


def make_batch() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 64, size=(B, L + 1), dtype=np.int32)
  weights = np.ones((B, L), np.float32)
  weights[1, 5:] = 0.0
  inputs = tokens[:, :-1].copy()
  inputs[1, 6:] = 0
  return {'decoder_input_tokens': inputs, 'decoder_target_tokens': tokens[:, 1:], 'decoder_loss_weights': weights}


def stats_step(config, microbatches: int = 1):
  """(model, old state, new state, host metrics) of one jitted train step with statistics, at step 3."""
  model = LanguageModel(config)
  optimizer, schedule = optimizer_lib.make_optimizer(config.train, model.abstract_params(),
                                                     model.param_logical_axes())
  state = jax.jit(lambda r: state_lib.init_state(model, optimizer, r).replace(step=jnp.asarray(3, jnp.int32)),
                  compiler_options=FAST)(jax.random.key(0))
  stats = grad_stats_lib.GradStats(model)
  fn = jax.jit(functools.partial(train_step, StepOptions(model, optimizer, schedule, microbatches, grad_stats=stats)),
               compiler_options=FAST)
  new_state, metrics = fn(state, make_batch(), jax.random.key(1))
  return model, state, new_state, jax.device_get(metrics)


@pytest.fixture(scope='module')
def steps():
  """One statistics step per kind (compiled once each, shared by the tests)."""
  return {kind: stats_step(tiny(kind)) for kind in ('dense', 'moe', 'samoe', 'tied', 'pyramid')}


@pytest.fixture(scope='module')
def grads(steps):  # pylint: disable=redefined-outer-name
  """jax.grad of the model's training loss at each step's dropout key (no probes), per kind."""
  return {kind: direct_grads(model, old) for kind, (model, old, _, _) in steps.items()}


def _sq(tree) -> float:
  return float(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree)))


def _count(tree) -> int:
  return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def hand_parts(params, kind: str) -> dict[str, list]:
  """Part name -> the parameter subtrees it holds, listed by hand for the tiny models (blocks 0, 2 MoE)."""
  parts = {'embedding': [params['token_embedding'], params['position_embedding']],
           'norms': [params['final_norm']] + [params[f'block_{b}'][n] for b in range(3)
                                              for n in ('attention_norm', 'ffn_norm')]}
  for b in range(3):
    parts[f'block{b}/attention'] = [params[f'block_{b}']['attention']]
  if kind == 'dense':
    for b in range(3):
      parts[f'block{b}/ffn'] = [params[f'block_{b}']['ffn']]
  else:
    parts['block1/ffn'] = [params['block_1']['ffn']]
    parts['block0/router'] = [params['block_0']['moe']]
    parts['block2/router'] = [params['block_2']['moe']]
  if kind == 'samoe':
    parts['mixing'] = [params['mixing_logits']]
  return parts


def direct_grads(model, state):
  """jax.grad of the model's training loss at the step's dropout key (no probes)."""
  key = jax.random.fold_in(jax.random.key(1), state.step)
  grad_fn = jax.jit(jax.grad(lambda p: model.loss_fn(p, make_batch(), key, TRAIN)[0]), compiler_options=FAST)
  return jax.device_get(grad_fn(state.params))


def layer_expert_grads(model, params):
  """dL/dW^(l) per MoE block through the model's `experts=` override: the loss of model.loss_fn rebuilt from
  the hidden states (cross-entropy + lb_loss_coef sum L_bal + z_loss_coef sum L_z), differentiated with respect
  to the mixed experts themselves."""
  batch = make_batch()
  spec = model.spec

  def loss(experts):
    h_BLD, auxes = model.hidden(params, batch['decoder_input_tokens'], TRAIN, experts=experts)
    ce_BL = token_cross_entropy(model.project(params, h_BLD), batch['decoder_target_tokens'])
    w_BL = batch['decoder_loss_weights']
    aux = sum(spec.moe.lb_loss_coef * a['lb_loss'] + spec.moe.z_loss_coef * a['z_loss'] for a in auxes)
    return jnp.sum(ce_BL * w_BL) / jnp.sum(w_BL) + aux

  experts = model.layer_experts(params)
  value, grads = jax.jit(jax.value_and_grad(loss), compiler_options=FAST)(experts)
  return float(value), {b: jax.device_get(g.experts) for b, g in grads.items()}


def per_expert(tree) -> np.ndarray:
  """Sum of squares per expert of ExpertWeights with leading axis E -> [E]."""
  return sum(np.sum(np.square(np.asarray(x, np.float64)).reshape(x.shape[0], -1), axis=1)
             for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('kind', ['dense', 'moe', 'samoe'])
def test_part_statistics_equal_direct_computation(steps, grads, kind):
  model, old, new, metrics = steps[kind]
  grads = grads[kind]
  g_parts, w_parts, n_parts = (hand_parts(t, kind) for t in (grads, old.params, new.params))
  for part, subtrees in g_parts.items():
    norm = math.sqrt(_sq(subtrees))
    np.testing.assert_allclose(metrics[f'grad/{part}/norm'], norm, rtol=RTOL, err_msg=part)
    np.testing.assert_allclose(metrics[f'grad/{part}/rms'], norm / math.sqrt(_count(subtrees)), rtol=RTOL,
                               err_msg=part)
    update = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64), n_parts[part],
                          w_parts[part])
    if _sq(w_parts[part]) == 0:   # mixing logits start at 0: the ratio is undefined before their first update
      assert part == 'mixing' and np.isnan(metrics[f'grad/{part}/update_ratio'])
      continue
    np.testing.assert_allclose(metrics[f'grad/{part}/update_ratio'], math.sqrt(_sq(update) / _sq(w_parts[part])),
                               rtol=1e-4, err_msg=part)
  np.testing.assert_allclose(metrics['grad/total/norm'], math.sqrt(_sq(grads)), rtol=RTOL)
  np.testing.assert_allclose(metrics['grad/total/norm'], metrics['grad_norm'], rtol=RTOL)
  # every part but the pool is listed: the parts' squared norms add up to the total's
  listed = sum(float(metrics[f'grad/{p}/norm']) ** 2 for p in g_parts)
  pool = float(np.sum(np.square(metrics['grad/pool/entry_norm']))) if kind != 'dense' else 0.0
  np.testing.assert_allclose(listed + pool, float(metrics['grad/total/norm']) ** 2, rtol=1e-4)
  if kind == 'dense':
    assert not any('experts' in k or 'pool' in k for k in metrics)


@pytest.mark.parametrize('kind', ['moe', 'samoe', 'tied'])
def test_expert_statistics_equal_direct_computation(steps, grads, kind):
  """Per expert of every layer's effective experts, and per pool entry and expert, against direct numbers."""
  model, old, new, metrics = steps[kind]
  value, want_layer = layer_expert_grads(model, old.params)
  key = jax.random.fold_in(jax.random.key(1), old.step)
  np.testing.assert_allclose(value, float(model.loss_fn(old.params, make_batch(), key, TRAIN)[0]), rtol=1e-6)
  old_mixed, new_mixed = model.materialize(old.params), model.materialize(new.params)
  for i, block in enumerate(model.spec.moe_layers):
    name = f'grad/block{block}/experts'
    g_sq = per_expert(want_layer[block])
    count = _count(want_layer[block]) // 4
    np.testing.assert_allclose(metrics[f'{name}/norm'], np.sqrt(g_sq), rtol=RTOL)
    np.testing.assert_allclose(metrics[f'{name}/rms'], np.sqrt(g_sq / count), rtol=RTOL)
    update_sq = per_expert(jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                                        new_mixed[i], old_mixed[i]))
    np.testing.assert_allclose(metrics[f'{name}/update_ratio'], np.sqrt(update_sq / per_expert(old_mixed[i])),
                               rtol=1e-4)
    np.testing.assert_allclose(metrics[f'{name}/mean_rms'], np.mean(np.sqrt(g_sq / count)), rtol=RTOL)
    np.testing.assert_allclose(metrics[f'{name}/token_share'], metrics[f'moe/layer{block}/expert_load'])
    np.testing.assert_allclose(np.sum(metrics[f'{name}/token_share']), 1.0, rtol=1e-6)
  pool_g = grads[kind]['expert_pool']
  pool_sq = sum(np.sum(np.square(np.asarray(a, np.float64)).reshape(a.shape[0], a.shape[1], -1), axis=2)
                for a in jax.tree.leaves(pool_g))
  np.testing.assert_allclose(metrics['grad/pool/norm'], np.sqrt(pool_sq), rtol=RTOL)
  np.testing.assert_allclose(metrics['grad/pool/entry_norm'], np.sqrt(pool_sq.sum(axis=1)), rtol=RTOL)
  # A pool entry receives the mixing-weighted sum of its layers' gradients (measured through the layer gradients)
  weights_LP = model.mixing_weights(old.params)
  for field in ('w_in', 'b_in', 'w_out', 'b_out'):
    layer_g = np.stack([np.asarray(getattr(want_layer[b], field), np.float64) for b in model.spec.moe_layers])
    summed = np.einsum('lp,l...->p...', np.asarray(weights_LP, np.float64), layer_g)
    np.testing.assert_allclose(summed, pool_g[field], rtol=1e-4, atol=1e-7, err_msg=field)


def test_standard_moe_layer_experts_are_its_pool_entries(steps):
  """Fixed one-hot mixing: the statistics of MoE layer l's experts are those of its own pool entry l, read from
  the pool without probes; tied experts (one entry for both layers) need the probes, and each layer's gradient
  is then only part of the entry's."""
  model, _, _, metrics = steps['moe']
  assert grad_stats_lib.GradStats(model).abstract_probes == {}
  assert grad_stats_lib.own_pool_entries(model.spec) == {0: ('pool', 0), 2: ('pool', 1)}
  tied_model, _, _, tied = steps['tied']
  assert sorted(grad_stats_lib.GradStats(tied_model).abstract_probes) == ['experts_block_0', 'experts_block_2']
  assert all(tied[f'grad/block{b}/experts/mean_norm'] < tied['grad/pool/entry_norm'][0] for b in (0, 2))
  for i, block in enumerate((0, 2)):
    np.testing.assert_allclose(metrics[f'grad/block{block}/experts/norm'], metrics['grad/pool/norm'][i], rtol=RTOL)
    np.testing.assert_allclose(metrics[f'grad/block{block}/experts/update_ratio'],
                               metrics['grad/pool/update_ratio'][i], rtol=1e-4)


def test_pyramid_groups_get_their_own_pool_statistics(steps, grads):
  """Two expert counts (4 and 8): pools 'pool' [1, 4] and 'pool_e8' [1, 8]; per-layer experts of 4 and 8."""
  model, old, _, metrics = steps['pyramid']
  assert np.shape(metrics['grad/pool/norm']) == (1, 4) and np.shape(metrics['grad/pool_e8/norm']) == (1, 8)
  assert np.shape(metrics['grad/block0/experts/norm']) == (4,)
  assert np.shape(metrics['grad/block2/experts/norm']) == (8,)
  np.testing.assert_allclose(metrics['grad/pool_e8/entry_norm'], [math.sqrt(_sq(grads['pyramid']['expert_pool_e8']))],
                             rtol=RTOL)
  np.testing.assert_allclose(metrics['grad/block2/experts/norm'], metrics['grad/pool_e8/norm'][0], rtol=RTOL)


@pytest.mark.parametrize('kind', ['moe', 'samoe'])
def test_microbatches_give_the_big_batch_statistics(steps, kind):
  """M = 2 accumulates the probes' gradients like the parameters'."""
  one = steps[kind][3]
  two = stats_step(tiny(kind), microbatches=2)[3]
  keys = [k for k in one if k.startswith('grad/')]
  assert set(keys) == {k for k in two if k.startswith('grad/')}
  assert any(k.startswith('grad/block0/experts/') for k in keys)
  for key in keys:
    np.testing.assert_allclose(two[key], one[key], rtol=2e-4, atol=1e-8, err_msg=key)


def test_zero_probes_change_nothing():
  model = LanguageModel(tiny('samoe'))
  params = model.init_params(jax.random.key(0))
  probes = grad_stats_lib.GradStats(model).zero_probes()
  assert sorted(probes) == ['experts_block_0', 'experts_block_2']
  loss = jax.jit(lambda p, probes: model.loss_fn(p, make_batch(), None, TRAIN, probes=probes)[0],
                 compiler_options=FAST)
  plain, probed = loss(params, None), loss(params, probes)
  assert float(plain) == float(probed)
  assert LanguageModel(tiny('dense')).abstract_probes() == {}


@pytest.mark.parametrize('value', [-1, 2.5, True, '10'])
def test_bad_grad_stats_every_is_refused(value):
  config = tiny('moe')
  config.train = ml_collections.ConfigDict({**config.train.to_dict(), 'grad_stats_every': value})
  with pytest.raises(ValueError, match=r'train\.grad_stats_every=.*must be an integer >= 0'):
    validate_config(config)
  with pytest.raises(ValueError, match=r'train\.grad_stats_every='):
    grad_stats_lib.check_grad_stats_every(value)


def test_stats_steps():
  assert [s for s in range(1, 11) if grad_stats_lib.is_stats_step(s, 4)] == [4, 8]
  assert not any(grad_stats_lib.is_stats_step(s, 0) for s in range(1, 11))
  assert grad_stats_lib.part_name(('block_3', 'moe', 'router', 'kernel')) == 'block3/router'
  assert grad_stats_lib.part_name(('block_1', 'residual_mlp', 'w_in')) == 'block1/residual'
  assert grad_stats_lib.part_name(('shared_attention', 'qkv_kernel')) == 'shared'
  assert grad_stats_lib.pool_part('expert_pool_e64') == 'pool_e64'


def test_trainer_writes_statistics_records_at_their_steps(tmp_path):
  """train.grad_stats_every = 2 over 4 steps: 'grad_stats' records at steps 2 and 4 only, with finite norms; the
  averaged train records carry no grad/ keys."""
  from samoe_jax.training import loop  # pylint: disable=g-import-not-at-top
  from samoe_jax.training.metrics_writer import read_metrics  # pylint: disable=g-import-not-at-top
  config = tiny('samoe', **{'train.steps': 4, 'train.log_every': 1, 'train.eval_every': 0,
                            'train.checkpoint_every': 0, 'train.grad_stats_every': 2,
                            'train.async_checkpoint': False, 'data.task': 'shakespeare_tiny'})
  loop.train(config, str(tmp_path))
  records = read_metrics(str(tmp_path), 'grad_stats')
  assert [r['step'] for r in records] == [2, 4]
  for record in records:
    assert np.isfinite(record['grad/total/norm']) and record['grad/total/norm'] > 0
    assert np.shape(record['grad/pool/norm']) == (2, 4)
    assert np.shape(record['grad/block2/experts/token_share']) == (4,)
  train = read_metrics(str(tmp_path), 'train')
  assert [r['step'] for r in train] == [1, 2, 3, 4]
  assert not any(k.startswith('grad/') for r in train for k in r)
  np.testing.assert_allclose(records[0]['grad/total/norm'], train[1]['grad_norm'], rtol=1e-5)
