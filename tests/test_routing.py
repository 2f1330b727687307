"""Routing, capacity, dropping and auxiliary losses on hand-computed cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samoe_jax.layers import token_choice as r
from samoe_jax.layers.reference import reference_slots


def _logits(rows):
  return jnp.log(jnp.asarray(rows, jnp.float32))[None]   # probabilities -> logits, one group


def test_capacity_formula():
  assert r.expert_capacity(256, 8, 2, 1.25, 4) == 80          # ceil(2*256*1.25/8)
  assert r.expert_capacity(256, 8, 1, 1.0, 4) == 32
  assert r.expert_capacity(10, 8, 1, 1.0, 4) == 4             # min capacity
  assert r.expert_capacity(3, 2, 1, 10.0, 4) == 3             # never more than k*T slots
  assert r.expert_capacity(100, 3, 1, 1.0, 0) == 34


def test_top1_slots_dropping_and_gates():
  probs = [[.7, .3], [.6, .4], [.9, .1], [.2, .8]]
  out = r.route(_logits(probs), jnp.ones((1, 4), bool), r.RouteOptions(top_k=1), capacity=2)
  np.testing.assert_array_equal(out.expert_GSK[0, :, 0], [0, 0, 0, 1])
  np.testing.assert_array_equal(out.slot_GSK[0, :, 0], [0, 1, 2, 0])
  np.testing.assert_array_equal(out.kept_GSK[0, :, 0], [True, True, False, True])   # third token dropped
  np.testing.assert_allclose(out.gate_GSK[0, :, 0], [.7, .6, 0., .8], rtol=1e-6)      # top-1: not renormalised


def test_top2_first_choices_have_priority():
  # E=3, capacity 2. First choices: 0, 0, 1. Second choices: 1, 1, 0.
  probs = [[.5, .3, .2], [.6, .3, .1], [.3, .6, .1]]
  out = r.route(_logits(probs), jnp.ones((1, 3), bool), r.RouteOptions(top_k=2, priority='choice'), capacity=2)
  np.testing.assert_array_equal(out.expert_GSK[0], [[0, 1], [0, 1], [1, 0]])
  # Expert 0: first choices of tokens 0,1 take slots 0,1; token 2's second choice gets slot 2 -> dropped.
  # Expert 1: token 2's first choice takes slot 0; second choices of tokens 0,1 get slots 1, 2.
  np.testing.assert_array_equal(out.slot_GSK[0], [[0, 1], [1, 2], [0, 2]])
  np.testing.assert_array_equal(out.kept_GSK[0], [[True, True], [True, False], [True, False]])
  np.testing.assert_allclose(out.gate_GSK[0], [[.625, .375], [2 / 3, 0.], [2 / 3, 0.]], rtol=1e-5)


def test_top2_position_priority_is_causal():
  # Same routing as above; tokens in order, each with both choices: expert 0 gets t0, t1 (slots 0, 1) and t2's
  # second choice (slot 2, dropped); expert 1 gets t0's and t1's second choices (slots 0, 1), then t2's first
  # choice (slot 2, dropped): the earlier tokens keep what they had, whatever comes later.
  probs = [[.5, .3, .2], [.6, .3, .1], [.3, .6, .1]]
  out = r.route(_logits(probs), jnp.ones((1, 3), bool), r.RouteOptions(top_k=2), capacity=2)
  np.testing.assert_array_equal(out.slot_GSK[0], [[0, 0], [1, 1], [2, 2]])
  np.testing.assert_array_equal(out.kept_GSK[0], [[True, True], [True, True], [False, False]])
  with pytest.raises(ValueError, match="'bogus'"):
    r.route(_logits(probs), jnp.ones((1, 3), bool), r.RouteOptions(top_k=2, priority='bogus'), capacity=2)


def test_masked_tokens_take_no_slot():
  probs = [[.9, .1], [.8, .2], [.7, .3]]
  mask = jnp.asarray([[True, False, True]])
  out = r.route(_logits(probs), mask, r.RouteOptions(top_k=1), capacity=1)
  np.testing.assert_array_equal(out.kept_GSK[0, :, 0], [True, False, False])   # token 2 is second in line
  out = r.route(_logits(probs), mask, r.RouteOptions(top_k=1), capacity=2)
  np.testing.assert_array_equal(out.kept_GSK[0, :, 0], [True, False, True])
  np.testing.assert_array_equal(out.slot_GSK[0, :, 0], [0, 0, 1])


@pytest.mark.parametrize('priority', ['position', 'choice'])
@pytest.mark.parametrize('top_k', [1, 2, 3])
def test_slots_match_counting_reference(top_k, priority):
  rng = np.random.default_rng(top_k)
  g, s, e = 3, 17, 5
  logits = jnp.asarray(rng.normal(size=(g, s, e)), jnp.float32)
  mask = jnp.asarray(rng.random((g, s)) > 0.2)
  out = r.route(logits, mask, r.RouteOptions(top_k=top_k, priority=priority), capacity=4)
  for gi in range(g):
    expected = reference_slots(np.asarray(out.expert_GSK[gi]), np.asarray(mask[gi]), e, priority)
    got = np.where(np.asarray(mask[gi])[:, None], np.asarray(out.slot_GSK[gi]), 0)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.asarray(out.kept_GSK[gi]), (expected < 4) & np.asarray(mask[gi])[:, None])
  top = np.argsort(-np.asarray(jax.nn.softmax(logits)), axis=-1, kind='stable')[..., :top_k]
  np.testing.assert_array_equal(np.asarray(out.expert_GSK), top)


def test_load_balancing_loss_hand_computed():
  # Two tokens, E=2: p = [.8,.2] and [.4,.6]. First choices 0 and 1 -> f = [.5,.5]; P = [.6,.4].
  out = r.route(_logits([[.8, .2], [.4, .6]]), jnp.ones((1, 2), bool), r.RouteOptions(top_k=1), capacity=2)
  loss = r.load_balancing_loss(out, jnp.ones((1, 2), bool))
  np.testing.assert_allclose(loss, 2 * (.5 * .6 + .5 * .4), rtol=1e-6)   # = 1.0, balanced
  # Both tokens pick expert 0: f = [1, 0], P = [.75, .25] -> 2 * .75 = 1.5.
  out = r.route(_logits([[.8, .2], [.7, .3]]), jnp.ones((1, 2), bool), r.RouteOptions(top_k=1), capacity=2)
  np.testing.assert_allclose(r.load_balancing_loss(out, jnp.ones((1, 2), bool)), 1.5, rtol=1e-6)
  # A masked token does not count: only token 0 (p=[.8,.2], first choice 0) -> 2 * .8 = 1.6.
  np.testing.assert_allclose(r.load_balancing_loss(out, jnp.asarray([[True, False]])), 1.6, rtol=1e-6)


def test_router_z_loss_hand_computed():
  logits = jnp.asarray([[[0., 0.], [1., 2.]]])
  out = r.route(logits, jnp.ones((1, 2), bool), r.RouteOptions(top_k=1), capacity=2)
  z0, z1 = np.log(2.0), np.log(np.e + np.e ** 2)
  np.testing.assert_allclose(r.router_z_loss(out, jnp.ones((1, 2), bool)), (z0 ** 2 + z1 ** 2) / 2, rtol=1e-6)


def test_routing_metrics_hand_computed():
  probs = [[.7, .3], [.6, .4], [.9, .1], [.2, .8]]
  out = r.route(_logits(probs), jnp.ones((1, 4), bool), r.RouteOptions(top_k=1), capacity=2)
  m = r.routing_metrics(out, jnp.ones((1, 4), bool))
  np.testing.assert_allclose(m['expert_load'], [.75, .25])
  np.testing.assert_allclose(m['dropped_fraction'], .25)
  ent = [-(a * np.log(a) + b * np.log(b)) for a, b in probs]
  np.testing.assert_allclose(m['router_entropy'], np.mean(ent), rtol=1e-5)
