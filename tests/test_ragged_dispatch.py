"""Dropless experts, moe.dispatch='ragged' (layers/ragged.py): equal to the plain-loop reference (outputs and
gradients), no drops at any capacity factor, causal, decoding equal to the full forward pass, and the refusals."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samoe_jax.training.config_checks import config_errors
from samoe_jax.layers.capacity import Capacity
from samoe_jax.layers.experts import ExpertWeights
from samoe_jax.layers.moe import MoeFFN
from samoe_jax.layers.moe_call import MoeCall
from samoe_jax.layers.ragged import sort_by_expert
from samoe_jax.layers.reference import reference_moe
from samoe_jax.layers.routing_strategies import ExpertChoice, HashRouting, TokenChoice
from samoe_jax.layers.token_choice import RouteOptions, route
from samoe_jax.models.decoding import greedy_generate, prompt_inputs
from samoe_jax.models.model import TRAIN, LanguageModel
from method_checks import L as L_LM, V as V_LM, tiny_model_config
from test_moe_layer import B, D, E, L, P, _fast, _reference, _setup

SMALL_CF = 0.5   # C = ceil(2 * 8 * 0.5 / 4) = 2 slots of 8 tokens: 'gather' drops

CASES = {   # name: (mixing, space, top_k, granularity)
    'moe-top1': ('fixed', 'weight', 1, 'layer'),        # standard MoE
    'moe-top2': ('fixed', 'weight', 2, 'layer'),
    'samoe-top1-expert': ('learned', 'weight', 1, 'expert'),   # SaMoE: weight-space mixed experts
    'samoe-top2': ('learned', 'weight', 2, 'layer'),
    'output-top1': ('learned', 'output', 1, 'layer'),   # output-space mixing over the whole pool
    'output-top2': ('learned', 'output', 2, 'layer'),
}


def _layer(base: MoeFFN, dispatch: str, top_k: int, capacity_factor: float) -> MoeFFN:
  return base.clone(routing=TokenChoice.with_defaults(E, top_k), dispatch=dispatch,
                    capacity=dataclasses.replace(base.capacity, capacity_factor_train=capacity_factor))


@pytest.fixture(scope='module')
def layer_results():
  """Every layer-level function below with its value and gradient (wrt router / pool / mixing logits / x) against
  one probe, all in one compiled function: name -> ((y, dropped_fraction), grads)."""
  base, variables, pool, _, x, mask = _setup()
  alphas = {g: jax.random.normal(jax.random.key(3), (P,) if g == 'layer' else (E, P)) for g in ('layer', 'expert')}
  probe = jax.random.normal(jax.random.key(5), x.shape)
  fns = {}
  for name, (mixing, space, k, granularity) in CASES.items():
    ragged = _layer(base, 'ragged', k, SMALL_CF)
    fns[f'ragged/{name}'] = (functools.partial(_fast, ragged, mask=mask, mixing=mixing, space=space), granularity)
    ref = functools.partial(_reference, mixing=mixing, top_k=k, space=space)
    fns[f'reference/{name}'] = ((lambda v, p, a, x, r=ref: (r(v, p, a, x), {'dropped_fraction': 0.0})),
                                granularity)
  for k in (1, 2):
    for dispatch in ('ragged', 'gather'):
      for cf in (float(E), SMALL_CF):
        layer = _layer(base, dispatch, k, cf)
        fns[f'{dispatch}/top{k}/cf{cf}'] = (functools.partial(_fast, layer, mask=mask, mixing='fixed'), 'layer')
  fns['ragged/output-expert'] = (functools.partial(_fast, _layer(base, 'ragged', 2, SMALL_CF), mask=mask,
                                                   mixing='learned', space='output'), 'expert')
  fns['gather/output-expert'] = (functools.partial(_fast, _layer(base, 'gather', 2, float(E)), mask=mask,
                                                   mixing='learned', space='output'), 'expert')

  def all_results(variables, pool, alphas, x):
    out = {}
    for name, (fn, granularity) in fns.items():
      def loss(v, p, a, x, fn=fn):
        y, aux = fn(v, p, a, x)
        return jnp.sum(y * probe), (y, aux['dropped_fraction'])
      (_, y_dropped), grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(
          variables, pool, alphas[granularity], x)
      out[name] = (y_dropped, grads)
    return out

  return jax.jit(all_results)(variables, pool, alphas, x)


def _assert_close(a, b, rtol=1e-4, atol=1e-5):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(u, v, rtol=rtol, atol=atol)


@pytest.mark.parametrize('name', list(CASES))
def test_matches_the_reference_with_no_drops(layer_results, name):
  """Outputs and gradients (router, pool, mixing logits, x) equal the plain loop at capacity factor 0.5, at which
  'gather' drops (test below); the ragged layer reports no drops."""
  (y, dropped), grads = layer_results[f'ragged/{name}']
  (y_ref, _), grads_ref = layer_results[f'reference/{name}']
  np.testing.assert_allclose(y, y_ref, rtol=2e-5, atol=2e-5)
  assert float(dropped) == 0.0
  _assert_close(grads, grads_ref)
  assert float(jnp.max(jnp.abs(grads[1].w_in))) > 0 and float(jnp.max(jnp.abs(grads[3]))) > 0
  if CASES[name][0] == 'learned':
    assert float(jnp.max(jnp.abs(grads[2]))) > 0   # the mixing logits get a gradient


@pytest.mark.parametrize('top_k', [1, 2])
def test_equals_gather_when_nothing_drops_and_keeps_what_gather_drops(layer_results, top_k):
  """At capacity factor E nothing drops and 'ragged' == 'gather' (outputs and gradients); at 0.5 'gather' drops
  and zeroes those choices, while 'ragged' is unchanged bit for bit (the capacity has no effect)."""
  r = lambda dispatch, cf: layer_results[f'{dispatch}/top{top_k}/cf{cf}']
  big, small = float(E), SMALL_CF
  assert float(r('gather', big)[0][1]) == 0.0 and float(r('gather', small)[0][1]) > 0.1
  _assert_close(r('ragged', big), r('gather', big), rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(r('ragged', small)), jax.tree.leaves(r('ragged', big))):
    np.testing.assert_array_equal(a, b)
  assert float(jnp.max(jnp.abs(r('gather', small)[0][0] - r('ragged', small)[0][0]))) > 1e-2


def test_expert_level_output_mixing_equals_gather(layer_results):
  """Output-space mixing with per-expert weights [E, P]: ragged at capacity factor 0.5 == gather with no drops."""
  _assert_close(layer_results['ragged/output-expert'], layer_results['gather/output-expert'], rtol=1e-5, atol=1e-6)


def test_sorted_rows_group_by_expert_and_leave_unkept_rows_last():
  logits = jax.random.normal(jax.random.key(0), (2, 5, E))
  mask = jnp.array([[1, 1, 1, 0, 1], [1, 1, 1, 1, 1]], bool)
  routing = jax.jit(lambda lg, m: route(lg, m, RouteOptions(top_k=2), capacity=5))(logits, mask)
  rows = jax.jit(lambda r: sort_by_expert(r.expert_GSK, r.kept_GSK, E))(routing)
  experts = np.asarray(routing.expert_GSK).reshape(-1)[np.asarray(rows.order_N)]
  valid = np.asarray(rows.valid_N)
  assert valid.sum() == 18 and not valid[18:].any()                       # 9 real tokens x 2 choices, then 2
  assert np.all(np.diff(experts[:18]) >= 0)                               # sorted by expert
  np.testing.assert_array_equal(rows.group_sizes_E, np.bincount(experts[:18], minlength=E))
  np.testing.assert_array_equal(rows.token_N, np.asarray(rows.order_N) // 2)


@pytest.fixture(scope='module')
def setup():
  return _setup()


def test_a_token_depends_on_nothing_but_itself_where_gather_does(setup):
  """Groups of two sequences (16 tokens, interleaved position-major) at capacity factor 0.5. 'ragged': changing
  the inputs after position t never changes an output at <= t, and changing row 0 entirely never changes row 1,
  with either slot priority (it has no effect at all). 'gather' drops, and row 0 competes with row 1 for slots."""
  base, variables, pool, _, x, mask = setup
  t = 3
  later = x.at[:, t + 1:].set(jax.random.normal(jax.random.key(9), (B, L - t - 1, D)))
  other_row = x.at[0].set(jax.random.normal(jax.random.key(8), (L, D)))
  capacity = dataclasses.replace(base.capacity, group_size=2 * L, capacity_factor_train=SMALL_CF)
  layers = {(d, p): base.clone(routing=TokenChoice.with_defaults(E, 2, slot_priority=p), dispatch=d,
                               capacity=capacity)
            for d in ('ragged', 'gather') for p in ('position', 'choice')}
  run = jax.jit(lambda x: {key: layer.apply(variables, x, pool.entry(1), mask, train=True)
                           for key, layer in layers.items()})
  before, after_later, after_row = run(x), run(later), run(other_row)
  diff = lambda a, b: float(jnp.max(jnp.abs(a - b)))
  for p in ('position', 'choice'):
    y, y_later, y_row = before['ragged', p][0], after_later['ragged', p][0], after_row['ragged', p][0]
    np.testing.assert_array_equal(y_later[:, :t + 1], y[:, :t + 1])
    np.testing.assert_array_equal(y_row[1], y[1])
    assert diff(y_later[:, t + 1:], y[:, t + 1:]) > 1e-2 and diff(y_row[0], y[0]) > 1e-2
    assert float(before['ragged', p][1]['dropped_fraction']) == 0.0
    np.testing.assert_array_equal(y, before['ragged', 'position'][0])
  gather = lambda out, p: out['gather', p][0]
  assert float(before['gather', 'position'][1]['dropped_fraction']) > 0.1
  assert diff(gather(after_row, 'position')[1], gather(before, 'position')[1]) > 1e-2


def test_hash_routing_is_dropless_too(setup):
  _, _, pool, _, x, mask = setup
  tokens = jax.random.randint(jax.random.key(3), (B, L), 0, 50)

  @jax.jit
  def run(pool, x):
    outs = {}
    for dispatch, cf in (('ragged', SMALL_CF), ('gather', SMALL_CF), ('gather', float(E))):
      layer = MoeFFN(HashRouting.with_defaults(E, 1, routing='hash'), Capacity(L, cf, cf, 0, 'deepspeed'),
                     dispatch=dispatch, init_std=0.5)
      outs[dispatch, cf] = layer.apply({}, x, pool.entry(0), mask, train=True, call=MoeCall(tokens_BL=tokens))
    return outs

  outs = run(pool, x)
  np.testing.assert_allclose(outs['ragged', SMALL_CF][0], outs['gather', float(E)][0], rtol=1e-6, atol=1e-6)
  assert float(outs['ragged', SMALL_CF][1]['dropped_fraction']) == 0.0
  assert float(outs['gather', SMALL_CF][1]['dropped_fraction']) > 0.1


def test_bfloat16_compute_follows_the_layer_dtype(setup):
  base, variables, pool, _, x, mask = setup
  run = jax.jit(lambda v, w, x: {d: _layer(base, d, 2, float(E)).clone(dtype=jnp.bfloat16).apply(
      v, x, w, mask, train=True)[0] for d in ('ragged', 'gather')})
  y = run(variables, pool.entry(1), x)
  y_ref = reference_moe(x.reshape(B * L, D), variables['params']['router']['kernel'], pool.entry(1), 2)
  assert y['ragged'].dtype == y['gather'].dtype == jnp.bfloat16
  scale = float(jnp.max(jnp.abs(y_ref)))
  for name in ('ragged', 'gather'):
    err = float(jnp.max(jnp.abs(y[name].astype(jnp.float32).reshape(B * L, D) - y_ref)))
    assert 0 < err < 0.03 * scale, (name, err, scale)


# ----------------------------------------------------------------------------------- the whole model
def _lm_config(dispatch: str, **overrides):
  """The tiny decoder (2 layers, one MoE) with two sequences per routing group and capacity factor 1 (gather
  drops)."""
  return tiny_model_config(**{'moe.dispatch': dispatch, 'moe.group_size': 2 * L_LM, 'data.batch_size': 2,
                              'model.num_layers': 2, 'moe.capacity_factor_train': 1.0,
                              'moe.capacity_factor_eval': 1.0, 'moe.min_capacity': 0, **overrides})


def _later_tokens_changed(tokens, t):
  return tokens.at[:, t + 1:].set(jax.random.randint(jax.random.key(t), (2, L_LM - t - 1), 1, V_LM))


@pytest.fixture(scope='module')
def lm():
  """A ragged SaMoE decoder (pool of 3, expert-level mixing, random mixing logits) and its jitted logits in the
  training-style forward pass (groups of two sequences) and in evaluation routing (one run per sequence)."""
  model = LanguageModel(_lm_config('ragged', **{'pool.size': 3, 'pool.granularity': 'expert'}))
  params = jax.jit(model.init_params)(jax.random.key(1))
  alpha = params['mixing_logits']['alpha']
  params['mixing_logits']['alpha'] = jax.random.normal(jax.random.key(7), alpha.shape)
  full = jax.jit(lambda p, t: (model.logits(p, t), model.hidden(p, t)[1]))
  scoring = jax.jit(lambda p, t: model.logits(p, t, sequence_routing=True))
  return model, params, full, scoring


def test_the_model_is_causal(lm):
  """Changing the tokens after position t never changes the logits at <= t (either routing; routing groups of two
  sequences in the training-style pass), and is visible later."""
  model, params, full, scoring = lm
  tokens = jax.random.randint(jax.random.key(2), (2, L_LM), 1, V_LM)
  base_full, auxes = full(params, tokens)
  base_scoring = scoring(params, tokens)
  assert all(float(a['dropped_fraction']) == 0.0 for a in auxes)
  for t in (2, 6):
    changed = _later_tokens_changed(tokens, t)
    for fn, base in ((lambda p, c: full(p, c)[0], base_full), (scoring, base_scoring)):
      out = np.asarray(fn(params, changed))
      np.testing.assert_allclose(out[:, :t + 1], np.asarray(base)[:, :t + 1], rtol=1e-5, atol=1e-5)
      assert not np.allclose(out[:, t + 1:], np.asarray(base)[:, t + 1:])


def test_evaluation_routing_and_decoding_equal_the_full_forward_pass(lm):
  """Dropless routing does not depend on the grouping: evaluation routing equals the training-style pass over
  groups of two sequences, and greedy KV-cache decoding equals rerunning the full forward pass every step."""
  model, params, full, scoring = lm
  tokens = jax.random.randint(jax.random.key(3), (2, L_LM), 1, V_LM)
  np.testing.assert_allclose(scoring(params, tokens), full(params, tokens)[0], rtol=1e-5, atol=1e-5)
  rng = np.random.default_rng(0)
  prompts = [[int(t) for t in rng.integers(1, V_LM, n)] for n in (1, 6, 8, 0)]
  new = 4
  got = greedy_generate(model, params, prompts, max_new_tokens=new, batch_size=4)   # rows of mixed lengths
  for prompt, generated in zip(prompts, got):
    inputs, want = list(prompt_inputs(prompt, L_LM, new)), []
    for _ in range(new):   # two copies of the prefix right-padded to L: the scoring function's shape
      padded = jnp.asarray([inputs + [0] * (L_LM - len(inputs))] * 2, jnp.int32)
      want.append(int(np.argmax(np.asarray(scoring(params, padded)[0, len(inputs) - 1]))))
      inputs.append(want[-1])
    assert generated == want, len(prompt)


def test_train_step_loss_equals_gather_at_a_large_capacity():
  """One real train step (AdamW) of a ragged model: its loss is finite and equals the 'gather' model's training
  loss on the same parameters and batch at a capacity factor where gather drops nothing; the step changes the
  parameters. (Gradients against gather and the reference: the layer tests above.)"""
  from samoe_jax.training import optimizer as optimizer_lib
  from samoe_jax.training.state import init_state
  from samoe_jax.training.step import train_step
  from samoe_jax.training.step_options import StepOptions
  tokens = jax.random.randint(jax.random.key(4), (2, L_LM + 1), 1, V_LM)
  batch = {'decoder_input_tokens': tokens[:, :-1], 'decoder_target_tokens': tokens[:, 1:],
           'decoder_loss_weights': jnp.ones((2, L_LM), jnp.float32)}
  config = _lm_config('ragged', **{'moe.capacity_factor_train': float(E)})
  model = LanguageModel(config)
  opt, schedule = optimizer_lib.make_optimizer(config.train, model.abstract_params(), model.param_logical_axes())
  state = jax.jit(lambda r: init_state(model, opt, r))(jax.random.key(0))
  new_state, metrics = jax.jit(lambda s, b: train_step(StepOptions(model, opt, schedule), s, b, jax.random.key(1)))(
      state, batch)
  gather = LanguageModel(_lm_config('gather', **{'moe.capacity_factor_train': float(E)}))
  _, m_gather = jax.jit(lambda p, b: gather.loss_fn(p, b, jax.random.key(1), TRAIN))(state.params, batch)
  assert np.isfinite(float(metrics['loss'])) and float(metrics['loss']) > 1.0
  assert float(m_gather['moe/dropped_fraction']) == 0.0 == float(metrics['moe/dropped_fraction'])
  np.testing.assert_allclose(float(metrics['loss']), float(m_gather['loss']), rtol=1e-6)
  assert float(metrics['grad_norm']) > 0
  moved = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(new_state.params),
                                                         jax.tree.leaves(state.params))]
  assert min(moved) > 0


# ----------------------------------------------------------------------------------------- refusals
def _errors(**overrides):
  return config_errors(tiny_model_config(**overrides))


def test_config_refuses_what_ragged_cannot_do():
  assert _errors(**{'moe.dispatch': 'ragged'}) == []
  assert _errors(**{'moe.dispatch': 'ragged', 'moe.routing': 'hash', 'moe.top_k': 1}) == []
  assert _errors(**{'moe.dispatch': 'ragged', 'mesh.expert': 2, 'mesh.data': 1}) == []   # expert parallelism
  [line] = _errors(**{'moe.dispatch': 'ragged', 'moe.routing': 'expert_choice'})
  assert line.startswith("moe.routing='expert_choice': 'token_choice' or 'hash' with moe.dispatch='ragged'")
  [line] = _errors(**{'moe.dispatch': 'ragged', 'moe.slot_priority': 'choice'})
  assert line.startswith("moe.slot_priority='choice': 'position' with moe.dispatch='ragged'")
  [line] = _errors(**{'moe.dispatch': 'dropless'})
  assert line == "moe.dispatch='dropless': must be one of 'gather', 'einsum', 'ragged'"


def test_layer_refuses_expert_choice_and_indivisible_expert_parallel_groups_at_trace_time(setup):
  from samoe_jax.sharding.rules import LOGICAL_AXIS_RULES
  base, variables, pool, _, x, mask = setup
  layer = _layer(base, 'ragged', 2, 1.0)
  expert_choice = MoeFFN(ExpertChoice.with_defaults(E, 2, routing='expert_choice'), layer.capacity, 'ragged', 0.5)
  with pytest.raises(ValueError, match=r"moe.dispatch='ragged' is dropless, but moe.routing='expert_choice' has a "
                                       'fixed capacity'):
    jax.eval_shape(lambda x: expert_choice.init(jax.random.key(0), x, pool.entry(0), mask, train=True), x)
  mesh = jax.sharding.AbstractMesh((1, 4, 1), ('data', 'expert', 'model'))   # G = 2 groups over 4 devices
  with pytest.raises(ValueError, match=r"MoeFFN: moe.dispatch='ragged' with the experts split over mesh axes "
                                       r"\('expert',\): needs the routing groups split over those axes too and G=2 "):
    with jax.sharding.use_abstract_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
      jax.eval_shape(lambda v, x: layer.apply(v, x, pool.entry(0), mask, train=True), variables, x)
