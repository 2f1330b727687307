"""Initialising a run from another run's checkpoint (samoe_jax/training/init_from.py, docs/methods/upcycling.md):
sparse upcycling of a dense checkpoint into an MoE / a SaMoE pool, the reduced-depth student from the teacher's
bottom layers, 'same', errors, and resume never re-initialising.

The reference for upcycling is the dense model itself: every expert is the block's dense MLP and top-2 gates are
renormalised to sum to 1, so with nothing dropped the MoE's logits must equal the dense model's. The reference for
'bottom_layers' is a truncated teacher built by hand from the teacher's Block modules.
"""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from method_checks import assert_loss_falls, load_config_file, shrink_for_training

from samoe_jax.models import accounting
from samoe_jax.training.config_checks import validate_config
from samoe_jax.evaluation.checkpoints import restore_params
from samoe_jax.layers.mlp import LayerNorm
from samoe_jax.models.model import LanguageModel, token_mask
from samoe_jax.models.transformer import Block
from samoe_jax.sharding.mesh import make_mesh
from samoe_jax.sharding.partitioner import Partitioner
from samoe_jax.training import init_from, loop

SOURCE_STEPS = 6


def _trained(tmp_path_factory, name: str) -> tuple[str, ml_collections.ConfigDict]:
  config = shrink_for_training(load_config_file(name), steps=SOURCE_STEPS)
  workdir = str(tmp_path_factory.mktemp(name))
  loop.train(config, workdir)
  return workdir, config


@pytest.fixture(scope='module')
def dense_run(tmp_path_factory):
  return _trained(tmp_path_factory, 'tiny_dense')


@pytest.fixture(scope='module')
def moe_run(tmp_path_factory):
  return _trained(tmp_path_factory, 'tiny_moe')


def _student(name: str, source: str, **overrides) -> ml_collections.ConfigDict:
  c = shrink_for_training(load_config_file(name), steps=3)
  c.init.from_workdir = source
  c.train.warmup_steps = 1
  c.moe.capacity_factor_train = c.moe.capacity_factor_eval = 8.0   # nothing is dropped
  c.update_from_flattened_dict(overrides)
  return c


def _initial_params(config: ml_collections.ConfigDict, workdir: str):
  run = loop.build_run(config, workdir)
  state, _, step = loop.initial_state(run)
  return run, state.params, step


def _tokens(config, seed: int = 0):
  return jax.random.randint(jax.random.key(seed), (4, config.data.seq_len), 1, config.model.vocab_size)


_SOURCE_PARAMS = {}


def _source_logits(source_dir: str, source_config, tokens):
  """(the source model's logits, its restored params); params restored once per source run."""
  model = LanguageModel(source_config)
  if source_dir not in _SOURCE_PARAMS:
    partitioner = Partitioner(make_mesh(source_config.mesh))
    _SOURCE_PARAMS[source_dir] = restore_params(model, partitioner, source_dir, SOURCE_STEPS)
  params = _SOURCE_PARAMS[source_dir]
  return (None if tokens is None else np.asarray(jax.jit(model.logits)(params, tokens))), params


@pytest.mark.parametrize('name,overrides', [
    ('tiny_upcycled_moe', {}),                                              # MoE top-2, P = 2 fixed
    ('tiny_upcycled_samoe', {'pool.one_hot_scale': 40.0}),                  # SaMoE learned, one-hot mixing
])
def test_upcycled_logits_equal_dense(dense_run, tmp_path, name, overrides):
  source_dir, source_config = dense_run
  config = _student(name, source_dir, **overrides)
  run, params, step = _initial_params(config, str(tmp_path))
  assert step == 0
  tokens = _tokens(config)
  dense_logits, dense_params = _source_logits(source_dir, source_config, tokens)
  moe_logits = np.asarray(jax.jit(run.model.logits)(params, tokens))
  np.testing.assert_allclose(moe_logits, dense_logits, atol=1e-5, rtol=1e-5)
  # every expert of pool entry j is block 2j+1's dense MLP (modulo assignment: block 1 -> 0, block 3 -> 1)
  for j, block in enumerate((1, 3)):
    for e in range(config.moe.num_experts):
      np.testing.assert_array_equal(np.asarray(params['expert_pool']['w_in'][j, e]),
                                    np.asarray(dense_params[f'block_{block}']['ffn']['w_in']))
  np.testing.assert_array_equal(np.asarray(params['block_0']['ffn']['w_out']),
                                np.asarray(dense_params['block_0']['ffn']['w_out']))
  # routers fresh: the run's own random initialisation
  fresh = jax.jit(run.model.init_params)(jax.random.key(config.train.seed))
  np.testing.assert_array_equal(np.asarray(params['block_1']['moe']['router']['kernel']),
                                np.asarray(fresh['block_1']['moe']['router']['kernel']))


def test_upcycle_shared_entry_averages_and_noise(dense_run, tmp_path):
  source_dir, source_config = dense_run
  config = _student('tiny_upcycled_samoe', source_dir, **{'pool.size': 1, 'init.noise_std': 0.01})
  _, params, _ = _initial_params(config, str(tmp_path))
  _, dense = _source_logits(source_dir, source_config, _tokens(config))
  mean_DF = (np.asarray(dense['block_1']['ffn']['w_in']) + np.asarray(dense['block_3']['ffn']['w_in'])) / 2
  diff_EDF = np.asarray(params['expert_pool']['w_in'][0]) - mean_DF[None]
  assert abs(diff_EDF.std() - 0.01) < 0.001 and abs(diff_EDF.mean()) < 0.001
  assert not np.allclose(diff_EDF[0], diff_EDF[1])   # each expert gets its own noise


def _truncated_teacher_logits(teacher: LanguageModel, params, tokens_BL, num_layers: int) -> np.ndarray:
  """Teacher blocks 0..num_layers-1 applied one by one, then the final norm and the tied output layer."""
  spec = teacher.spec
  x_BLD = jnp.take(params['token_embedding'], tokens_BL, axis=0) + params['position_embedding'][:tokens_BL.shape[1]]
  experts = teacher.layer_experts(params)
  for i in range(num_layers):
    x_BLD, _ = Block(spec).apply({'params': params[f'block_{i}']}, x_BLD, experts.get(i), token_mask(tokens_BL),
                                 False)
  h_BLD = LayerNorm().apply({'params': params['final_norm']}, x_BLD)
  return np.asarray(jnp.einsum('bld,vd->blv', h_BLD, params['token_embedding']))


def test_bottom_layers_student_equals_truncated_teacher(moe_run, tmp_path):
  teacher_dir, teacher_config = moe_run
  config = _student('tiny_mos_student', teacher_dir)
  config.distill.teacher_workdir = ''
  run, params, _ = _initial_params(config, str(tmp_path))
  tokens = _tokens(config, 1)
  _, teacher_params = _source_logits(teacher_dir, teacher_config, tokens)
  same_capacity = ml_collections.ConfigDict(teacher_config.to_dict())
  same_capacity.moe.capacity_factor_eval = config.moe.capacity_factor_eval
  want = _truncated_teacher_logits(LanguageModel(same_capacity), teacher_params, tokens, 3)
  got = np.asarray(jax.jit(run.model.logits)(params, tokens))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  # the 4-layer teacher itself differs (its block 3 is dropped)
  assert not np.allclose(got, np.asarray(LanguageModel(teacher_config).logits(teacher_params, tokens)), atol=1e-3)


def test_same_copies_everything(moe_run, tmp_path):
  teacher_dir, teacher_config = moe_run
  config = ml_collections.ConfigDict(teacher_config.to_dict())
  config.init.from_workdir, config.init.mode = teacher_dir, 'same'
  _, params, _ = _initial_params(config, str(tmp_path))
  _, teacher_params = _source_logits(teacher_dir, teacher_config, _tokens(config))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), jax.device_get(teacher_params))


def _build(config: ml_collections.ConfigDict, source_dir: str, source_config) -> None:
  """init_from.build_params against the restored source, with this model's abstract params (no compile)."""
  model = LanguageModel(config)
  _, src_params = _source_logits(source_dir, source_config, None)
  init_from.build_params(config.init.mode, model, LanguageModel(source_config), model.abstract_params(), src_params)


def test_errors_name_parameter_and_shapes(dense_run, moe_run, tmp_path):
  source_dir, source_config = dense_run
  config = _student('tiny_upcycled_moe', source_dir, **{'moe.expert_d_ff': 32})
  with pytest.raises(ValueError, match=r'block_1/ffn/b_in has shape \(64,\), but expert_pool/b_in needs \(32,\)'):
    _build(config, *dense_run)
  config = _student('tiny_moe', source_dir, **{'init.mode': 'same'})
  with pytest.raises(ValueError, match=r"init.mode='same'.*(has no parameter|lacks)"):
    _build(config, *dense_run)
  config = _student('tiny_dense', source_dir, **{'init.mode': 'same', 'model.max_len': 64})
  with pytest.raises(ValueError, match=r'position_embedding has shape \(32, 32\) in the source but \(64, 32\)'):
    _build(config, *dense_run)
  config = _student('tiny_mos_student', moe_run[0], **{'model.layer_plan': 'MDM'})
  with pytest.raises(ValueError, match=r"MoE blocks \[0, 2\] must be the source's MoE blocks below 3: \[1\]"):
    _build(config, *moe_run)
  config = _student('tiny_upcycled_moe', source_dir, **{'model.vocab_size': 300})
  with pytest.raises(ValueError, match='source vocabulary'):
    init_from.source_config(config)
  config = _student('tiny_upcycled_moe', str(tmp_path / 'missing'))
  with pytest.raises(ValueError, match='does not exist'):
    init_from.source_config(config)
  bad = _student('tiny_upcycled_moe', source_dir, **{'init.mode': 'deep', 'init.noise_std': -1.0})
  with pytest.raises(ValueError, match=r"init.mode='deep'.*\n.*init.noise_std=-1.0"):
    validate_config(bad)
  with pytest.raises(ValueError, match="init.mode='upcycle'.*needs MoE layers"):
    validate_config(_student('tiny_dense', source_dir, **{'init.mode': 'upcycle'}))
  with pytest.raises(ValueError, match="pool.init='uniform'"):
    validate_config(_student('tiny_upcycled_samoe', source_dir, **{'pool.init': 'uniform'}))
  # the trainer reports the same through a real run (missing source directory)
  with pytest.raises(ValueError, match='does not exist'):
    loop.train(_student('tiny_upcycled_moe', str(tmp_path / 'missing')), str(tmp_path / 'run'))


def test_upcycled_moe_trains_and_resume_does_not_reinitialise(dense_run, tmp_path):
  source_dir, _ = dense_run
  config = shrink_for_training(load_config_file('tiny_upcycled_moe'))
  config.init.from_workdir = source_dir
  workdir = str(tmp_path / 'run')
  assert_loss_falls(config, workdir, min_drop=0.2)
  steps = config.train.steps
  moved = str(tmp_path / 'moved_source')
  shutil.move(source_dir, moved)   # the source is gone: a resumed run must not need it
  try:
    run, params, step = _initial_params(config, workdir)
  finally:
    shutil.move(moved, source_dir)
  assert step == steps
  saved = restore_params(run.model, run.partitioner, workdir, steps)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), jax.device_get(saved))
  _, dense = _source_logits(*dense_run[:2], None)
  for e in range(config.moe.num_experts):   # trained away from the upcycled copies
    assert not np.allclose(np.asarray(params['expert_pool']['w_in'][0, e]), np.asarray(dense['block_1']['ffn']['w_in']))


def test_configs_accounting():
  """The upcycled models are the tiny MoE / SaMoE (their causality is tested with those configs and in
  tests/test_distill.py); init changes parameter values only."""
  for name in ('tiny_upcycled_moe', 'tiny_upcycled_samoe'):
    config = load_config_file(name)
    assert accounting.param_counts(config)['total'] == LanguageModel(config).param_summary()['total']
