"""PR-MoE = Pyramid-MoE + Residual-MoE (docs/methods/pr_moe.md; config/pyramid.py, layers/pool.py,
layers/residual_moe.py): parsing and validation of moe.experts_per_layer, the pool groups' parameter tree, the
residual layer and the whole pyramid model against plain references, accounting (DeepSpeed's 4B / 31B),
causality, KV-cache decoding, describe, and a short training run."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from method_checks import assert_causal, assert_loss_falls, load_config_file, shrink_for_training, tiny_model_config
from samoe_jax import describe
from samoe_jax.models import accounting
from samoe_jax.config import pyramid
from samoe_jax.training.config_checks import config_errors
from samoe_jax.layers.experts import ExpertWeights
from samoe_jax.layers.reference import reference_mix
from samoe_jax.layers.residual_moe import residual_moe_output
from samoe_jax.models.model import LanguageModel
from samoe_jax.models.spec import ModelSpec
from samoe_jax.models.transformer import make_moe_ffn

# 4 blocks, all MoE: layers 0 and 3 have 2 experts, layers 1 and 2 have 4 (two groups, not contiguous)
PYRAMID = {'model.layer_plan': 'all', 'moe.experts_per_layer': '2,4x2,2', 'moe.top_k': 1}
NO_DROPS = {'moe.capacity_factor_eval': 8.0, 'moe.min_capacity': 12}


def _perturbed(params, scale=0.1, seed=3):
  """Every parameter plus noise, so zero-initialised biases are tested too."""
  rng = np.random.default_rng(seed)   # numpy noise: no per-shape XLA compilations
  return jax.tree.map(lambda a: jnp.asarray(np.asarray(a) + scale * rng.normal(size=a.shape), a.dtype), params)


# ------------------------------------------------------------------------------------------ parsing, validation
def test_parse_experts_per_layer_and_groups():
  assert pyramid.parse_experts_per_layer('32x10,64x2', 12, 128) == (32,) * 10 + (64,) * 2
  assert pyramid.parse_experts_per_layer('', 3, 8) == (8, 8, 8)
  assert pyramid.parse_experts_per_layer(' 8, 16 ', 2, 4) == (8, 16)
  assert pyramid.format_counts((32,) * 10 + (64,) * 2) == '32x10,64x2'
  groups = pyramid.expert_groups((2, 4, 4, 2), pool_size=4, assignment='modulo')
  assert [(g.num_experts, g.layers, g.pool_size, g.entries, g.pool_name, g.mixing_name) for g in groups] == [
      (2, (0, 3), 2, (0, 1), 'expert_pool', 'mixing_logits'),
      (4, (1, 2), 2, (0, 1), 'expert_pool_e4', 'mixing_logits_e4')]   # pool.size 4 clamped to 2 layers each
  one = pyramid.expert_groups((4, 4, 4), pool_size=5, assignment='modulo')   # one group: pool.size unchanged
  assert [(g.pool_size, g.entries) for g in one] == [(5, (0, 1, 2))]
  tied = pyramid.expert_groups((2, 4, 4, 2), pool_size=1, assignment='modulo')
  assert [(g.pool_size, g.entries) for g in tied] == [(1, (0, 0)), (1, (0, 0))]


@pytest.mark.parametrize('overrides, expected', [
    ({'moe.experts_per_layer': '4,4,4'}, "moe.experts_per_layer='4,4,4' gives 3 MoE layer(s) but model.layer_plan "
                                         'has 2'),
    ({'moe.experts_per_layer': '4,a'}, "entry 'a' is not a count N or a run NxM"),
    ({'moe.experts_per_layer': '4x0,4'}, 'needs a count >= 1 and a repeat >= 1'),
    ({'moe.experts_per_layer': '1,4'}, 'expert count(s) [1] < moe.top_k=2'),
    ({'moe.experts_per_layer': '4,,'}, "entry '' is not a count N or a run NxM"),
    ({'moe.experts_per_layer': '6,3', 'moe.top_k': 1, 'mesh.expert': 2}, 'expert count(s) [3] are not divisible'),
    ({'moe.experts_per_layer': '4,6', 'moe.top_k': 1, 'mesh.expert': 4},
     'expert count(s) [6] are not divisible by mesh.expert=4'),
    ({'moe.experts_per_layer': '4,8', 'pool.share_router': True}, 'pool.share_router=True: cannot share one router'),
    ({'moe.experts_per_layer': '4,8', 'pool.entropy_coef': 0.1}, 'pool.entropy_coef=0.1: is not supported'),
    ({'moe.residual': 'add'}, "moe.residual='add': must be one of 'none', 'sum', 'learned_softmax'"),
])
def test_bad_pr_moe_values_are_refused(overrides, expected):
  errors = config_errors(tiny_model_config(**overrides))
  assert any(expected in line for line in errors), errors


def test_good_pr_moe_values_pass():
  assert not config_errors(tiny_model_config(**PYRAMID, **{'moe.residual': 'learned_softmax'}))
  assert not config_errors(tiny_model_config(**{'moe.experts_per_layer': '4,8', 'mesh.expert': 4}))


# ------------------------------------------------------------------------------------------ parameter tree
def test_one_group_keeps_the_standard_parameter_tree():
  """experts_per_layer naming moe.num_experts everywhere builds exactly today's model (names, shapes, axes)."""
  base = LanguageModel(tiny_model_config(**{'moe.residual': 'none'}))
  same = LanguageModel(tiny_model_config(**{'moe.experts_per_layer': '4x2'}))
  assert base.abstract_params() == same.abstract_params()
  assert base.param_logical_axes() == same.param_logical_axes()
  assert set(base.abstract_params()) == {'token_embedding', 'position_embedding', 'final_norm', 'expert_pool',
                                         'mixing_logits', 'block_0', 'block_1', 'block_2', 'block_3'}


def test_groups_get_named_siblings_with_the_same_logical_axes():
  model = LanguageModel(tiny_model_config(**PYRAMID, **{'pool.size': 2}))
  params = model.abstract_params()
  axes = model.param_logical_axes()
  assert params['expert_pool']['w_in'].shape == (2, 2, 16, 32)        # [P_g, E_g, D, F]
  assert params['expert_pool_e4']['w_in'].shape == (2, 4, 16, 32)
  assert params['mixing_logits']['alpha'].shape == (2, 2)             # [n_g, P_g]
  assert params['mixing_logits_e4']['alpha'].shape == (2, 2)
  assert axes['expert_pool'] == axes['expert_pool_e4']
  assert axes['mixing_logits'] == axes['mixing_logits_e4']
  routers = [params[f'block_{i}']['moe']['router']['kernel'].shape for i in range(4)]
  assert routers == [(16, 2), (16, 4), (16, 4), (16, 2)]


# ------------------------------------------------------------------------------------------ residual layer
class _ResidualMoe(nn.Module):
  """The MoE branch of a Residual-MoE block: the MoE layer and residual_moe_output, as Block calls them."""
  spec: ModelSpec
  mode: str

  @nn.compact
  def __call__(self, x_BLD, experts, mask_BL):
    y_BLD, _ = make_moe_ffn(self.spec, 'moe', experts.b_out.shape[-2])(x_BLD, experts, mask_BL, train=False)
    return residual_moe_output(self.mode, x_BLD, y_BLD, d_ff=self.spec.expert_d_ff, init_std=0.3,
                               out_init_std=0.3, dtype=jnp.float32, train=False)


def _gelu(x):
  """jax.nn.gelu's default (tanh approximation), in numpy."""
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _reference_moe(x_TD, router_DE, experts, top_k):
  """Top-k MoE token by token in numpy float64, no capacity: y_t = sum_{e in topk} g_e u_e(x_t); top-1 keeps p_e,
  top-k >= 2 renormalises over the chosen experts (docs/methods/routing.md)."""
  w = jax.tree.map(lambda a: np.asarray(a, np.float64), experts)
  y_TD = np.zeros_like(x_TD)
  for t, x_D in enumerate(x_TD):
    p_E = _softmax(x_D @ router_DE)
    chosen = np.argsort(-p_E)[:top_k]
    gates = p_E[chosen] / (p_E[chosen].sum() if top_k > 1 else 1.0)
    for g, e in zip(gates, chosen):
      y_TD[t] += g * (_gelu(x_D @ w.w_in[e] + w.b_in[e]) @ w.w_out[e] + w.b_out[e])
  return y_TD


def _reference_residual(mode, x_TD, p, experts, top_k):
  """Dense MLP + gate-weighted expert sum by hand, numpy float64 (p: the block's parameters)."""
  x_TD = np.asarray(x_TD, np.float64)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  mlp = p['residual_mlp']
  mlp_TD = _gelu(x_TD @ mlp['w_in'] + mlp['b_in']) @ mlp['w_out'] + mlp['b_out']
  moe_TD = _reference_moe(x_TD, p['moe']['router']['kernel'], experts, top_k)
  if mode == 'sum':
    return mlp_TD + moe_TD
  c_TC = _softmax(x_TD @ p['residual_coef']['kernel'] + p['residual_coef']['bias'])
  return c_TC[:, :1] * moe_TD + c_TC[:, 1:] * mlp_TD


@pytest.mark.parametrize('mode', ['sum', 'learned_softmax'])
@pytest.mark.parametrize('top_k', [1, 2])
def test_residual_layer_matches_reference(mode, top_k):
  spec = ModelSpec.from_config(tiny_model_config(**NO_DROPS, **{'moe.top_k': top_k}))
  x_BLD = jax.random.normal(jax.random.key(0), (2, 12, 16))
  mask_BL = jnp.ones((2, 12), bool)
  shapes = LanguageModel(tiny_model_config()).abstract_params()['expert_pool']
  experts = ExpertWeights(**_perturbed(jax.tree.map(lambda a: jnp.zeros(a.shape[1:]), shapes), scale=0.3))
  layer = _ResidualMoe(spec, mode)
  params = _perturbed(nn.meta.unbox(jax.jit(layer.init)(jax.random.key(2), x_BLD, experts, mask_BL)['params']),
                      scale=0.5)
  assert set(params) == {'moe', 'residual_mlp'} | ({'residual_coef'} if mode == 'learned_softmax' else set())
  got = jax.jit(layer.apply)({'params': params}, x_BLD, experts, mask_BL)
  want = _reference_residual(mode, x_BLD.reshape(24, 16), params, experts, top_k)
  np.testing.assert_allclose(got.reshape(24, 16), want, rtol=2e-5, atol=2e-5)


# ------------------------------------------------------------------------------------------ whole model
def _layer_norm(x, p):
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * p['scale'] + p['bias']


def _attention(x_LD, p, heads):
  """Per-head causal attention by hand, one sequence."""
  length, d = x_LD.shape
  k_dim = d // heads
  out = np.zeros((length, d))
  for h in range(heads):
    q, k, v = (x_LD @ p['qkv_kernel'][:, i, h] + p['qkv_bias'][i, h] for i in range(3))
    scores = np.where(np.tril(np.ones((length, length), bool)), (q @ k.T) / np.sqrt(k_dim), -np.inf)
    out = out + _softmax(scores) @ v @ p['out_kernel'][h]
  return out + p['out_bias']


def reference_hidden(model, params, tokens_BL, layer_experts):
  """The decoder by hand in numpy float64, one sequence at a time; MoE layer l uses layer_experts[l] (leading
  axis E_l), with no capacity limit, plus its Residual-MoE MLP."""
  spec = model.spec
  params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  out = []
  for tokens_L in tokens_BL:
    x = params['token_embedding'][tokens_L] + params['position_embedding'][:len(tokens_L)]
    for i in range(spec.model.num_layers):
      bp = params[f'block_{i}']
      x = x + _attention(_layer_norm(x, bp['attention_norm']), bp['attention'], spec.model.num_heads)
      h = _layer_norm(x, bp['ffn_norm'])
      if i in spec.moe_layers:
        y = _reference_moe(h, bp['moe']['router']['kernel'], layer_experts[spec.moe_layers.index(i)], spec.moe.top_k)
        if spec.moe.residual != 'none':
          y = _reference_residual(spec.moe.residual, h, bp, layer_experts[spec.moe_layers.index(i)], spec.moe.top_k)
      else:
        f = bp['ffn']
        y = _gelu(h @ f['w_in'] + f['b_in']) @ f['w_out'] + f['b_out']
      x = x + y
    out.append(_layer_norm(x, params['final_norm']))
  return np.stack(out)


def _by_hand_experts(params, mixing, temperature=1.0):
  """PYRAMID with pool.size 4 -> groups of P = 2: layers 0, 3 <- expert_pool entries 0, 1; layers 1, 2 <-
  expert_pool_e4 entries 0, 1 (fixed), or each group's pool mixed with its own logits row (learned)."""
  out = []
  for layer, (name, row) in enumerate([('', 0), ('_e4', 0), ('_e4', 1), ('', 1)]):
    pool = ExpertWeights(**params['expert_pool' + name])
    if mixing == 'fixed':
      out.append(pool.entry(row))
    else:
      out.append(reference_mix(pool, params['mixing_logits' + name]['alpha'][row], temperature))
  return out


@pytest.mark.parametrize('mixing, residual', [('fixed', 'sum'), ('learned', 'learned_softmax')])
def test_pyramid_model_matches_per_layer_reference(mixing, residual):
  """Fixed mixing with residual 'sum'; learned expert-level mixing (alpha [n_g, E_g, P_g]) with
  'learned_softmax'. The hidden states equal the by-hand decoder, materialize() the by-hand per-layer experts."""
  config = tiny_model_config(**PYRAMID, **NO_DROPS, **{'pool.size': 4, 'pool.mixing': mixing,
                                                       'moe.residual': residual, 'pool.granularity': 'expert'})
  model = LanguageModel(config)
  params = _perturbed(jax.jit(model.init_params)(jax.random.key(0)), scale=0.3)
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 1, 64)
  experts = _by_hand_experts(params, mixing)
  materialized = model.materialize(params)
  assert [m.w_in.shape[0] for m in materialized] == [2, 4, 4, 2]
  for got, want in zip(materialized, experts):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)
  got, auxes = jax.jit(lambda p, t: model.hidden(p, t))(params, tokens)
  want = reference_hidden(model, params, np.asarray(tokens), experts)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert all(float(a['dropped_fraction']) == 0 for a in auxes)
  if mixing == 'learned':   # mixing weights of the two groups: zero-padded [L_moe, E_max, P_max] rows
    w = model.mixing_weights(params)
    assert w.shape == (4, 4, 2)
    np.testing.assert_allclose(w[0, :2], jax.nn.softmax(params['mixing_logits']['alpha'][0], -1), rtol=1e-6)
    np.testing.assert_allclose(w[1], jax.nn.softmax(params['mixing_logits_e4']['alpha'][0], -1), rtol=1e-6)
    np.testing.assert_array_equal(w[3, 2:], 0.0)   # layer 3 has 2 experts: rows 2, 3 are padding
    np.testing.assert_allclose(np.stack([a['mixing_weights'] for a in auxes]), w, rtol=1e-6)


def test_fixed_mixing_weights_of_groups():
  fixed = LanguageModel(tiny_model_config(**PYRAMID, **{'pool.size': 4, 'pool.mixing': 'fixed'}))
  np.testing.assert_array_equal(fixed.mixing_weights(None), [[1, 0], [1, 0], [0, 1], [0, 1]])


# ------------------------------------------------------------------------------------------ accounting
@pytest.mark.parametrize('overrides', [
    {**PYRAMID, 'pool.size': 4, 'pool.mixing': 'fixed'},                                        # Pyramid-MoE
    {'moe.residual': 'sum', 'pool.mixing': 'fixed'},                                           # Residual-MoE
    {**PYRAMID, 'pool.size': 4, 'pool.mixing': 'fixed', 'moe.residual': 'learned_softmax'},    # PR-MoE
    {**PYRAMID, 'pool.size': 2, 'moe.residual': 'sum'},                                        # PR-MoE + SaMoE
    {**PYRAMID, 'pool.size': 3, 'pool.granularity': 'expert', 'moe.residual': 'learned_softmax',
     'model.tie_embeddings': False},
])
def test_analytic_counts_equal_the_model(overrides):
  config = tiny_model_config(**overrides)
  analytic = accounting.param_counts(config)
  summary = LanguageModel(config).param_summary()
  assert {k: analytic[k] for k in summary} == summary


def test_residual_and_pyramid_accounting_by_hand():
  d, f = 16, 32
  base = accounting.param_counts(tiny_model_config(**{'pool.mixing': 'fixed'}))
  res = accounting.param_counts(tiny_model_config(**{'pool.mixing': 'fixed', 'moe.residual': 'learned_softmax'}))
  assert res['total'] - base['total'] == 2 * (2 * d * f + f + d + 2 * d + 2) == res['residual_moe']
  flops = accounting.flops_per_token(tiny_model_config(**{'moe.residual': 'sum'}))
  assert flops['residual_moe'] == 2 * 2 * 2 * d * f
  pyr = accounting.param_counts(tiny_model_config(**PYRAMID, **{'pool.size': 4, 'pool.mixing': 'fixed'}))
  assert pyr['routers'] == d * (2 + 4 + 4 + 2) and pyr['expert_pool'] == 12 * pyr['params_per_expert']


def test_deepspeed_pr_moe_totals():
  """docs/methods/pr_moe.md: 350M+PR-MoE-32/64 "4B", 1.3B+PR-MoE-64/128 "31B" (DeepSpeed-MoE Table 1), from the
  analytic counter with the repo's GPT-3 presets (50304-row vocabulary, learned_softmax residual)."""
  small = accounting.param_counts(load_config_file('gpt3_350m_prmoe'))
  large = accounting.param_counts(load_config_file('gpt3_1p3b_prmoe'))
  assert small['total'] == 4_116_793_368 and round(small['total'] / 1e9) == 4
  assert large['total'] == 31_391_649_816 and round(large['total'] / 1e9) == 31
  assert small['params_per_expert'] == 8_393_728 and large['params_per_expert'] == 33_564_672
  assert small['expert_pool'] == 448 * small['params_per_expert']         # 10 x 32 + 2 x 64 experts
  assert large['expert_pool'] == 896 * large['params_per_expert']         # 10 x 64 + 2 x 128 experts
  assert small['residual_moe'] == 12 * (small['params_per_expert'] + 2 * 1024 + 2)
  assert not config_errors(load_config_file('gpt3_350m_prmoe'))
  assert not config_errors(load_config_file('gpt3_1p3b_prmoe'))


def test_describe_shows_per_layer_experts_and_placements():
  rows = describe.layer_rows(load_config_file('gpt3_350m_prmoe'))
  moe = [r for r in rows if r['ffn'] == 'moe']
  assert [r['num_experts'] for r in moe] == [32] * 10 + [64] * 2
  assert [r['pool_group'] for r in moe[-3:]] == ['expert_pool', 'expert_pool_e64', 'expert_pool_e64']
  assert [r['group_entry'] for r in moe[-2:]] == [0, 1] and moe[-1]['pool_entry'] == 11
  assert all(r['residual'] == 'learned_softmax' for r in moe)
  text = describe.format_text(describe.describe(load_config_file('gpt3_350m_prmoe')))
  assert 'Pyramid-MoE 10 x 32 experts' in text and 'E=64: C = 32 (train)' in text
  for name, blocks in (('tiny_first_half', [0, 1]), ('tiny_second_half', [2, 3]), ('tiny_moe', [1, 3])):
    assert [r['block'] for r in describe.layer_rows(load_config_file(name)) if r['ffn'] == 'moe'] == blocks
  for name in ('tiny_pyramid', 'tiny_residual_moe', 'tiny_prmoe', 'tiny_first_half', 'tiny_second_half'):
    config = load_config_file(name)
    assert describe.model_check(config, accounting.param_counts(config)) == 'match', name


# ------------------------------------------------------------------------------------------ causality, decoding
@pytest.mark.parametrize('overrides', [   # Pyramid-MoE with residual 'sum'; SaMoE + residual 'learned_softmax'
    {**PYRAMID, 'moe.residual': 'sum', 'pool.mixing': 'fixed', 'pool.size': 4},
    {'moe.residual': 'learned_softmax', 'pool.size': 2}])
def test_causal(overrides):
  assert_causal(tiny_model_config(**overrides))


def test_kv_cache_decoding_equals_the_naive_loop():
  """PR-MoE with learned mixing (two groups, learned_softmax residual) and dropped tokens (capacity factor 0.5,
  test_scorer's tiny model): greedy decoding with the KV cache equals a loop that reruns the whole prefix. The
  loop pads the prefix on the right to one length (one compilation): evaluation routing never lets padding change
  an earlier position (test_causal)."""
  from samoe_jax.models.decoding import greedy_generate, prompt_inputs   # pylint: disable=g-import-not-at-top
  from test_scorer import L, tiny   # pylint: disable=g-import-not-at-top
  model = LanguageModel(tiny(**{'moe.experts_per_layer': '2,4', 'moe.top_k': 1, 'pool.size': 2,
                                'moe.residual': 'learned_softmax'}))
  params = _perturbed(jax.jit(model.init_params)(jax.random.key(1)), scale=0.3)
  logits_fn = jax.jit(lambda p, t: model.logits(p, t, sequence_routing=True))
  rng, new = np.random.default_rng(0), 8
  prompts = [[int(t) for t in rng.integers(1, 300, n)] for n in (1, 7, 3, 19, 0)]
  got = greedy_generate(model, params, prompts, max_new_tokens=new, batch_size=3)
  for prompt, tokens in zip(prompts, got):
    inputs, want = list(prompt_inputs(prompt, L, new)), []
    for _ in range(new):
      padded = jnp.asarray([inputs + [0] * (L - len(inputs))], jnp.int32)
      want.append(int(np.argmax(np.asarray(logits_fn(params, padded))[0, len(inputs) - 1])))
      inputs.append(want[-1])
    assert tokens == want, len(prompt)


# ------------------------------------------------------------------------------------------ training
def test_tiny_prmoe_loss_falls(tmp_path):
  assert_loss_falls(shrink_for_training(load_config_file('tiny_prmoe')), tmp_path)
