"""The MoE layer's fast paths against the plain-loop reference: outputs and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samoe_jax.layers.capacity import Capacity
from samoe_jax.layers.experts import ExpertWeights, LayerExperts
from samoe_jax.layers.routing_strategies import TokenChoice
from samoe_jax.layers.pool import ExpertPool, mix_all_layers, mix_weight_space, mixing_weights
from samoe_jax.layers.moe import MoeFFN
from samoe_jax.layers.reference import reference_mix, reference_moe

B, L, D, F, E, P = 2, 8, 8, 16, 4, 3


def _setup(dispatch='gather', mixing='fixed', top_k=2, capacity_factor=float(E), granularity='layer',
           space='weight'):
  """(layer, variables, pool, alpha, x, mask). alpha: random mixing logits ([P] or [E, P]), None when fixed."""
  del mixing, space
  x = jax.random.normal(jax.random.key(0), (B, L, D))
  mask = jnp.ones((B, L), bool)
  pool_mod = ExpertPool(P, E, D, F, 0.5, 0.5)
  pool = ExpertWeights(**nn.meta.unbox(pool_mod.init(jax.random.key(1)))['params'])
  # Non-zero biases so that they are tested too.
  pool = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(7), a.shape), pool)
  layer = MoeFFN(TokenChoice.with_defaults(E, top_k),
                 Capacity(group_size=L, capacity_factor_train=capacity_factor, capacity_factor_eval=capacity_factor,
                          min_capacity=0, capacity_formula='deepspeed'), dispatch=dispatch, init_std=0.5)
  variables = nn.meta.unbox(layer.init(jax.random.key(2), x, pool.entry(0), mask, train=True))
  alpha = jax.random.normal(jax.random.key(3), (P,) if granularity == 'layer' else (E, P))
  return layer, variables, pool, alpha, x, mask


def _fast(layer, variables, pool, alpha, x, mask, *, mixing, space='weight', pool_index=1, train=True):
  """The model's path: fixed mixing selects a pool entry; learned mixing mixes in weight or output space."""
  if mixing == 'fixed':
    return layer.apply(variables, x, pool.entry(pool_index), mask, train=train)
  weights = mixing_weights(alpha, 0.7)
  if space == 'weight':
    return layer.apply(variables, x, mix_weight_space(pool, weights), mask, train=train)
  return layer.apply(variables, x, LayerExperts(pool, weights), mask, train=train)


def _reference(variables, pool, alpha, x, *, mixing, top_k, pool_index=1, space='weight'):
  router = variables['params']['router']['kernel']
  if mixing == 'fixed':
    experts_list, weights = [pool.entry(pool_index)], [1.0]
  elif space == 'weight':
    experts_list, weights = [reference_mix(pool, alpha, 0.7)], [1.0]
  else:
    w = jax.nn.softmax(alpha / 0.7)
    experts_list, weights = [pool.entry(j) for j in range(P)], [w[j] for j in range(P)]
  x_TD = x.reshape(B * L, D)
  y = sum(w * reference_moe(x_TD, router, ex, top_k) for w, ex in zip(weights, experts_list))
  return y.reshape(B, L, D)


CASES = [
    dict(dispatch='gather', mixing='fixed', top_k=2),
    dict(dispatch='einsum', mixing='fixed', top_k=2),
    dict(dispatch='gather', mixing='fixed', top_k=1),
    dict(dispatch='einsum', mixing='learned', top_k=1),
    dict(dispatch='gather', mixing='learned', top_k=2),
    dict(dispatch='gather', mixing='learned', top_k=2, space='output'),
]


@pytest.mark.parametrize('case', CASES, ids=lambda c: '-'.join(str(v) for v in c.values()))
def test_fast_path_matches_reference_outputs_and_gradients(case):
  layer, variables, pool, alpha, x, mask = _setup(**case)
  mixing, space = case['mixing'], case.get('space', 'weight')

  def fast(variables, pool, alpha, x):
    return _fast(layer, variables, pool, alpha, x, mask, mixing=mixing, space=space)[0]

  def ref(variables, pool, alpha, x):
    return _reference(variables, pool, alpha, x, mixing=mixing, top_k=case['top_k'], space=space)

  y_fast, y_ref = fast(variables, pool, alpha, x), ref(variables, pool, alpha, x)
  np.testing.assert_allclose(y_fast, y_ref, rtol=2e-5, atol=2e-5)
  _, aux = _fast(layer, variables, pool, alpha, x, mask, mixing=mixing, space=space)
  assert float(aux['dropped_fraction']) == 0.0

  probe = jax.random.normal(jax.random.key(5), y_ref.shape)
  loss = lambda f: (lambda *a: jnp.sum(f(*a) * probe))
  g_fast = jax.grad(loss(fast), argnums=(0, 1, 2, 3))(variables, pool, alpha, x)
  g_ref = jax.grad(loss(ref), argnums=(0, 1, 2, 3))(variables, pool, alpha, x)
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  if mixing == 'learned':
    assert float(jnp.max(jnp.abs(g_fast[2]))) > 0   # the mixing logits get a gradient


def test_expert_level_mixing_matches_reference():
  layer, variables, pool, alpha, x, mask = _setup(mixing='learned', granularity='expert')
  assert alpha.shape == (E, P)
  y = _fast(layer, variables, pool, alpha, x, mask, mixing='learned')[0]
  experts = reference_mix(pool, alpha, 0.7)
  y_ref = reference_moe(x.reshape(B * L, D), variables['params']['router']['kernel'], experts, 2)
  np.testing.assert_allclose(y, y_ref.reshape(B, L, D), rtol=2e-5, atol=2e-5)


def test_all_layer_mixing_equals_per_layer_mixing():
  _, _, pool, _, _, _ = _setup()
  for shape in ((5, P), (5, E, P)):
    weights = jax.nn.softmax(jax.random.normal(jax.random.key(4), shape), axis=-1)
    stacked = mix_all_layers(pool, weights)
    for i in range(shape[0]):
      for a, b in zip(jax.tree.leaves(stacked[i]), jax.tree.leaves(reference_mix(pool, jnp.log(weights[i]), 1.0))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)



@pytest.mark.parametrize('shape', [(5, P), (5, E, P)], ids=['layer', 'expert'])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_all_layer_mixing_gradients_equal_the_loop_reference(shape, dtype):
  """mix_all_layers' own VJP (the mixing weights' gradient as a two-stage reduction, layers/pool.py) equals
  autodiff of the plain loop sum_j w_j W_j: gradients wrt every pool array and the mixing logits, per layer."""
  _, _, pool, _, _, _ = _setup()
  pool = pool.astype(dtype)
  alpha = jax.random.normal(jax.random.key(4), shape)
  cotangents = [jax.tree.map(lambda a, i=i: jax.random.normal(jax.random.key(10 + i), a.shape[1:], dtype), pool)
                for i in range(shape[0])]

  def pair(mixed):
    return sum(jnp.vdot(a, c).astype(jnp.float32) for m, cot in zip(mixed, cotangents)
               for a, c in zip(jax.tree.leaves(m), jax.tree.leaves(cot)))

  def fast(pool, alpha):
    return pair(mix_all_layers(pool, mixing_weights(alpha, 0.7)))

  def loop(pool, alpha):
    return pair([reference_mix(pool, alpha[i], 0.7) for i in range(shape[0])])

  got, want = jax.grad(fast, (0, 1))(pool, alpha), jax.grad(loop, (0, 1))(pool, alpha)
  tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)
  for name, a, b in zip(('w_in', 'b_in', 'w_out', 'b_out'), jax.tree.leaves(got[0]), jax.tree.leaves(want[0])):
    assert a.dtype == dtype, name
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), err_msg=name, **tol)
  assert got[1].shape == shape and got[1].dtype == jnp.float32
  np.testing.assert_allclose(got[1], want[1], err_msg='alpha', **tol)

def test_gather_and_einsum_agree_when_dropping():
  outs = {}
  for dispatch in ('gather', 'einsum'):
    layer, variables, pool, _, x, mask = _setup(dispatch=dispatch, capacity_factor=0.5)
    y, aux = layer.apply(variables, x, pool.entry(1), mask, train=True)
    g = jax.grad(lambda v: jnp.sum(layer.apply(v, x, pool.entry(1), mask, train=True)[0] ** 2))(variables)
    outs[dispatch] = (y, aux['dropped_fraction'], g)
  assert float(outs['gather'][1]) > 0.2
  np.testing.assert_allclose(outs['gather'][0], outs['einsum'][0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(outs['gather'][1], outs['einsum'][1])
  for a, b in zip(jax.tree.leaves(outs['gather'][2]), jax.tree.leaves(outs['einsum'][2])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_fully_dropped_token_outputs_zero():
  """A token none of whose choices got a slot gets y = 0: only the block's residual carries it."""
  layer, variables, pool, _, x, mask = _setup(top_k=1, capacity_factor=0.01)   # capacity = 1 slot per expert
  y, _ = layer.apply(variables, x, pool.entry(1), mask, train=True)
  probs = jax.nn.softmax(x.reshape(B, L, D) @ variables['params']['router']['kernel'], axis=-1)
  first = np.asarray(jnp.argmax(probs, axis=-1))
  for b in range(B):
    seen = set()
    for t in range(L):
      if first[b, t] in seen:
        np.testing.assert_array_equal(np.asarray(y[b, t]), 0.0)
      else:
        assert np.any(np.asarray(y[b, t]) != 0.0)
      seen.add(first[b, t])


def test_padding_tokens_take_no_capacity():
  layer, variables, pool, _, x, _ = _setup(top_k=1, capacity_factor=0.01)
  pool = pool.entry(1)
  mask = jnp.ones((B, L), bool).at[:, 0].set(False)
  y_masked, _ = layer.apply(variables, x, pool, mask, train=True)
  np.testing.assert_array_equal(np.asarray(y_masked[:, 0]), 0.0)
  # Token 0 no longer occupies its expert's single slot, so the next token choosing that expert is served.
  y_full, _ = layer.apply(variables, x, pool, jnp.ones((B, L), bool), train=True)
  assert not np.allclose(y_masked[:, 1:], y_full[:, 1:])
