"""The optimizer: weight-decay mask from logical axes, warm-up + cosine schedule, state shardings."""

from __future__ import annotations

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from samoe_jax.models.model import LanguageModel
from samoe_jax.sharding.mesh import make_mesh
from samoe_jax.sharding.partitioner import Partitioner
from samoe_jax.training import state as state_lib
from samoe_jax.training.optimizer import decay_mask, is_decayed, make_optimizer, make_schedule

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(**overrides):
  spec = importlib.util.spec_from_file_location('configs_test_tiny', ROOT / 'configs' / 'test_tiny.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in overrides.items():
    section, name = key.split('.')
    config[section][name] = value
  return config


def flat(tree):
  return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize('granularity', ['layer', 'expert'])
def test_decay_mask_covers_matrices_only(granularity):
  model = LanguageModel(tiny_config(**{'pool.granularity': granularity}))
  params = model.abstract_params()
  axes = model.param_logical_axes()
  mask = flat(decay_mask(params, axes))
  shapes = flat(params)
  names = {jax.tree_util.keystr(k): tuple(v) for k, v in jax.tree_util.tree_flatten_with_path(
      axes, is_leaf=lambda x: isinstance(x, P))[0]}
  assert set(mask) == set(shapes) == set(names)
  for path, decayed in mask.items():
    shape, logical = shapes[path].shape, names[path]
    if len(shape) == 1:
      assert not decayed, f'1-D parameter {path} {shape} must not decay'
    if 'mixing' in logical:
      assert not decayed, f'mixing logits {path} {shape} must not decay'
  mixing = [p for p in names if 'mixing' in names[p]]
  # Stacked per-MoE-layer logits: [L_moe, P] or [L_moe, E, P].
  assert mixing and all(len(shapes[p].shape) == (3 if granularity == 'expert' else 2) for p in mixing)
  # Pool biases are rank 3 but still biases; the pool's matrices, attention, FFN and embeddings decay.
  assert not mask["['expert_pool']['b_in']"] and not mask["['expert_pool']['b_out']"]
  assert mask["['expert_pool']['w_in']"] and mask["['expert_pool']['w_out']"]
  assert not mask["['block_0']['attention']['qkv_bias']"]
  decayed = {p for p, d in mask.items() if d}
  assert "['token_embedding']" in decayed and "['block_0']['attention']['qkv_kernel']" in decayed
  assert "['block_1']['moe']['router']['kernel']" in decayed


def test_is_decayed_without_axes_uses_rank():
  assert is_decayed(None, 2) and not is_decayed(None, 1)
  assert not is_decayed(('moe_layer', 'mixing'), 2)
  assert not is_decayed(('pool', 'expert', 'embed'), 3)


def test_weight_decay_touches_masked_params_only():
  config = tiny_config(**{'train.warmup_steps': 0, 'train.weight_decay': 0.5})
  params = {'w_in': jnp.ones((4, 3)), 'b_in': jnp.ones((3,)), 'alpha': jnp.ones((4, 2)),
            'pool_b': jnp.ones((2, 4, 3)), 'pool_w': jnp.ones((2, 4, 4, 3))}
  axes = {'w_in': P('embed', 'mlp'), 'b_in': P('mlp'), 'alpha': P('expert', 'mixing'),
          'pool_b': P('pool', 'expert', 'expert_mlp'), 'pool_w': P('pool', 'expert', 'embed', 'expert_mlp')}
  optimizer, _ = make_optimizer(config.train, params, axes)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(optimizer.update)(zero_grads, optimizer.init(params), params)
  moved = {k: bool(jnp.any(u != 0)) for k, u in updates.items()}
  assert moved == {'w_in': True, 'b_in': False, 'alpha': False, 'pool_b': False, 'pool_w': True}


def _adam_state(opt_state):
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(x, 'mu')) if hasattr(s, 'mu')]
  assert len(found) == 1
  return found[0]


def test_bfloat16_moments_are_stored_in_bfloat16_and_the_steps_track_float32():
  """train.moment_dtype='bfloat16': mu and nu are bfloat16 arrays (count stays int32), the state tree is the one
  of float32 moments, and five AdamW steps move the parameters like float32 moments do (within 2 % of the
  update)."""
  config = tiny_config(**{'train.warmup_steps': 0})
  model = LanguageModel(config)
  axes = model.param_logical_axes()
  params = model.init_params(jax.random.key(0))
  keys = jax.random.split(jax.random.key(1), 5)
  grads = [jax.tree.map(lambda p, k=k: 1e-2 * jax.random.normal(k, p.shape), params) for k in keys]

  def run(dtype):
    config.train.moment_dtype = dtype
    optimizer, _ = make_optimizer(config.train, params, axes)
    update = jax.jit(optimizer.update)
    state, p = optimizer.init(params), params
    for g in grads:
      updates, state = update(g, state, p)
      p = optax.apply_updates(p, updates)
    return p, state

  p32, s32 = run('float32')
  p16, s16 = run('bfloat16')
  adam = _adam_state(s16)
  assert {x.dtype for x in jax.tree.leaves((adam.mu, adam.nu))} == {jnp.dtype(jnp.bfloat16)}
  assert adam.count.dtype == jnp.int32 and int(adam.count) == 5
  assert {x.dtype for x in jax.tree.leaves((_adam_state(s32).mu, _adam_state(s32).nu))} == {jnp.dtype(jnp.float32)}
  assert jax.tree.structure(s16) == jax.tree.structure(s32)
  moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(p32), jax.tree.leaves(params)))
  differ = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(p16), jax.tree.leaves(p32)))
  assert 0 < differ < 0.02 * moved


def test_schedule_warmup_peak_and_final_value():
  config = tiny_config(**{'train.steps': 100, 'train.warmup_steps': 10, 'train.learning_rate': 1e-3,
                               'train.min_lr_ratio': 0.1})
  schedule = make_schedule(config.train)
  lr = lambda step: float(schedule(step - 1))  # the update producing 1-based step `step`
  np.testing.assert_allclose(lr(1), 1e-4, rtol=1e-6)
  np.testing.assert_allclose(lr(10), 1e-3, rtol=1e-6)              # end of warm-up: the peak
  np.testing.assert_allclose(lr(55), 1e-4 + 0.9e-3 * 0.5, rtol=1e-5)  # half-way through the cosine
  np.testing.assert_allclose(lr(100), 1e-4, rtol=1e-6)             # last step: learning_rate * min_lr_ratio
  np.testing.assert_allclose(lr(150), 1e-4, rtol=1e-6)             # and it stays there
  values = [lr(s) for s in range(10, 101)]
  assert all(a >= b for a, b in zip(values, values[1:]))
  config.train.decay_steps = 200                                    # a longer horizon than train.steps
  np.testing.assert_allclose(float(make_schedule(config.train)(199)), 1e-4, rtol=1e-6)
  assert float(make_schedule(config.train)(99)) > 2e-4


def test_optimizer_state_inherits_param_shardings():
  config = tiny_config()
  model = LanguageModel(config)
  axes = model.param_logical_axes()
  optimizer, _ = make_optimizer(config.train, model.abstract_params(), axes)
  abstract = state_lib.abstract_state(model, optimizer)
  logical = state_lib.state_logical_axes(optimizer, abstract, axes)
  is_spec = lambda x: isinstance(x, P)
  adam = [s for s in jax.tree.leaves(logical.opt_state, is_leaf=lambda x: hasattr(x, 'mu'))
          if hasattr(s, 'mu')]
  assert len(adam) == 1
  for moment in (adam[0].mu, adam[0].nu):
    assert jax.tree.leaves(moment, is_leaf=is_spec) == jax.tree.leaves(axes, is_leaf=is_spec)
  assert adam[0].mu['expert_pool']['w_in'] == P('pool', 'expert', 'embed', 'expert_mlp')
  shardings = state_lib.state_shardings(Partitioner(make_mesh(config.mesh)), optimizer, abstract, axes)
  assert shardings.step.spec == P()
  assert jax.tree.structure(shardings) == jax.tree.structure(abstract)
