"""SaMoE's mixing schemes (layers/mixing.py): what each scheme answers, the logits' initialisations, the per-layer
mixing statistics, the logits' learning-rate multiplier (against plain AdamW at the scaled rate), exact resume with
it, and a checkpoint written before the schemes existed (tests/fixtures/checkpoint_pre_mixing) restoring."""

from __future__ import annotations

import json
import math
import pathlib
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util
from jax.sharding import PartitionSpec

from samoe_jax.config.sections import complete_config
from samoe_jax.layers.mixing import (MIXING_SCHEMES, FixedMixing, LearnedMixing, MixingLogits, mixing_for,
                                     mixing_statistics)
from samoe_jax.models.model import LanguageModel
from samoe_jax.training import loop
from samoe_jax.training.metrics_writer import read_metrics
from samoe_jax.training.optimizer import make_optimizer, make_schedule

FIXTURE = pathlib.Path(__file__).resolve().parent / 'fixtures' / 'checkpoint_pre_mixing'


def _pool(**kw) -> ml_collections.ConfigDict:
  base = dict(mixing='learned', granularity='layer', space='weight', temperature=1.0, init='uniform',
              one_hot_scale=3.0, random_init_std=1.0, lr_multiplier=1.0, target_reach=0.0)
  return ml_collections.ConfigDict({**base, **kw})


@pytest.mark.parametrize('mixing,space,expected', [
    ('fixed', 'weight', dict(learned=False, mixes_weights=False, mixes_outputs=False, selects_entries=True)),
    ('fixed', 'output', dict(learned=False, mixes_weights=False, mixes_outputs=False, selects_entries=True)),
    ('learned', 'weight', dict(learned=True, mixes_weights=True, mixes_outputs=False, selects_entries=False)),
    ('learned', 'output', dict(learned=True, mixes_weights=False, mixes_outputs=True, selects_entries=False)),
])
def test_each_scheme_answers_what_the_model_asks(mixing, space, expected):
  scheme = mixing_for(_pool(mixing=mixing, space=space))
  assert isinstance(scheme, MIXING_SCHEMES[mixing]) and scheme.name == mixing
  assert {k: getattr(scheme, k) for k in expected} == expected


def test_unknown_scheme_and_multipliers():
  with pytest.raises(ValueError, match=r"pool.mixing='soft': must be one of 'learned', 'fixed'"):
    mixing_for(_pool(mixing='soft'))
  assert mixing_for(_pool()).lr_multipliers == {}
  assert mixing_for(_pool(lr_multiplier=30.0)).lr_multipliers == {'mixing': 30.0}
  assert FixedMixing().lr_multipliers == {}
  assert mixing_for(_pool(init='random', lr_multiplier=10.0)).describe(2, 4, 'modulo') == (
      "SaMoE: learned layer-level weight-space mixing of a pool of 2 (init 'random', logits lr x10)")
  assert FixedMixing().describe(4, 4, 'modulo') == 'standard MoE (one pool entry per MoE layer, fixed)'


def _entropy_max_reference(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  ent = np.zeros(w.shape[:-1])
  for idx in np.ndindex(*w.shape[:-1]):
    ent[idx] = -sum(p * math.log(p) for p in w[idx] if p > 0)
  mx = w.max(axis=-1)
  return (ent.mean(-1), mx.mean(-1)) if w.ndim == 3 else (ent, mx)


@pytest.mark.parametrize('shape', [(3, 4), (2, 5, 3)])
def test_mixing_statistics_equal_the_definition(shape):
  w = np.asarray(jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(0), shape) * 2.0, axis=-1), np.float64)
  w[0, ..., -1] = 0.0   # a zero-padded entry (Pyramid-MoE groups of different P): contributes nothing
  w[0] /= w[0].sum(-1, keepdims=True)
  entropy, largest = mixing_statistics(jnp.asarray(w, jnp.float32))
  ref_entropy, ref_max = _entropy_max_reference(w)
  np.testing.assert_allclose(entropy, ref_entropy, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(largest, ref_max, rtol=1e-6)
  uniform_entropy, uniform_max = mixing_statistics(jnp.full((2, 4), 0.25))
  np.testing.assert_allclose(uniform_entropy, [math.log(4)] * 2, rtol=1e-6)
  np.testing.assert_allclose(uniform_max, [0.25, 0.25])


def _alpha(init: str, granularity: str = 'layer', seed: int = 0, **kw) -> np.ndarray:
  module = MixingLogits(num_moe_layers=kw.pop('layers', 3), pool_size=kw.pop('pool', 4), num_experts=2,
                        granularity=granularity, temperature=1.0, init_mode=init, init_entries=(0, 1, 3),
                        one_hot_scale=3.0, random_std=kw.pop('std', 1.0))
  variables = module.init(jax.random.PRNGKey(seed))
  return np.asarray(traverse_util.flatten_dict(jax.tree.map(
      lambda x: getattr(x, 'value', x), variables['params'], is_leaf=lambda x: hasattr(x, 'value')))[('alpha',)])


def test_logit_initialisations():
  np.testing.assert_array_equal(_alpha('uniform'), np.zeros((3, 4)))
  one_hot = np.zeros((3, 4))
  one_hot[[0, 1, 2], [0, 1, 3]] = 3.0           # each layer favours its own entry (init_entries)
  np.testing.assert_array_equal(_alpha('one_hot'), one_hot)
  np.testing.assert_array_equal(_alpha('one_hot', 'expert'), np.broadcast_to(one_hot[:, None], (3, 2, 4)))
  np.testing.assert_array_equal(_alpha('random', seed=1), _alpha('random', seed=1))   # from the params rng
  assert not np.array_equal(_alpha('random', seed=1), _alpha('random', seed=2))
  big = _alpha('random', layers=3, pool=400, std=0.5)   # 1200 draws of N(0, 0.25): std within ~4 sigma
  assert abs(big.std() - 0.5) < 0.5 * 4 / math.sqrt(2 * big.size) and abs(big.mean()) < 0.5 * 4 / math.sqrt(big.size)


def _train_cfg(**kw) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(learning_rate=1e-2, min_lr_ratio=0.1, warmup_steps=1, decay_steps=5, steps=5,
                                        b1=0.9, b2=0.95, weight_decay=0.1, grad_clip=1.0, moment_dtype='float32', **kw))


def test_lr_multiplier_is_adamw_at_the_scaled_rate_for_the_mixing_logits_only():
  """The optimizer with {'mixing': m} equals a reference: the jointly clipped gradients, then plain optax.adamw on
  the mixing logits at m x the schedule (no decay) and on the rest at the schedule (decayed matrix)."""
  m = 7.0
  params = {'alpha': jnp.zeros((2, 3)), 'w': jnp.ones((3, 4)) * 0.5}
  axes = {'alpha': PartitionSpec('moe_layer', 'mixing'), 'w': PartitionSpec('embed', 'mlp')}
  cfg = _train_cfg()
  opt, _ = make_optimizer(cfg, params, axes, lr_multipliers={'mixing': m})
  schedule = make_schedule(cfg)
  ref_alpha = optax.adamw(lambda c: m * schedule(c), b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0)
  ref_w = optax.adamw(schedule, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)
  state, sa, sw = opt.init(params), ref_alpha.init(params['alpha']), ref_w.init(params['w'])
  p, ref = params, dict(params)
  for i in range(4):
    grads = {'alpha': jnp.full((2, 3), 3.0 * (i + 1)) * jnp.arange(3.0), 'w': jnp.full((3, 4), -2.0)}
    updates, state = opt.update(grads, state, p)
    p = optax.apply_updates(p, updates)
    clipped = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())[0]
    ua, sa = ref_alpha.update(clipped['alpha'], sa, ref['alpha'])
    uw, sw = ref_w.update(clipped['w'], sw, ref['w'])
    ref = {'alpha': ref['alpha'] + ua, 'w': ref['w'] + uw}
  np.testing.assert_allclose(p['alpha'], ref['alpha'], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(p['w'], ref['w'], rtol=1e-6, atol=1e-7)
  assert float(jnp.abs(p['alpha']).max()) > 0.1   # the logits did move, m times as far per step as at m = 1
  # no multiplier: the state is the plain chain (checkpoints of runs without one are unchanged)
  plain, _ = make_optimizer(cfg, params, axes, lr_multipliers={'mixing': 1.0})
  assert jax.tree.structure(plain.init(params)) == jax.tree.structure(make_optimizer(cfg, params, axes)[0].init(params))


# ------------------------------------------------------------------------------------------ with the trainer
def _fixture_config(**overrides) -> ml_collections.ConfigDict:
  with open(FIXTURE / 'config.json') as f:
    config = complete_config(json.load(f))
  config.update_from_flattened_dict(overrides)
  return config


@pytest.fixture(scope='module')
def multiplier_runs(tmp_path_factory, compilation_cache):  # pylint: disable=unused-argument
  """The fixture's tiny SaMoE with random logits and a 30x logit rate: 4 steps at once, and 2 + a resume to 4."""
  base = tmp_path_factory.mktemp('mixing')
  knobs = {'pool.init': 'random', 'pool.lr_multiplier': 30.0, 'train.checkpoint_every': 2, 'train.log_every': 1,
           'train.eval_every': 4, 'train.keep_checkpoints': 2, 'train.decay_steps': 4}   # one schedule for both
  full, part = str(base / 'full'), str(base / 'part')
  loop.train(_fixture_config(**knobs, **{'train.steps': 4}), full)
  loop.train(_fixture_config(**knobs, **{'train.steps': 2}), part)
  loop.train(_fixture_config(**knobs, **{'train.steps': 4}), part)
  return full, part


def _final_params(workdir: str, config: ml_collections.ConfigDict):
  from samoe_jax.evaluation.checkpoints import restore_params   # pylint: disable=g-import-not-at-top
  from samoe_jax.sharding.partitioner import Partitioner  # pylint: disable=g-import-not-at-top
  from samoe_jax.sharding.mesh import make_mesh  # pylint: disable=g-import-not-at-top
  model = LanguageModel(config)
  return model, restore_params(model, Partitioner(make_mesh(config.mesh)), workdir, config.train.steps)


def test_a_run_with_the_multiplier_resumes_exactly_and_logs_mixing_statistics(multiplier_runs):
  full, part = multiplier_runs
  config = _fixture_config(**{'train.steps': 4, 'pool.init': 'random', 'pool.lr_multiplier': 30.0})
  model, p_full = _final_params(full, config)
  _, p_part = _final_params(part, config)
  for a, b in zip(jax.tree.leaves(p_full), jax.tree.leaves(p_part)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  records = [r for r in read_metrics(full, 'train')]
  assert [r['step'] for r in records] == [1, 2, 3, 4]
  for r in records:   # per MoE layer (block 1): entropy and largest weight of the logged mixture
    w = np.asarray(r['pool/mixing_weights'], np.float64)
    ref_entropy, ref_max = _entropy_max_reference(w)
    assert r['pool/layer1/mixing_entropy'] == pytest.approx(ref_entropy[0], rel=1e-5)
    assert r['pool/layer1/mixing_max'] == pytest.approx(ref_max[0], rel=1e-6)
  alpha = np.asarray(p_full['mixing_logits']['alpha'])
  np.testing.assert_allclose(np.asarray(model.mixing_weights(p_full)), np.asarray(jax.nn.softmax(alpha, -1)),
                             rtol=1e-6)


def test_a_checkpoint_written_before_the_mixing_schemes_restores_and_resumes(tmp_path, compilation_cache):  # pylint: disable=unused-argument
  """tests/fixtures/checkpoint_pre_mixing: the tiny SaMoE of configs/test_tiny.py trained 2 steps by the code
  before layers/mixing.py existed (commit e6248a3). Its parameters restore with the mixture it logged, and a run
  resumes from it."""
  workdir = tmp_path / 'run'
  shutil.copytree(FIXTURE, workdir)
  with open(FIXTURE / 'final_metrics.json') as f:
    logged = np.asarray(json.load(f)['pool/mixing_weights'])
  config = _fixture_config(**{'train.steps': 2})
  model, params = _final_params(str(workdir), config)
  np.testing.assert_allclose(np.asarray(model.mixing_weights(params)), logged, rtol=1e-6)
  final = loop.train(_fixture_config(**{'train.steps': 3, 'train.eval_every': 3}), str(workdir))
  assert final['step'] == 3
  assert [r['step'] for r in read_metrics(str(workdir), 'train')] == [1, 2, 3]


def test_the_mixing_probe_varies_one_knob_at_a_time():
  """`reproduce --suite=mixing` (experiments/mixing_probe.py): every config validates, all share one model and
  data shape, uniform routing drops < 1 %, and the SaMoE configs differ only in the pool's mixing knobs."""
  from samoe_jax.analysis.drop_floor import config_drop_floors  # pylint: disable=g-import-not-at-top
  from samoe_jax.training.config_checks import validate_config  # pylint: disable=g-import-not-at-top
  from samoe_jax.experiments import registry  # pylint: disable=g-import-not-at-top
  suite = registry.get_suite('mixing')
  configs = {s.name: suite.config(s, 0) for s in suite.configs}
  for c in configs.values():
    validate_config(c)
    assert max(config_drop_floors(c).values()) < 0.01
    assert (c.model.d_model, c.data.batch_size, c.data.seq_len, c.train.steps) == (64, 16, 128, 600)
  knobs = {name: (c.pool.size, c.pool.mixing, c.pool.init, c.pool.lr_multiplier) for name, c in configs.items()}
  assert knobs['samoe_lr1'] == (2, 'learned', 'uniform', 1.0)
  assert knobs['samoe_lr100'] == (2, 'learned', 'uniform', 100.0)
  assert knobs['samoe_random_lr10'] == (2, 'learned', 'random', 10.0)
  assert knobs['moe_e4'][:2] == (4, 'fixed') and knobs['tied'][:2] == (1, 'fixed')
  flat = {n: c.to_dict() for n, c in configs.items()}
  for name in ('samoe_lr10', 'samoe_lr100', 'samoe_onehot_lr10', 'samoe_random_lr10'):
    assert {k: v for k, v in flat[name].items() if k != 'pool'} == {k: v for k, v in flat['samoe_lr1'].items()
                                                                     if k != 'pool'}


def test_mixing_reach_is_the_summed_learning_rate_and_its_weight_bound():
  """training/optimizer.py:mixing_reach: R = m * sum_t lr_t over the run's steps (the schedule evaluated step by
  step here), and the largest weight R allows from uniform mixing: one logit up by R, the others down by R."""
  from samoe_jax.training.optimizer import mixing_reach  # pylint: disable=g-import-not-at-top
  cfg = _train_cfg()
  schedule = make_schedule(cfg)
  total = sum(float(schedule(t)) for t in range(cfg.steps))
  out = mixing_reach(cfg, 3.0, 0.5, 4)
  assert out['reach'] == pytest.approx(3.0 * total, rel=1e-6)
  logits = np.array([out['reach'], -out['reach'], -out['reach'], -out['reach']]) / 0.5
  assert out['max_weight_bound'] == pytest.approx(np.exp(logits[0]) / np.exp(logits).sum(), rel=1e-9)
  assert mixing_reach(cfg, 1.0, 1.0, 1)['max_weight_bound'] == 1.0


def test_target_reach_sets_the_multiplier_that_gives_that_reach():
  """pool.target_reach = R: the optimizer's mixing multiplier is R / (the reach at 1x), so the run's reach is R."""
  from samoe_jax.training.optimizer import mixing_reach, resolved_lr_multipliers  # pylint: disable=g-import-not-at-top
  cfg = _train_cfg()
  scheme = mixing_for(_pool(target_reach=10.0))
  m = resolved_lr_multipliers(scheme, cfg, 2)['mixing']
  assert mixing_reach(cfg, m, 1.0, 2)['reach'] == pytest.approx(10.0, rel=1e-6)
  assert resolved_lr_multipliers(mixing_for(_pool(lr_multiplier=4.0)), cfg, 2) == {'mixing': 4.0}
  assert resolved_lr_multipliers(mixing_for(_pool(mixing='fixed', target_reach=10.0)), cfg, 2) == {}
