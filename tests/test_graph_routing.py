"""Similarity- / Attention-Aware (S)MoE routing (samoe_jax/layers/graph_routing.py, docs/methods/graph_routing.md) and the routing
fluctuation tool (samoe_jax/analysis/routing_fluctuation.py), against plain Python loops over (i, j)."""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from method_checks import assert_causal, assert_loss_falls, load_config_file, shrink_for_training, tiny_model_config
from samoe_jax.models import accounting
from samoe_jax.training.config_checks import validate_config
from samoe_jax.layers.attention import CausalSelfAttention
from samoe_jax.layers.graph_routing import GraphConfig, GraphMixer
from samoe_jax.models.decoding import greedy_generate, prompt_inputs
from samoe_jax.models.model import EVAL, LanguageModel, token_mask


def softmax(v):
  v = np.asarray(v, np.float64)
  e = np.exp(v - v.max())
  return e / e.sum()


def reference_mix(p, mask, lam, *, x=None, w=None, tau=None, attention=None):
  """p~[b, i] = (1 - lam) p_i + lam sum_{real j <= i} S_ij p_j, one (b, i, j) at a time."""
  p = np.asarray(p, np.float64)
  out = np.zeros_like(p)
  for b in range(p.shape[0]):
    if attention is None:   # z_j = W_s^T x_j (M = W_s W_s^T) or x_j (M = I)
      z = [np.asarray(x[b, j], np.float64) @ (np.eye(x.shape[-1]) if w is None else np.asarray(w, np.float64))
           for j in range(p.shape[1])]
    for i in range(p.shape[1]):
      js = [j for j in range(i + 1) if mask[b, j]]
      if attention is None:
        weights = softmax([z[i] @ z[j] / tau for j in js])
      else:
        weights = np.array([attention[b, i, j] for j in js], np.float64)
        weights = weights / weights.sum()
      mixed = sum(wt * p[b, j] for wt, j in zip(weights, js))
      out[b, i] = (1 - lam) * p[b, i] + lam * mixed
  return out


def reference_attention(x, params, num_heads):
  """Head-averaged causal attention probabilities [B, L, L] from the module's q/k parameters, loop over i, j."""
  x = np.asarray(x, np.float64)
  w, bias = np.asarray(params['qkv_kernel'], np.float64), np.asarray(params['qkv_bias'], np.float64)
  b_, l_, _ = x.shape
  k_dim = w.shape[-1]
  out = np.zeros((b_, l_, l_))
  for b in range(b_):
    for h in range(num_heads):
      q = x[b] @ w[:, 0, h] + bias[0, h]
      k = x[b] @ w[:, 1, h] + bias[1, h]
      for i in range(l_):
        out[b, i, :i + 1] += softmax([q[i] @ k[j] / math.sqrt(k_dim) for j in range(i + 1)]) / num_heads
  return out


def _inputs(seed=0, b=2, l=7, d=6, e=4):
  k1, k2 = jax.random.split(jax.random.key(seed))
  p = jax.nn.softmax(2.0 * jax.random.normal(k1, (b, l, e)), -1)
  x = jax.random.normal(k2, (b, l, d))
  mask = np.ones((b, l), bool)
  mask[0, 3] = mask[1, 5:] = False   # a padding token inside row 0, trailing padding in row 1
  return p, x, jnp.asarray(mask)


@pytest.mark.parametrize('metric,lam,tau', [('identity', 1.0, 0.0), ('identity', 0.3, 0.7), ('learned', 0.6, 0.0)])
def test_similarity_mixing_equals_the_double_loop(metric, lam, tau):
  p, x, mask = _inputs()
  cfg = dataclasses.replace(GraphConfig.off(), kind='similarity', lam=lam, metric=metric, dim=3, temperature=tau)
  mixer = GraphMixer(cfg, init_std=0.5)
  variables = nn.meta.unbox(mixer.init(jax.random.key(3), p, x, mask))
  got = np.asarray(mixer.apply(variables, p, x, mask))
  w = variables['params']['similarity_kernel'] if metric == 'learned' else None
  width = 3 if metric == 'learned' else x.shape[-1]
  want = reference_mix(p, np.asarray(mask), lam, x=np.asarray(x), w=w, tau=tau or math.sqrt(width))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  real = np.asarray(mask)
  np.testing.assert_allclose(got.sum(-1)[real], 1.0, rtol=1e-5)   # still distributions


def test_attention_probs_of_the_module_and_attention_mixing():
  p, x, mask = _inputs(1)
  att = CausalSelfAttention(num_heads=2, init_std=0.5, out_init_std=0.5)
  variables = nn.meta.unbox(att.init(jax.random.key(0), x, train=False))
  bias = variables['params']['qkv_bias']
  variables['params']['qkv_bias'] = 0.5 * jax.random.normal(jax.random.key(4), bias.shape)   # non-zero biases
  y, probs = att.apply(variables, x, train=False, return_probs=True)
  np.testing.assert_allclose(np.asarray(y), np.asarray(att.apply(variables, x, train=False)), rtol=1e-6)
  want = reference_attention(x, variables['params'], 2)
  np.testing.assert_allclose(np.asarray(probs), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, rtol=1e-5)           # row-stochastic
  assert np.all(np.triu(np.asarray(probs)[0], 1) == 0)                            # causal
  mixer = GraphMixer(dataclasses.replace(GraphConfig.off(), kind='attention', lam=0.8))
  got = mixer.apply({}, p, x, mask, probs)
  np.testing.assert_allclose(np.asarray(got), reference_mix(p, np.asarray(mask), 0.8, attention=want),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('kind', ['similarity', 'attention'])
def test_padding_never_influences_real_tokens(kind):
  p, x, mask = _inputs(2)
  causal = jnp.where(jnp.tril(jnp.ones((7, 7))), 0.0, -1e9)
  att = jax.nn.softmax(jax.random.normal(jax.random.key(5), (2, 7, 7)) + causal, -1)
  mixer = GraphMixer(dataclasses.replace(GraphConfig.off(), kind=kind, lam=1.0))
  base = np.asarray(mixer.apply({}, p, x, mask, att))
  pad = ~np.asarray(mask)
  p2 = jnp.where(pad[..., None], jax.nn.softmax(jax.random.normal(jax.random.key(9), p.shape), -1), p)
  x2 = jnp.where(pad[..., None], 10.0 * jax.random.normal(jax.random.key(8), x.shape), x)
  att2 = jnp.where(pad[:, None, :], 5.0 * att, att)   # attention onto padding columns changes
  other = np.asarray(mixer.apply({}, p2, x2, mask, att2))
  np.testing.assert_allclose(other[np.asarray(mask)], base[np.asarray(mask)], rtol=1e-6, atol=1e-7)


def _config(kind, **overrides):
  return tiny_model_config(**{'moe.graph_routing': kind, **overrides})


def _capture(model, params, tokens):
  (_, auxes), state = model.module.apply({'params': params}, tokens, token_mask(tokens), train=False,
                                         capture_intermediates=True, mutable=['intermediates'])
  return auxes, state['intermediates']


@pytest.mark.parametrize('kind,extra', [('similarity', {'moe.similarity_metric': 'learned', 'moe.similarity_dim': 5,
                                                        'moe.graph_lambda': 0.7}),
                                        ('attention', {'moe.graph_lambda_learned': True, 'moe.graph_lambda': 0.4})])
def test_model_routes_on_the_hand_computed_mixture(kind, extra):
  """Inside the decoder: p~ from the block's own LN output / attention probabilities and router logits, by hand;
  aux router_entropy = H(p) and selection_entropy = H(p~) over real tokens."""
  config = _config(kind, **extra)
  model = LanguageModel(config)
  params = model.init_params(jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 1, 64).at[1, 9:].set(0)   # trailing padding in row 1
  auxes, inter = _capture(model, params, tokens)
  mask = np.asarray(token_mask(tokens))
  for n, layer in enumerate(model.spec.moe_layers):
    blk, moe_params = inter[f'block_{layer}'], params[f'block_{layer}']['moe']
    logits = np.asarray(blk['moe']['router']['__call__'][0], np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    if kind == 'similarity':
      x = np.asarray(blk['ffn_norm']['__call__'][0])
      want = reference_mix(p, mask, 0.7, x=x, w=moe_params['graph']['similarity_kernel'], tau=math.sqrt(5))
    else:
      a = reference_attention(blk['attention_norm']['__call__'][0], params[f'block_{layer}']['attention'], 2)
      lam = 1 / (1 + math.exp(-float(moe_params['graph']['lambda_logit'][0])))
      assert abs(lam - 0.4) < 1e-6
      want = reference_mix(p, mask, lam, attention=a)
    got = np.asarray(blk['moe']['graph']['__call__'][0])
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    h = lambda q: -np.sum(q * np.log(np.maximum(q, 1e-20)), -1)
    np.testing.assert_allclose(float(auxes[n]['selection_entropy']), h(want)[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(auxes[n]['router_entropy']), h(p)[mask].mean(), rtol=1e-5)


@pytest.mark.parametrize('kind', ['similarity', 'attention'])
def test_lambda_zero_is_the_plain_moe(kind):
  plain = LanguageModel(tiny_model_config())
  graph = LanguageModel(_config(kind, **{'moe.graph_lambda': 0.0, 'moe.similarity_metric': 'learned'}))
  params = plain.init_params(jax.random.key(0))
  graph_params = graph.init_params(jax.random.key(0))
  merged = dict(params)
  for layer in graph.spec.moe_layers:   # the same weights; the graph model only adds its W_s (similarity)
    k = f'block_{layer}'
    merged[k] = {**params[k], 'moe': {**params[k]['moe'], **{n: v for n, v in graph_params[k]['moe'].items()
                                                             if n == 'graph'}}}
  assert jax.tree.structure(merged) == jax.tree.structure(graph_params)
  tokens = jax.random.randint(jax.random.key(1), (3, 12), 1, 64)
  for seq in (False, True):
    a = plain.logits(params, tokens, sequence_routing=seq)
    b = graph.logits(merged, tokens, sequence_routing=seq)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-6)
  batch = {'decoder_input_tokens': tokens, 'decoder_target_tokens': tokens,
           'decoder_loss_weights': jnp.ones(tokens.shape)}
  la, ma = plain.loss_fn(params, batch, None, EVAL)
  lb, mb = graph.loss_fn(merged, batch, None, EVAL)
  np.testing.assert_allclose(float(lb), float(la), rtol=1e-6)
  for layer in graph.spec.moe_layers:
    np.testing.assert_allclose(float(mb[f'moe/layer{layer}/lb_loss']), float(ma[f'moe/layer{layer}/lb_loss']),
                               rtol=1e-6)
    np.testing.assert_allclose(float(mb[f'moe/layer{layer}/selection_entropy']),
                               float(ma[f'moe/layer{layer}/router_entropy']), rtol=1e-6)


@pytest.mark.parametrize('kind', ['similarity', 'attention'])
def test_causal(kind):
  assert_causal(_config(kind, **{'moe.graph_lambda': 0.9}))


@pytest.mark.parametrize('kind,extra', [('similarity', {'moe.similarity_metric': 'learned', 'moe.graph_lambda': 0.8}),
                                        ('attention', {})])
def test_kv_cache_decoding_equals_the_naive_loop(kind, extra):
  """greedy_generate (prefill + cached steps: each layer caches p, the token mask and z) against a loop that reruns
  the whole prefix with evaluation routing every step; capacity factor 0.5 so tokens are dropped too."""
  model = LanguageModel(_config(kind, **{'moe.capacity_factor_eval': 0.5, 'moe.min_capacity': 1, **extra}))
  params = model.init_params(jax.random.key(0))
  logits = jax.jit(lambda p, t: model.logits(p, t, sequence_routing=True))
  rng = np.random.default_rng(0)
  prompts = [[int(t) for t in rng.integers(1, 64, n)] for n in (1, 6, 8, 0)]
  new = 4
  got = greedy_generate(model, params, prompts, max_new_tokens=new, batch_size=4)   # rows of mixed lengths
  for prompt, tokens in zip(prompts, got):
    inputs = list(prompt_inputs(prompt, 12, new))
    want = []
    for _ in range(new):   # the prefix right-padded to 12 (one compilation; causality is tested above)
      padded = jnp.asarray([inputs + [0] * (12 - len(inputs))], jnp.int32)
      want.append(int(np.argmax(np.asarray(logits(params, padded)[0, len(inputs) - 1]))))
      inputs.append(want[-1])
    assert tokens == want, (kind, len(prompt))


def test_scores_do_not_depend_on_the_padded_length():
  model = LanguageModel(_config('attention'))
  params = model.init_params(jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 1, 64)
  full = np.asarray(model.logits(params, tokens, sequence_routing=True))
  short = np.asarray(model.logits(params, tokens[:, :7], sequence_routing=True))
  np.testing.assert_allclose(short, full[:, :7], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('overrides', [
    {'moe.graph_routing': 'similarity'},
    {'moe.graph_routing': 'similarity', 'moe.similarity_metric': 'learned', 'moe.similarity_dim': 7,
     'moe.graph_lambda_learned': True, 'moe.graph_lambda': 0.5},
    {'moe.graph_routing': 'attention', 'moe.graph_lambda_learned': True, 'moe.graph_lambda': 0.5}])
def test_accounting_matches_the_model(overrides):
  config = tiny_model_config(**overrides)
  counts, summary = accounting.param_counts(config), LanguageModel(config).param_summary()
  assert counts['total'] == summary['total'] and counts['routers'] == summary['routers']
  d, e, l, moe_layers = 16, 4, 12, 2
  graph = GraphConfig.from_moe_section(config.moe)
  extra = (d * 7 if graph.metric == 'learned' else 0) + (1 if graph.lam_learned else 0)
  assert counts['routers'] == moe_layers * (d * e + extra)
  flops = accounting.flops_per_token(config)
  per_layer = 2 * l * e + ((2 * l * graph.similarity_dim(d) + (2 * d * 7 if graph.metric == 'learned' else 0))
                           if graph.kind == 'similarity' else 0)
  assert flops['graph_routing'] == moe_layers * per_layer
  plain = accounting.flops_per_token(tiny_model_config())
  assert flops['forward'] == plain['forward'] + flops['graph_routing']


@pytest.mark.parametrize('overrides,message', [
    ({'moe.graph_routing': 'graph'}, "moe.graph_routing='graph': must be one of 'none', 'similarity', 'attention'"),
    ({'moe.graph_routing': 'similarity', 'moe.group_size': 6}, 'moe.group_size=6: must be 0 or data.seq_len=12'),
    ({'moe.graph_routing': 'attention', 'moe.graph_lambda': 1.5}, r'moe.graph_lambda=1.5: must lie in \[0.0, 1.0\]'),
    ({'moe.graph_routing': 'attention', 'moe.graph_lambda_learned': True, 'moe.graph_lambda': 1.0},
     'moe.graph_lambda=1.0: must lie in'),
    ({'moe.graph_routing': 'similarity', 'moe.similarity_metric': 'mahalanobis'},
     "moe.similarity_metric='mahalanobis': must be one of 'identity', 'learned'"),
    ({'moe.graph_routing': 'similarity', 'moe.similarity_temperature': -1.0}, 'moe.similarity_temperature=-1.0'),
    ({'moe.graph_routing': 'similarity', 'moe.similarity_dim': -2}, 'moe.similarity_dim=-2'),
    ({'moe.graph_routing': 'attention', 'moe.routing': 'expert_choice'},
     "moe.routing='expert_choice': must be 'token_choice' with moe.graph_routing='attention'"),
])
def test_validation_errors(overrides, message):
  with pytest.raises(ValueError, match=message):
    validate_config(tiny_model_config(**overrides))
  validate_config(tiny_model_config(**{'moe.graph_routing': 'similarity', 'moe.group_size': 12}))


def test_attention_config_trains(tmp_path):
  config = shrink_for_training(load_config_file('tiny_attention_moe'))
  assert config.moe.graph.kind == 'attention'
  assert_loss_falls(config, tmp_path)


def test_similarity_trains_and_fluctuation_tool_end_to_end(tmp_path):
  """Trains tiny_similarity_moe with 3 checkpoints, runs the tool, and recomputes each step's top-1 experts from
  the captured LN outputs and router logits with the double-loop reference."""
  from samoe_jax.analysis import routing_fluctuation
  from samoe_jax.data import pipeline
  from samoe_jax.evaluation import checkpoints
  from samoe_jax.sharding.mesh import make_mesh
  from samoe_jax.sharding.partitioner import Partitioner
  config = shrink_for_training(load_config_file('tiny_similarity_moe'), steps=30)
  config.train.checkpoint_every, config.train.keep_checkpoints = 10, 3
  assert_loss_falls(config, tmp_path, min_drop=0.4)
  report = routing_fluctuation.run(config, str(tmp_path), steps='all', batches=1)
  assert report['steps'] == [10, 20, 30] and len(report['transitions']) == 2
  for ext in ('json', 'md', 'png'):
    assert (tmp_path / 'analysis' / f'routing_fluctuation.{ext}').is_file()
  model = LanguageModel(config)
  partitioner = Partitioner(make_mesh(config.mesh))
  batch = pipeline.make_eval_batches(config.data, 1)[0]
  tokens = jnp.asarray(batch['decoder_input_tokens'])
  real = np.asarray(batch['decoder_loss_weights']).reshape(-1) > 0
  mask = np.asarray(token_mask(tokens))
  top1 = {}
  for step in (10, 20, 30):
    params = checkpoints.restore_params(model, partitioner, str(tmp_path), step)
    _, inter = _capture(model, params, tokens)
    per_layer = []
    for layer in model.spec.moe_layers:
      blk = inter[f'block_{layer}']
      logits = np.asarray(blk['moe']['router']['__call__'][0], np.float64)
      p = np.exp(logits - logits.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      x = np.asarray(blk['ffn_norm']['__call__'][0])
      mixed = reference_mix(p[:2], mask[:2], 1.0, x=x[:2], tau=math.sqrt(x.shape[-1]))   # 2 rows by loop
      np.testing.assert_allclose(np.asarray(blk['moe']['graph']['__call__'][0])[:2], mixed, rtol=1e-4, atol=1e-6)
      per_layer.append(np.argmax(np.asarray(blk['moe']['graph']['__call__'][0]), -1).reshape(-1))
      np.testing.assert_array_equal(per_layer[-1][:2 * mixed.shape[1]][real[:2 * mixed.shape[1]]],
                                    np.argmax(mixed, -1).reshape(-1)[real[:2 * mixed.shape[1]]])
    top1[step] = np.stack(per_layer)
  for t, (a, b) in zip(report['transitions'], ((10, 20), (20, 30))):
    changed = (top1[a] != top1[b])[:, real]
    assert t['fluctuation'] == pytest.approx(changed.mean(), abs=1e-12)
    for n, layer in enumerate(model.spec.moe_layers):
      assert t['per_layer'][str(layer)] == pytest.approx(changed[n].mean(), abs=1e-12)
  assert report['num_tokens'] == int(real.sum())
