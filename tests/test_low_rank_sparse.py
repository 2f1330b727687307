"""Low-rank plus sparse experts W = U V + S and the progressive pruning of S (MC-SMoE's compression stage, LoSparse):
the SVD factorisation, the model's function before and after factorising, the cubic schedule and the pruner
against plain loops, and a real training run that prunes to the target and resumes exactly."""

from __future__ import annotations

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from samoe_jax.models import accounting
from samoe_jax.compress import low_rank, runs
from samoe_jax.training.config_checks import config_errors, validate_config
from samoe_jax.models.model import LanguageModel
from samoe_jax.training import loop, sparse_pruning, state as state_lib
from samoe_jax.training.sparse_pruning import PruningSchedule
from tests.config_files import tiny_config


def moe_config(**overrides):
  """test_tiny (d_model 32, expert width 64; block 1 MoE with 4 experts, top-2) at length 32."""
  c = tiny_config({'model.max_len': 32, 'data.seq_len': 32, **overrides})
  validate_config(c)
  return c


def test_factorize_full_rank_is_exact_and_truncation_is_the_best_rank_r():
  w = np.random.default_rng(0).normal(size=(3, 6, 5)).astype(np.float32)
  left, right, sparse = low_rank.factorize(w, 5)
  assert left.shape == (3, 6, 5) and right.shape == (3, 5, 5)
  np.testing.assert_allclose(left @ right, w, atol=1e-5)          # full rank: U V alone is W
  assert not sparse.any()                                        # rounding noise is not stored
  left, right, sparse = low_rank.factorize(w, 2)
  np.testing.assert_allclose(left @ right + sparse, w, atol=1e-5)  # S carries the rest
  singular = np.linalg.svd(w.astype(np.float64), compute_uv=False)
  for i in range(3):   # Eckart-Young: the residual of the best rank-2 approximation
    np.testing.assert_allclose(np.linalg.norm(w[i] - left[i] @ right[i]), np.sqrt((singular[i, 2:] ** 2).sum()),
                               rtol=1e-4)


@pytest.mark.parametrize('overrides', [{'pool.size': 1, 'pool.mixing': 'fixed'},       # standard MoE
                                       {'pool.size': 2, 'pool.mixing': 'learned'}],   # SaMoE, mixed pool
                         ids=['moe', 'samoe'])
def test_low_rank_plus_sparse_model_computes_the_dense_models_function(overrides):
  config = moe_config(**overrides)
  model = LanguageModel(config)
  params = jax.device_get(model.init_params(jax.random.key(1)))
  x = jnp.asarray(np.random.default_rng(0).integers(3, 259, size=(2, 32)), jnp.int32)
  reference = jax.jit(model.logits)(params, x)
  pools = [g.pool_name for g in model.spec.groups]
  for rank in (32, 3):   # full rank (min(D, F) = 32) and a truncated rank: U V + S is W either way
    lr_config = low_rank.low_rank_config(config, rank, 0.0)
    validate_config(lr_config)
    lr_model = LanguageModel(lr_config)
    lr_params = low_rank.low_rank_params(params, pools, rank)
    assert jax.tree.structure(lr_params) == jax.tree.structure(lr_model.abstract_params())
    lr_logits = jax.jit(lr_model.logits)
    np.testing.assert_allclose(lr_logits(lr_params, x), reference, atol=2e-5)
    np.testing.assert_allclose(np.asarray(lr_model.materialize(lr_params)[0].w_in),
                               np.asarray(model.materialize(params)[0].w_in), atol=2e-6)
    without_s = {**lr_params, 'expert_pool': {k: (np.zeros_like(v) if k.endswith('_sparse') else v)
                                              for k, v in lr_params['expert_pool'].items()}}
    gap = np.abs(np.asarray(lr_logits(without_s, x)) - np.asarray(reference)).max()
    if rank == 32:   # full rank with zero sparsity is exact without S too
      assert gap < 2e-5
    else:            # a truncated U V alone is not W: S is really used
      assert gap > 1e-4


def test_accounting_counts_the_stored_arrays_and_the_compressed_size():
  config = moe_config(**{'pool.size': 1, 'pool.mixing': 'fixed', 'low_rank_sparse.rank': 4,
                         'low_rank_sparse.sparsity': 0.75})
  counts, summary = accounting.param_counts(config), LanguageModel(config).param_summary()
  assert counts['total'] == summary['total'] and counts['expert_pool'] == summary['expert_pool']
  d, f, e = 32, 64, 4
  per_expert = 2 * 4 * (d + f) + 0.25 * 2 * d * f + f + d    # U, V, kept S, biases
  assert counts['expert_pool_compressed'] == e * per_expert
  assert counts['total_compressed'] == counts['total'] - counts['expert_pool'] + e * per_expert
  flops = accounting.flops_per_token(config)
  assert flops['moe_experts_low_rank_sparse'] == 2 * 2 * 2 * (4 * (d + f) + 0.25 * d * f)   # top-2, 2 matrices


def test_bad_low_rank_settings_are_named():
  lines = config_errors(tiny_config({'low_rank_sparse.rank': 33, 'low_rank_sparse.sparsity': 1.0,
                                      'low_rank_sparse.initial_warmup': 0.6, 'low_rank_sparse.final_warmup': 0.5,
                                     'low_rank_sparse.mask_every': 0}))
  text = '\n'.join(lines)
  assert 'low_rank_sparse.rank=33: must be at most min(model.d_model, expert width) = 32' in text
  assert 'low_rank_sparse.sparsity=1.0: must lie in [0, 1)' in text
  assert 'initial_warmup + final_warmup = 1.1: must be < 1' in text
  assert 'low_rank_sparse.mask_every=0: must be an integer >= 1' in text
  lines = config_errors(tiny_config({'low_rank_sparse.sparsity': 0.5}))
  assert lines == ["low_rank_sparse.sparsity=0.5: needs low_rank_sparse.rank >= 1 (only the residual S of "
                   "low-rank experts is pruned)"]
  for rank in (0, 33):   # --compress without --rank (0), and a rank above min(d_model, expert width)
    with pytest.raises(ValueError, match=rf'--rank={rank}: '):
      low_rank.check_low_rank(moe_config(), 'run', rank, 0.0)
  dense = moe_config(**{'model.layer_plan': 'none'})
  with pytest.raises(ValueError, match="'run' is a dense model"):
    low_rank.check_low_rank(dense, 'run', 4, 0.9)
  with pytest.raises(ValueError, match=r'--sparsity=0.9 needs --finetune_steps > 0'):
    low_rank.check_low_rank(moe_config(), 'run', 4, 0.9, finetune_steps=0)
  with pytest.raises(ValueError, match='already stores low-rank experts'):
    low_rank.check_low_rank(moe_config(**{'low_rank_sparse.rank': 4}), 'run', 4, 0.9)


def test_cubic_schedule_by_hand():
  s = PruningSchedule(sparsity=0.9, total_steps=100, initial_warmup=0.1, final_warmup=0.3, mask_every=10)
  assert (s.start, s.end) == (10, 70)
  for t, expected in ((1, 1.0), (10, 1.0), (40, 0.1 + 0.9 * 0.5 ** 3), (70, 0.1), (100, 0.1)):
    np.testing.assert_allclose(float(s.density(t)), expected, rtol=1e-6)
  pruned = [t for t in range(1, 101) if bool(s.prunes_at(t))]
  assert pruned == [20, 30, 40, 50, 60, 70] + list(range(71, 101))


def _reference_pruning(params, grads_seq, lr, sparsity, beta1, beta2):
  """A plain numpy loop of SGD + PLATON importance + global pruning at the hand-written schedule of
  total 8, start 2, end 6, mask_every 2 (prunes after updates 4, 6, 7 and 8)."""
  p = {k: v.astype(np.float64) for k, v in params.items()}
  sparse = [k for k in p if k.endswith('_sparse')]
  ipt_bar = {k: np.zeros_like(p[k]) for k in sparse}
  unc_bar = {k: np.zeros_like(p[k]) for k in sparse}
  for t, g in enumerate(grads_seq, start=1):
    for k in sparse:
      ipt = np.abs(p[k] * g[k])
      ipt_bar[k] = beta1 * ipt_bar[k] + (1 - beta1) * ipt
      unc_bar[k] = beta2 * unc_bar[k] + (1 - beta2) * np.abs(ipt - ipt_bar[k])
    p = {k: p[k] - lr * g[k] for k in p}
    if t in (4, 6, 7, 8):
      density = 1 - sparsity if t >= 6 else (1 - sparsity) + sparsity * (1 - (t - 2) / 4) ** 3
      scores = np.concatenate([(ipt_bar[k] * unc_bar[k]).ravel() for k in sparse])
      k_pruned = math.floor(scores.size * (1 - density))
      threshold = np.sort(scores)[k_pruned - 1]
      for k in sparse:
        p[k] = np.where(ipt_bar[k] * unc_bar[k] > threshold, p[k], 0.0)
  return p


def test_pruner_equals_a_plain_loop_and_reaches_the_target_exactly():
  rng = np.random.default_rng(0)
  shapes = {'w_in_sparse': (2, 3, 4), 'w_out_sparse': (2, 4, 3), 'w_in_left': (2, 3, 2), 'b_in': (2, 4)}
  params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  grads_seq = [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()} for _ in range(8)]
  schedule = PruningSchedule(sparsity=0.75, total_steps=8, initial_warmup=0.25, final_warmup=0.25, mask_every=2)
  tx = sparse_pruning.pruning(optax.sgd(0.1), schedule, 0.85, 0.95)
  tree = {'expert_pool': jax.tree.map(jnp.asarray, params)}
  state = tx.init(tree)
  step = jax.jit(tx.update)
  for g in grads_seq:
    updates, state = step({'expert_pool': jax.tree.map(jnp.asarray, g)}, state, tree)
    tree = optax.apply_updates(tree, updates)
  expected = _reference_pruning(params, grads_seq, 0.1, 0.75, 0.85, 0.95)
  for k in shapes:
    np.testing.assert_allclose(np.asarray(tree['expert_pool'][k]), expected[k], atol=1e-5, err_msg=k)
  total = 2 * 3 * 4 * 2
  nonzero = sum(int(np.count_nonzero(tree['expert_pool'][k])) for k in ('w_in_sparse', 'w_out_sparse'))
  assert nonzero == total - math.floor(total * 0.75)
  assert sparse_pruning.sparse_density(tree) == nonzero / total
  assert int(state.count) == 8 and state.importance['expert_pool']['b_in'].shape == ()   # placeholders


@pytest.fixture(scope='module')
def pruned_runs(tmp_path_factory, compilation_cache):  # pylint: disable=unused-argument
  """A standard MoE run (step 0) compressed to rank-4 U V + S, then fine-tuned 6 steps with S pruned to 50 %,
  uninterrupted and as 3 + 3 steps."""
  root = tmp_path_factory.mktemp('low_rank_sparse')
  source_config = moe_config(**{'pool.size': 1, 'pool.mixing': 'fixed'})
  model = LanguageModel(source_config)
  runs.write_run(str(root / 'source'), source_config, jax.device_get(jax.jit(model.init_params)(jax.random.key(3))),
                 {'method': 'none (a test source)'})
  lr_dir = low_rank.write_low_rank_run(str(root / 'source'), str(root / 'low_rank'), 4, 0.5)
  assert low_rank.write_low_rank_run(str(root / 'source'), lr_dir, 4, 0.5) == lr_dir   # reused, not rewritten
  with pytest.raises(ValueError, match='holds a different compressed run'):
    low_rank.write_low_rank_run(str(root / 'source'), lr_dir, 8, 0.5)
  base = {'pool.size': 1, 'pool.mixing': 'fixed', 'low_rank_sparse.rank': 4, 'low_rank_sparse.sparsity': 0.5,
          'low_rank_sparse.initial_warmup': 0.0, 'low_rank_sparse.final_warmup': 0.34,
          'low_rank_sparse.mask_every': 2, 'train.decay_steps': 6, 'train.checkpoint_every': 3,
          'train.steps': 6, 'train.eval_every': 6, 'init.from_workdir': lr_dir}
  full = loop.train(moe_config(**base), str(root / 'full'))
  loop.train(moe_config(**{**base, 'train.steps': 3}), str(root / 'part'))
  resumed = loop.train(moe_config(**base), str(root / 'part'))
  return root, full, resumed


def test_training_prunes_s_to_the_target_and_resumes_exactly(pruned_runs):
  from samoe_jax.compress.sweep import stored_expert_entries
  root, full, resumed = pruned_runs
  assert full['step'] == 6 and resumed['resumed_from_step'] == 3 and np.isfinite(full['train/loss'])
  measured = stored_expert_entries(str(root / 'full'))
  total = 4 * 2 * 32 * 64   # every S entry: 4 experts, w_in and w_out
  assert measured['density'] == (total - math.floor(total * 0.5)) / total
  again = stored_expert_entries(str(root / 'part'))
  assert again == measured
  full_metrics = [json.loads(l) for l in (root / 'full' / 'metrics.jsonl').read_text().splitlines()]
  part_metrics = [json.loads(l) for l in (root / 'part' / 'metrics.jsonl').read_text().splitlines()]
  losses = lambda rows: [r['train/loss'] for r in rows if 'train/loss' in r]  # noqa: E731
  assert losses(part_metrics) == losses(full_metrics)


def test_pruner_state_is_sharded_like_its_parameters():
  config = moe_config(**{'pool.size': 1, 'pool.mixing': 'fixed', 'low_rank_sparse.rank': 4,
                         'low_rank_sparse.sparsity': 0.5})
  model = LanguageModel(config)
  optimizer = sparse_pruning.with_pruning(optax.adamw(1e-3), config)
  abstract = state_lib.abstract_state(model, optimizer)
  axes = state_lib.state_logical_axes(optimizer, abstract, model.param_logical_axes())
  pool_axes = model.param_logical_axes()['expert_pool']
  assert axes.opt_state.importance['expert_pool']['w_in_sparse'] == pool_axes['w_in_sparse']
  assert axes.opt_state.importance['expert_pool']['b_in'] == jax.sharding.PartitionSpec()   # scalar placeholder
