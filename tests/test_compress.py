"""Post-training compression (samoe_jax/compress): alignment, grouping, merging, pruning, routing statistics, the
expert map, and compressed runs that restore, evaluate and train. Real models at tiny shapes; the exactness
checks compare the real model's logits before and after."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samoe_jax.compress import align, grouping, merge, methods, runs, stats
from samoe_jax.compress.experts import LayerExpertsNP, expert_output
from samoe_jax.config.expert_map import format_expert_map, parse_expert_map
from samoe_jax.training.config_checks import validate_config
from samoe_jax.models.model import LanguageModel, token_mask
from tests.config_files import tiny_config

FIXTURES = pathlib.Path(__file__).resolve().parent / 'fixtures' / 'eval'


def moe_config(**overrides):
  """test_tiny as a standard MoE: block 1 is MoE with 4 experts, top-2, its own experts (fixed mixing, P = 1)."""
  c = tiny_config({'pool.size': 1, 'pool.mixing': 'fixed', 'model.max_len': 32, 'data.seq_len': 32, **overrides})
  validate_config(c)
  return c


def random_experts(rng: np.random.Generator, e: int = 4, d: int = 6, f: int = 5) -> LayerExpertsNP:
  return LayerExpertsNP(rng.normal(size=(e, d, f)).astype(np.float32), rng.normal(size=(e, f)).astype(np.float32),
                        rng.normal(size=(e, f, d)).astype(np.float32), rng.normal(size=(e, d)).astype(np.float32))


def tokens(batch: int = 3, length: int = 32, seed: int = 0) -> jnp.ndarray:
  return jnp.asarray(np.random.default_rng(seed).integers(3, 259, size=(batch, length)), jnp.int32)


# ------------------------------------------------------------------------------------------------ alignment
def test_alignment_preserves_every_expert_and_recovers_a_known_permutation():
  rng = np.random.default_rng(0)
  experts = random_experts(rng)
  pi = rng.permutation(experts.w_in.shape[-1])
  experts.w_in[2], experts.b_in[2], experts.w_out[2] = (experts.w_in[0][:, pi], experts.b_in[0][pi],
                                                        experts.w_out[0][pi, :])   # expert 2 = permuted expert 0
  aligned, perms = align.align_layer(experts)
  x = rng.normal(size=(7, experts.w_in.shape[1]))
  for e in range(experts.num_experts):
    np.testing.assert_allclose(expert_output(aligned, e, x), expert_output(experts, e, x), rtol=1e-10, atol=1e-10)
  np.testing.assert_array_equal(perms[0], np.arange(len(pi)))
  np.testing.assert_array_equal(aligned.w_in[2], experts.w_in[0])   # undone exactly
  np.testing.assert_array_equal(aligned.w_out[2], experts.w_out[0])


# ------------------------------------------------------------------------------------------------- grouping
def test_similarity_dominant_groups_and_global_counts_on_known_inputs():
  logits = np.array([[1.0, 1.0, -1.0, 0.0], [2.0, 2.1, -2.0, 0.1], [0.5, 0.4, -0.5, 3.0]])
  sim = grouping.router_logit_similarity(logits)
  assert sim.shape == (4, 4) and np.allclose(np.diag(sim), 1.0) and np.allclose(sim, sim.T)
  assert sim[0, 1] > 0.99 and sim[0, 2] < 0.02            # parallel columns ~1, opposite ~0
  freq = np.array([0.4, 0.1, 0.2, 0.3])
  labels = grouping.dominant_groups(freq, sim, 2)           # cores: experts 0 and 3 (the two most used)
  assert labels[0] != labels[3] and labels[1] == labels[0]  # expert 1 is most similar to core 0
  np.testing.assert_array_equal(grouping.core_experts(labels, freq), [0, 3])
  # global budget 2 x 2 = 4 groups: layer 0's frequencies dominate, layer 1 keeps only its top expert + what ranks
  counts = grouping.global_group_counts([np.array([0.5, 0.3, 0.2, 0.0]), np.array([0.9, 0.05, 0.05, 0.0])], 2)
  assert counts == [3, 1] and sum(counts) == 4
  assert grouping.global_group_counts([freq, freq], 2, merged=[True, False]) == [2, 4]
  with pytest.raises(ValueError, match=r'groups=5 must be in \[1, 4\]'):
    grouping.global_group_counts([freq], 5)


def test_frequency_weighted_merge_and_summed_router_by_hand():
  rng = np.random.default_rng(1)
  experts = random_experts(rng)
  freq = np.array([0.5, 0.25, 0.0, 0.25])
  labels = np.array([0, 0, 1, 1])
  merged = merge.reduce_layer(experts, labels, freq, 'merge', align=False)
  np.testing.assert_allclose(merged.w_in[0], (2 * experts.w_in[0] + experts.w_in[1]) / 3, rtol=1e-6)
  np.testing.assert_allclose(merged.b_out[1], experts.b_out[3], rtol=1e-6)   # expert 2 unused: weight 0
  pruned = merge.reduce_layer(experts, labels, freq, 'prune')
  np.testing.assert_array_equal(pruned.w_out, experts.w_out[[0, 3]])
  unused = merge.frequency_weights(np.zeros(4), np.array([1, 2]))
  np.testing.assert_allclose(unused, [0.5, 0.5])
  kernel, bias = merge.summed_router(np.arange(8.0).reshape(2, 4), np.array([1.0, 2.0, 3.0, 4.0]), labels)
  np.testing.assert_array_equal(kernel, [[1.0, 5.0], [9.0, 13.0]])
  np.testing.assert_array_equal(bias, [3.0, 7.0])


# --------------------------------------------------------------------------------------- the compressed model
@pytest.fixture(scope='module')
def moe_source():
  config = moe_config()
  model = LanguageModel(config)
  return config, model, jax.device_get(model.init_params(jax.random.key(3)))


def compressed_logits(source, layers, x):
  config = runs.compressed_config(source, layers)
  validate_config(config)
  model = LanguageModel(config)
  return model.logits(runs.compressed_params(source, layers, model), x), config


def test_merging_identical_experts_and_alignment_are_exact_in_the_model(moe_source):
  config, model, params = moe_source
  params = jax.tree.map(np.array, params)
  pool = params['expert_pool']
  pi = np.random.default_rng(2).permutation(pool['w_in'].shape[-1])
  for src, dst in ((0, 1), (2, 3)):   # expert 1 = expert 0 and expert 3 = expert 2, hidden units permuted
    pool['w_in'][0, dst], pool['b_in'][0, dst] = pool['w_in'][0, src][:, pi], pool['b_in'][0, src][pi]
    pool['w_out'][0, dst], pool['b_out'][0, dst] = pool['w_out'][0, src][pi, :], pool['b_out'][0, src]
  source = runs.source_from_params(config, params)
  x = tokens()
  want = model.logits(params, x)
  labels = [np.array([0, 0, 1, 1])]
  freq = np.array([0.1, 0.4, 0.3, 0.2])
  layers = runs.CompressedLayers([merge.reduce_layer(source.layers[0], labels[0], freq, 'merge')], labels, 'map')
  got, compressed = compressed_logits(source, layers, x)
  assert compressed.moe.experts_per_layer == '2' and compressed.moe.expert_map == '0,0,1,1'
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
  unaligned = merge.reduce_layer(source.layers[0], labels[0], freq, 'merge', align=False)
  off, _ = compressed_logits(source, runs.CompressedLayers([unaligned], labels, 'map'), x)
  assert float(jnp.max(jnp.abs(off - want))) > 1e-3   # without alignment the merge is not the same function


def test_pruning_experts_no_token_uses_is_exact(moe_source):
  config = moe_config(**{'moe.router_bias': True})
  model = LanguageModel(config)
  params = jax.tree.map(np.array, jax.device_get(model.init_params(jax.random.key(4))))
  params['block_1']['moe']['router']['bias'][:] = [0.0, 0.0, -1e4, -1e4]   # experts 2 and 3 are never chosen
  x = tokens(seed=5)
  source = runs.source_from_params(config, params)
  batch_stats = stats.collect(source, [{'decoder_input_tokens': np.asarray(x)}])
  np.testing.assert_array_equal(batch_stats[0].counts_E[2:], [0, 0])
  layers = methods.uncurl_layers(source, batch_stats, 2, 'prune', 'map')
  np.testing.assert_array_equal(layers.experts[0].w_in, source.layers[0].w_in[[0, 1]])   # the used ones kept
  got, _ = compressed_logits(source, layers, x)
  np.testing.assert_allclose(got, model.logits(params, x), rtol=1e-5, atol=1e-5)


def test_statistics_equal_a_plain_loop(moe_source):
  config, model, params = moe_source
  source = runs.source_from_params(config, params)
  x = np.array(tokens(batch=2, length=32, seed=6))
  x[1, 20:] = 0   # padding: not a token
  got = stats.collect(source, [{'decoder_input_tokens': x}])[0]
  counts, norms, logits = np.zeros(4), [[] for _ in range(4)], []
  kernel = np.asarray(params['block_1']['moe']['router']['kernel'], np.float64)
  for row in range(2):   # one sequence at a time, one token at a time
    h = stats.moe_inputs(model, params, x[row:row + 1])[1][0]
    for t in range(32):
      if t > 0 and x[row, t] == 0:
        continue
      logit = h[t].astype(np.float64) @ kernel
      logits.append(logit)
      for e in np.argsort(-logit, kind='stable')[:2]:
        counts[e] += 1
        norms[e].append(np.linalg.norm(expert_output(source.layers[0], e, h[t][None])))
  assert got.tokens == 32 + 20
  np.testing.assert_array_equal(got.counts_E, counts)
  np.testing.assert_allclose(got.frequency_E, counts / counts.sum())
  np.testing.assert_allclose(got.logits_TE, np.array(logits), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got.output_norm_E, [np.mean(n) if n else np.nan for n in norms], rtol=1e-4)


def test_expert_map_identity_is_the_plain_model_and_bad_maps_are_named(moe_source):
  config, model, params = moe_source
  mapped = moe_config(**{'moe.expert_map': '0,1,2,3'})
  x = tokens(seed=7)
  np.testing.assert_allclose(LanguageModel(mapped).logits(params, x), model.logits(params, x), rtol=1e-6, atol=1e-6)
  assert parse_expert_map('0,0,1;1,0', (2, 2), 1) == ((0, 0, 1), (1, 0))
  assert format_expert_map(((0, 0, 1), (1, 0))) == '0,0,1;1,0'
  with pytest.raises(ValueError, match=r"moe.expert_map='0,0,1': map 0 must use each of the layer's 3 stored"):
    parse_expert_map('0,0,1', (3,), 1)
  with pytest.raises(ValueError, match=r'gives 2 map\(s\) but the model has 1 MoE layer'):
    parse_expert_map('0,1;0,1', (2,), 1)
  with pytest.raises(ValueError, match=r"moe.expert_map='0,x'"):
    validate_config(moe_config(**{'moe.expert_map': '0,x'}))


def test_scratch_baseline_config_has_e_over_r_experts_and_the_sources_recipe():
  source = moe_config(**{'train.steps': 7, 'init.from_workdir': '/elsewhere'})
  half, quarter = methods.scratch_config(source, 2), methods.scratch_config(source, 4)
  assert (half.moe.num_experts, half.moe.top_k, half.train.steps, half.train.seed) == (2, 2, 7, source.train.seed)
  assert (quarter.moe.num_experts, quarter.moe.top_k) == (1, 1)   # top_k capped at the one remaining expert
  assert half.init.from_workdir == '' and source.moe.num_experts == 4   # the source config is not modified
  validate_config(half)
  validate_config(quarter)


def test_bad_factors_and_runs_are_refused_before_any_work(moe_source):
  config, _, params = moe_source
  source = runs.source_from_params(config, params)
  with pytest.raises(ValueError, match=r'pruning factor 3 does not divide the expert count\(s\) \[4\]'):
    methods.check_factor(source, 3)
  with pytest.raises(ValueError, match=r"pruning factor 4 with router 'sum' leaves 1 expert\(s\).*moe.top_k=2"):
    methods.check_factor(source, 4, 'sum')
  with pytest.raises(ValueError, match=r'is a dense model'):
    runs.check_compressible(tiny_config({'model.layer_plan': 'none'}), 'runs/dense')
  with pytest.raises(ValueError, match=r'already compressed'):
    runs.check_compressible(moe_config(**{'moe.expert_map': '0,1,2,3'}), 'runs/x')
