"""Routing policies of the MoE layer (docs/methods/routing.md; layers/token_choice.py, capacity.py, expert_choice.py,
hash_routing.py, router_noise.py; docs/methods/routing.md).

Every policy is compared with a plain Python loop over tokens, choices and experts (`reference_route`,
`reference_expert_choice`) on tiny groups; random policies get the same random numbers (drawn with the same
key split as routing.route). Causal variants pass method_checks.assert_causal; non-causal ones are shown to be
non-causal and refused by evaluation routing.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from method_checks import assert_causal, assert_loss_falls, load_config_file, shrink_for_training, tiny_model_config
from samoe_jax.models import accounting
from samoe_jax.training.config_checks import validate_config
from samoe_jax.layers import token_choice as r
from samoe_jax.layers.capacity import expert_capacity
from samoe_jax.layers.expert_choice import expert_choice_route
from samoe_jax.layers.experts import ExpertWeights
from samoe_jax.layers.hash_routing import hash_experts, hash_experts_numpy
from samoe_jax.layers.capacity import Capacity
from samoe_jax.layers.moe import MoeFFN
from samoe_jax.layers.moe_call import MoeCall
from samoe_jax.layers.routing_strategies import TokenChoice
from samoe_jax.models.decoding import greedy_generate, prompt_inputs
from samoe_jax.models.model import TRAIN, LanguageModel
from samoe_jax.training.optimizer import make_optimizer


# --------------------------------------------------------------------------------------------- the reference
def reference_route(probs, mask, *, top_k, capacity, priority='position', active_k=None, gate='softmax',
                    gate_renorm='auto', first_scores=None, later_scores=None, uniform=None, order_key=None):
  """Plain-Python token-choice routing of groups probs [G, S, E] (numpy); returns expert, slot, kept, gate,
  chosen as [G, S, K] arrays (slot -1 where the choice is not made)."""
  g_n, s_n, e_n = probs.shape
  k_act = top_k if active_k is None else active_k
  out = {name: np.zeros((g_n, s_n, top_k), dtype) for name, dtype in
         (('expert', np.int32), ('slot', np.int32), ('kept', bool), ('gate', np.float64), ('chosen', bool))}
  out['slot'][:] = -1
  for g in range(g_n):
    for s in range(s_n):
      taken = []
      for k in range(top_k):
        scores = (first_scores if k == 0 else later_scores) if first_scores is not None else probs
        best = max((e for e in range(e_n) if e not in taken), key=lambda e: (scores[g, s, e], -e))
        taken.append(best)
        out['expert'][g, s, k] = best
      active = [bool(mask[g, s]) and k < k_act for k in range(top_k)]
      p = [float(probs[g, s, e]) for e in taken]
      total_active = sum(p[k] for k in range(top_k) if active[k])
      chosen = list(active)
      if uniform is not None:   # GShard / fairseq random routing of choices k >= 2
        for k in range(1, top_k):
          chosen[k] = active[k] and 2 * p[k] / total_active > uniform[g, s, k]
      out['chosen'][g, s] = chosen
      if gate == 'uniform':
        gates = [1.0 / sum(active) if active[k] else 0.0 for k in range(top_k)]
      elif gate == 'topk_softmax' or gate_renorm == 'before_drop' or (gate_renorm == 'auto' and k_act > 1):
        gates = [p[k] / total_active if active[k] else 0.0 for k in range(top_k)]
      else:
        gates = p
      out['gate'][g, s] = gates
    # slots: walk the (token, choice) pairs in priority order
    if priority == 'position':
      order = [(s, k) for s in range(s_n) for k in range(top_k)]
    else:
      if priority == 'choice':
        tokens = list(range(s_n))
      elif priority == 'bpr':
        tokens = sorted(range(s_n), key=lambda s: (-probs[g, s].max(), s))
      else:
        tokens = sorted(range(s_n), key=lambda s: (order_key[g, s], s))
      order = [(s, k) for k in range(top_k) for s in tokens]
    counts = [0] * e_n
    for s, k in order:
      if out['chosen'][g, s, k]:
        e = out['expert'][g, s, k]
        out['slot'][g, s, k] = counts[e]
        counts[e] += 1
        out['kept'][g, s, k] = counts[e] <= capacity
    for s in range(s_n):
      kept = out['kept'][g, s]
      if gate_renorm == 'after_drop' and kept.any():
        out['gate'][g, s] = np.where(kept, out['gate'][g, s], 0.0) / np.sum(np.where(kept, out['gate'][g, s], 0.0))
      out['gate'][g, s] = np.where(kept, out['gate'][g, s], 0.0)
  return out


def assert_matches(got: r.Routing, want: dict) -> None:
  chosen = want['chosen']
  np.testing.assert_array_equal(np.asarray(got.expert_GSK)[chosen], want['expert'][chosen])
  np.testing.assert_array_equal(np.asarray(got.slot_GSK)[chosen], want['slot'][chosen])
  np.testing.assert_array_equal(np.asarray(got.kept_GSK), want['kept'])
  np.testing.assert_allclose(np.asarray(got.gate_GSK), want['gate'], rtol=1e-5, atol=1e-6)


def _probs(seed, shape=(2, 9, 4)):
  logits = np.asarray(jax.random.normal(jax.random.key(seed), shape)) * 2.0
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  return logits.astype(np.float32), probs / probs.sum(-1, keepdims=True)


def _mask(shape=(2, 9)):
  mask = np.ones(shape, bool)
  mask[1, 6:] = False
  return mask


# ------------------------------------------------------------------------------------ deterministic policies
@pytest.mark.parametrize('top_k,capacity,priority,gate,renorm,active_k', [
    (1, 2, 'position', 'softmax', 'auto', None),
    (2, 2, 'position', 'softmax', 'auto', None),
    (2, 3, 'choice', 'softmax', 'none', None),
    (2, 2, 'bpr', 'softmax', 'after_drop', None),
    (3, 2, 'bpr', 'topk_softmax', 'auto', None),
    (2, 2, 'position', 'topk_softmax', 'after_drop', None),
    (1, 2, 'position', 'topk_softmax', 'auto', None),
    (3, 3, 'position', 'uniform', 'auto', None),
    (4, 9, 'position', 'uniform', 'auto', None),   # SMoE-Dropout dense mode: every expert 1/E
    (3, 2, 'position', 'softmax', 'before_drop', 2),
    (3, 2, 'choice', 'softmax', 'auto', 1),
    (4, 3, 'position', 'topk_softmax', 'auto', 3),
])
def test_route_matches_the_python_loop(top_k, capacity, priority, gate, renorm, active_k):
  logits, probs = _probs(top_k * 10 + capacity)
  mask = _mask()
  options = r.RouteOptions(top_k=top_k, priority=priority, gate=gate, gate_renorm=renorm)
  got = r.route(jnp.asarray(logits), jnp.asarray(mask), options, capacity=capacity,
                active_k=None if active_k is None else jnp.int32(active_k))
  want = reference_route(probs, mask, top_k=top_k, capacity=capacity, priority=priority, gate=gate,
                         gate_renorm=renorm, active_k=active_k)
  assert_matches(got, want)


def test_bpr_hand_case():
  """Two tokens want expert 0 (capacity 1): position gives it to token 0, BPR to the more confident token 1."""
  probs = np.array([[[.6, .4], [.9, .1]]], np.float32)
  mask = jnp.ones((1, 2), bool)
  pos = r.route(jnp.log(probs), mask, r.RouteOptions(top_k=1), capacity=1)
  bpr = r.route(jnp.log(probs), mask, r.RouteOptions(top_k=1, priority='bpr'), capacity=1)
  assert np.asarray(pos.kept_GSK)[0, :, 0].tolist() == [True, False]
  assert np.asarray(bpr.kept_GSK)[0, :, 0].tolist() == [False, True]


def test_random_policies_match_the_loop_with_the_same_draws():
  """second_policy 'sampling' / 'random', noise 'gumbel' and priority 'random' use the key split of route()."""
  logits, probs = _probs(5)
  mask = _mask()
  key = jax.random.key(11)
  k0, k1, k2, k3 = jax.random.split(key, 4)
  log_p = np.log(probs)
  gumbel0 = np.asarray(jax.random.gumbel(k0, probs.shape))
  gumbel1 = np.asarray(jax.random.gumbel(k1, probs.shape))
  uniform = np.asarray(jax.random.uniform(k2, probs.shape[:2] + (2,)))
  order = np.asarray(jax.random.uniform(k3, probs.shape[:2]))
  cases = [
      (dict(second_policy='sampling'), dict(first_scores=log_p, later_scores=log_p + gumbel1)),
      (dict(second_policy='random'), dict(uniform=uniform)),
      (dict(noise='gumbel'), dict(first_scores=log_p + gumbel0, later_scores=log_p + gumbel0)),
      (dict(priority='random'), dict(priority='random', order_key=order)),
  ]
  for kwargs, ref in cases:
    got = r.route(jnp.asarray(logits), jnp.asarray(mask), r.RouteOptions(top_k=2, **kwargs), capacity=3, rng=key)
    assert_matches(got, reference_route(probs, mask, top_k=2, capacity=3, **ref))
  # random routing really discards some second choices, and they are not counted as dropped
  got = r.route(jnp.asarray(logits), jnp.asarray(mask), r.RouteOptions(top_k=2, second_policy='random'), capacity=20,
                rng=key)
  assert not bool(np.all(np.asarray(got.chosen_GSK)[mask]))
  assert float(r.routing_metrics(got, jnp.asarray(mask))['dropped_fraction']) == 0.0


def test_gaussian_noise_changes_selection_and_gates():
  logits, probs = _probs(6)
  mask = jnp.ones(probs.shape[:2], bool)
  key = jax.random.key(3)
  got = r.route(jnp.asarray(logits), mask, r.RouteOptions(top_k=2, noise='gaussian'), capacity=20, rng=key)
  k0 = jax.random.split(key, 4)[0]
  noisy = jax.nn.softmax(np.log(probs) + jax.random.normal(k0, probs.shape) / 4, -1)   # sigma = 1/E, E = 4
  np.testing.assert_allclose(np.asarray(got.probs_GSE), np.asarray(noisy), rtol=1e-5, atol=1e-6)
  assert_matches(got, reference_route(np.asarray(noisy), np.asarray(mask), top_k=2, capacity=20))


def test_random_policies_need_an_rng():
  with pytest.raises(ValueError, match='pass rng'):
    r.route(jnp.zeros((1, 2, 4)), jnp.ones((1, 2), bool), r.RouteOptions(top_k=2, second_policy='sampling'), capacity=2)


# ------------------------------------------------------------------------------------------------- capacity
def test_capacity_formulas_hand_values():
  assert expert_capacity(256, 8, 2, 1.25, 4) == 80                # deepspeed: ceil(2*256*1.25/8)
  assert expert_capacity(10, 8, 1, 1.0, 4) == 4                   # deepspeed: min capacity
  assert expert_capacity(3, 2, 1, 10.0, 4) == 3                   # deepspeed: never more than k*T
  assert expert_capacity(10, 8, 1, 1.0, 4, 'switch') == 2         # ceil(10/8), no minimum
  assert expert_capacity(256, 8, 1, 1.25, 4, 'switch') == 40
  assert expert_capacity(10, 4, 2, 7.0, 4, 'fairseq') == 6        # 2 * ceil(10/4), CF ignored
  assert expert_capacity(256, 8, 2, 1.0, 0, 'fairseq') == 64
  assert expert_capacity(10, 4, 2, 0.1, 4, 'none') == 10
  for t, e, k, cf, m in [(37, 5, 2, 1.3, 3), (128, 8, 1, 0.7, 0), (9, 4, 3, 2.0, 1)]:
    assert expert_capacity(t, e, k, cf, m, 'switch') == math.ceil(k * t * cf / e)
    assert expert_capacity(t, e, k, cf, m, 'fairseq') == k * math.ceil(t / e)
  c = tiny_model_config(**{'moe.capacity_formula': 'fairseq'})
  assert accounting.capacity(c)['train'] == 2 * math.ceil(12 / 4)


def test_no_dropping_with_capacity_none():
  """C = T: even when every token picks the same experts, nothing is dropped."""
  logits = jnp.tile(jnp.asarray([[[3.0, 2.0, 0.0, 0.0]]]), (2, 9, 1))
  capacity = expert_capacity(9, 4, 2, 0.1, 0, 'none')
  got = r.route(logits, jnp.ones((2, 9), bool), r.RouteOptions(top_k=2), capacity=capacity)
  assert bool(np.all(np.asarray(got.kept_GSK)))


# ---------------------------------------------------------------------------------------- expert choice, hash
def reference_expert_choice(probs, mask, capacity):
  g_n, s_n, e_n = probs.shape
  kept = np.zeros((g_n, s_n, e_n), bool)
  slot = np.full((g_n, s_n, e_n), -1)
  for g in range(g_n):
    for e in range(e_n):
      tokens = sorted((s for s in range(s_n) if mask[g, s]), key=lambda s: (-probs[g, s, e], s))[:capacity]
      for rank, s in enumerate(tokens):
        kept[g, s, e], slot[g, s, e] = True, rank
  return kept, slot


def test_expert_choice_matches_the_loop_and_is_not_causal():
  logits, probs = _probs(8)
  mask = _mask()
  got = expert_choice_route(jnp.asarray(logits), jnp.asarray(mask), capacity=3)
  kept, slot = reference_expert_choice(probs, mask, 3)
  np.testing.assert_array_equal(np.asarray(got.kept_GSK), kept)
  np.testing.assert_array_equal(np.asarray(got.slot_GSK)[kept], slot[kept])
  np.testing.assert_allclose(np.asarray(got.gate_GSK), np.where(kept, probs, 0.0), rtol=1e-5, atol=1e-7)
  # non-causal: a later token that wants expert 0 more pushes an earlier token out of expert 0's buffer
  base = np.log(np.array([[[.7, .3], [.6, .4], [.1, .9]]], np.float32))
  later = base.copy()
  later[0, 2] = np.log([.99, .01])
  mask3 = jnp.ones((1, 3), bool)
  before = np.asarray(expert_choice_route(jnp.asarray(base), mask3, capacity=2).kept_GSK)
  after = np.asarray(expert_choice_route(jnp.asarray(later), mask3, capacity=2).kept_GSK)
  assert before[0, 1, 0] and not after[0, 1, 0]


def test_hash_experts_match_numpy_and_spread():
  ids = np.arange(0, 500)
  got = np.asarray(hash_experts(jnp.asarray(ids), 8))
  np.testing.assert_array_equal(got, hash_experts_numpy(ids, 8))
  assert np.bincount(got, minlength=8).min() > 30   # a roughly balanced random hash


def test_hash_model_routes_by_token_id_and_has_no_router():
  c = tiny_model_config(**{'moe.routing': 'hash', 'moe.top_k': 1, 'moe.capacity_formula': 'none'})
  model = LanguageModel(c)
  params = model.init_params(jax.random.key(0))
  assert not any('router' in str(path) for path, _ in jax.tree_util.tree_leaves_with_path(params))
  assert model.param_summary()['total'] == accounting.param_counts(c)['total']
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 1, 64)
  _, auxes = jax.jit(model.hidden)(params, tokens)
  want = np.bincount(hash_experts_numpy(np.asarray(tokens).reshape(-1), 4), minlength=4) / tokens.size
  np.testing.assert_allclose(np.asarray(auxes[0]['expert_load']), want, rtol=1e-6)


def test_hash_kv_cache_decoding_equals_the_naive_loop():
  from test_scorer import tiny as scorer_tiny, L
  c = scorer_tiny(**{'moe.routing': 'hash', 'moe.top_k': 1, 'pool.size': 2, 'pool.mixing': 'fixed'})
  model = LanguageModel(c)
  params = model.init_params(jax.random.key(1))
  logits_fn = jax.jit(lambda p, t: model.logits(p, t, sequence_routing=True))
  prompts = [[5, 9, 200, 7], [3] * 19]
  got = greedy_generate(model, params, prompts, max_new_tokens=4, batch_size=2)
  for prompt, tokens in zip(prompts, got):
    inputs, generated = list(prompt_inputs(prompt, L, 4)), []
    for _ in range(4):   # full prefix, right-padded to L (evaluation routing never looks at later positions)
      padded = jnp.asarray([inputs + [0] * (L - len(inputs))], jnp.int32)
      token = int(np.argmax(np.asarray(logits_fn(params, padded)[0, len(inputs) - 1])))
      generated.append(token)
      inputs.append(token)
    assert tokens == generated


# ------------------------------------------------------------------------------------------------- causality
@pytest.mark.parametrize('overrides', [
    {'moe.routing': 'hash', 'moe.top_k': 1, 'moe.capacity_factor_train': 0.5, 'moe.capacity_factor_eval': 0.5,
     'moe.min_capacity': 1},
    {'moe.gate': 'topk_softmax', 'moe.capacity_formula': 'switch', 'moe.capacity_factor_eval': 0.5,
     'moe.capacity_factor_train': 0.5, 'moe.second_policy': 'random', 'moe.noise': 'jitter'},
    {'moe.gate': 'uniform', 'moe.gate_renorm': 'after_drop', 'moe.capacity_formula': 'fairseq',
     'moe.router_bias': True, 'moe.router_trainable': False, 'moe.top_k': 3},
])
def test_causal_variants(overrides):
  assert_causal(tiny_model_config(**overrides))


@pytest.mark.parametrize('overrides', [{'moe.slot_priority': 'bpr'}, {'moe.slot_priority': 'random'},
                                       {'moe.slot_priority': 'choice'}, {'moe.routing': 'expert_choice'}])
def test_non_causal_variants_are_refused_by_evaluation_routing(overrides):
  model = LanguageModel(tiny_model_config(**overrides))
  params = model.init_params(jax.random.key(0))
  with pytest.raises(ValueError, match='not causal'):
    model.logits(params, jnp.ones((1, 12), jnp.int32), sequence_routing=True)


@pytest.mark.parametrize('priority', ['bpr', 'random'])
def test_bpr_and_random_priorities_are_not_causal(priority):
  """A change of a later token changes whether an earlier token's choice got a slot."""
  probs = np.array([[[.6, .4], [.55, .45], [.1, .9]]], np.float32)
  later = probs.copy()
  later[0, 2] = [.95, .05]
  mask = jnp.ones((1, 3), bool)
  key = jax.random.key(0)
  # random priority: find a key whose order puts token 2 first (the loop reference's order)
  while priority == 'random' and np.argsort(np.asarray(jax.random.uniform(jax.random.split(key, 4)[3], (1, 3))))[0, 0] != 2:
    key = jax.random.fold_in(key, 1)
  kw = dict(capacity=1, rng=key if priority == 'random' else None)
  options = r.RouteOptions(top_k=1, priority=priority)
  before = np.asarray(r.route(jnp.log(probs), mask, options, **kw).kept_GSK)[0, :, 0]
  after = np.asarray(r.route(jnp.log(later), mask, options, **kw).kept_GSK)[0, :, 0]
  assert before[:2].tolist() != after[:2].tolist()


# ------------------------------------------------------------------------------------- active_k, probs_GSE
def _moe_layer(top_k, **kw):
  """capacity_formula 'none': the same C = T for both top_k (the deepspeed C grows with k; routing-level
  dropping is compared above with one capacity)."""
  return MoeFFN(TokenChoice.with_defaults(4, top_k, **kw),
                Capacity(group_size=8, capacity_factor_train=1.0, capacity_factor_eval=1.0, min_capacity=1,
                         capacity_formula='none'), dispatch='gather', init_std=0.5)


def test_active_k_equals_routing_with_top_k_active_k():
  logits, _ = _probs(9, (2, 8, 4))
  mask = jnp.asarray(_mask((2, 8)))
  for gate, renorm in [('softmax', 'auto'), ('uniform', 'auto'), ('topk_softmax', 'after_drop')]:
    route_fn = jax.jit(lambda lg, a: r.route(lg, mask, r.RouteOptions(top_k=4, gate=gate, gate_renorm=renorm),
                                              capacity=3, active_k=a))   # active_k traced: one compilation
    for k in (1, 2, 3):
      masked = route_fn(jnp.asarray(logits), jnp.int32(k))
      small = r.route(jnp.asarray(logits), mask, r.RouteOptions(top_k=k, gate=gate, gate_renorm=renorm), capacity=3)
      np.testing.assert_allclose(np.asarray(masked.gate_GSK[..., :k]), np.asarray(small.gate_GSK), rtol=1e-6)
      np.testing.assert_array_equal(np.asarray(masked.kept_GSK[..., :k]), np.asarray(small.kept_GSK))
      assert not np.asarray(masked.kept_GSK[..., k:]).any() and not np.asarray(masked.gate_GSK[..., k:]).any()
      for key in ('dropped_fraction', 'expert_load'):
        np.testing.assert_allclose(np.asarray(r.routing_metrics(masked, mask)[key]),
                                   np.asarray(r.routing_metrics(small, mask)[key]), rtol=1e-6)
  # the layer's outputs too (the experts of an MoeFFN come from outside; the router is the same parameter)
  x = jax.random.normal(jax.random.key(2), (2, 8, 8))
  experts = ExpertWeights(w_in=jax.random.normal(jax.random.key(3), (4, 8, 16)), b_in=jnp.zeros((4, 16)),
                          w_out=jax.random.normal(jax.random.key(4), (4, 16, 8)), b_out=jnp.zeros((4, 8)))
  tmask = jnp.ones((2, 8), bool)
  big = _moe_layer(4)
  params = big.init(jax.random.key(0), x, experts, tmask, train=False)
  y_masked, _ = big.apply(params, x, experts, tmask, train=False, call=MoeCall(active_k=jnp.int32(2)))
  y_small, _ = _moe_layer(2).apply(params, x, experts, tmask, train=False)
  np.testing.assert_allclose(np.asarray(y_masked), np.asarray(y_small), rtol=1e-5, atol=1e-6)


def test_probs_override_drives_selection_gates_and_loss():
  logits, probs = _probs(12)
  mask = jnp.asarray(_mask())
  garbage = jnp.asarray(np.random.default_rng(0).normal(size=logits.shape), jnp.float32)
  got = r.route(garbage, mask, r.RouteOptions(top_k=2), capacity=3, probs_GSE=jnp.asarray(probs))
  want = r.route(jnp.asarray(logits), mask, r.RouteOptions(top_k=2), capacity=3)
  assert_matches(got, reference_route(probs, np.asarray(mask), top_k=2, capacity=3))
  np.testing.assert_allclose(float(r.load_balancing_loss(got, mask)), float(r.load_balancing_loss(want, mask)),
                             rtol=1e-5)


# ------------------------------------------------------------------------------------------- frozen router
def test_frozen_router_is_never_updated():
  c = tiny_model_config(**{'moe.router_trainable': False, 'moe.router_bias': True, 'train.weight_decay': 0.1})
  model = LanguageModel(c)
  params = model.init_params(jax.random.key(0))
  assert model.param_summary()['total'] == accounting.param_counts(c)['total']
  assert model.param_summary()['routers'] == accounting.param_counts(c)['routers']
  optimizer, _ = make_optimizer(c.train, params, model.param_logical_axes())
  state = optimizer.init(params)
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 1, 64)
  batch = {'decoder_input_tokens': tokens, 'decoder_target_tokens': tokens,
           'decoder_loss_weights': jnp.ones((2, 12))}

  @jax.jit
  def step(p, s, i):
    grads = jax.grad(lambda q: model.loss_fn(q, batch, jax.random.key(i), TRAIN)[0])(p)
    updates, s = optimizer.update(grads, s, p)
    return jax.tree.map(lambda a, u: a + u, p, updates), s

  new = params
  for i in range(3):
    new, state = step(new, state, i)
  for block in ('block_1', 'block_3'):
    for name in ('kernel', 'bias'):
      np.testing.assert_array_equal(np.asarray(new[block]['moe']['router'][name]),
                                    np.asarray(params[block]['moe']['router'][name]))
  assert not np.array_equal(np.asarray(new['token_embedding']), np.asarray(params['token_embedding']))
  assert not np.array_equal(np.asarray(new['expert_pool']['w_in']), np.asarray(params['expert_pool']['w_in']))


# -------------------------------------------------------------------------------------- config and training
@pytest.mark.parametrize('overrides,match', [
    ({'moe.routing': 'bogus'}, "moe.routing.*'bogus'.*token_choice"), ({'moe.gate': 'max'}, 'moe.gate'),
    ({'moe.gate_renorm': 'x'}, 'moe.gate_renorm'), ({'moe.second_policy': 'y'}, 'moe.second_policy'),
    ({'moe.noise': 'loud'}, 'moe.noise'), ({'moe.noise_eps': 2.0}, 'moe.noise_eps'),
    ({'moe.capacity_formula': 'gshard'}, 'moe.capacity_formula'), ({'moe.slot_priority': 'z'}, 'moe.slot_priority'),
    ({'moe.routing': 'hash'}, 'moe.top_k'),
    ({'moe.routing': 'expert_choice', 'moe.slot_priority': 'choice'}, 'moe.slot_priority'),
    ({'moe.router_trainable': False, 'pool.share_router': True}, 'pool.share_router'),
])
def test_validation_errors(overrides, match):
  with pytest.raises(ValueError, match=match):
    validate_config(tiny_model_config(**overrides))


def test_train_without_rng_is_refused_for_random_policies():
  model = LanguageModel(tiny_model_config(**{'moe.second_policy': 'sampling', 'model.dropout_rate': 0.0}))
  params = model.init_params(jax.random.key(0))
  tokens = jnp.ones((1, 12), jnp.int32)
  batch = {'decoder_input_tokens': tokens, 'decoder_target_tokens': tokens, 'decoder_loss_weights': jnp.ones((1, 12))}
  with pytest.raises(ValueError, match='routing policy'):
    model.loss_fn(params, batch, None, TRAIN)


@pytest.mark.parametrize('name', ['tiny_switch_top1', 'tiny_hash', 'tiny_gshard_top2_random'])
def test_loss_falls(name, tmp_path):
  config = load_config_file(name)
  validate_config(config)
  assert_loss_falls(shrink_for_training(config), tmp_path)


def test_describe_names_the_policy_and_its_causality():
  from samoe_jax.layers.routing_checks import describe_policy
  assert describe_policy(tiny_model_config().moe) is None
  assert 'NOT causal' in describe_policy(load_config_file('tiny_expert_choice').moe)
  line = describe_policy(load_config_file('tiny_hash').moe)
  assert "routing='hash'" in line and '(causal)' in line
