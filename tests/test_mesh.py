"""Mesh construction, the Partitioner, and a train step on 4 fake CPU devices (a subprocess)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from samoe_jax.sharding.mesh import make_mesh, resolve_mesh_shape
from samoe_jax.sharding.partitioner import Partitioner

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_fill_axis_takes_the_remaining_devices():
  assert resolve_mesh_shape({'data': -1, 'expert': 2, 'model': 2}, 8) == (2, 2, 2)
  assert resolve_mesh_shape({'data': 4, 'expert': -1, 'model': 1}, 8) == (4, 2, 1)
  assert resolve_mesh_shape({'data': 2, 'expert': 2, 'model': 2}, 8) == (2, 2, 2)


@pytest.mark.parametrize('sizes, devices, message', [
    ({'data': 2, 'expert': 2, 'model': 1}, 8, r'data=2, expert=2, model=1 multiply to 4, but there are 8 devices'),
    ({'data': -1, 'expert': 3, 'model': 1}, 8, r'product 3\) do not divide the 8 available devices'),
    ({'data': -1, 'expert': -1, 'model': 1}, 8, r'at most one mesh axis may be -1'),
    ({'data': 0, 'expert': 1, 'model': 1}, 8, r'bad: \[\'data\'\]'),
    ({'data': 1, 'model': 1}, 1, r"lacks axes \['expert'\]"),
])
def test_bad_mesh_sizes_name_sizes_and_device_count(sizes, devices, message):
  with pytest.raises(ValueError, match=message):
    resolve_mesh_shape(sizes, devices)


def test_make_mesh_on_local_devices():
  mesh = make_mesh({'data': -1, 'expert': 1, 'model': 1})
  assert mesh.axis_names == ('data', 'expert', 'model')
  assert dict(mesh.shape) == {'data': jax.device_count(), 'expert': 1, 'model': 1}
  with pytest.raises(ValueError, match=f'multiply to 3, but there are {jax.device_count()} devices'):
    make_mesh({'data': 3, 'expert': 1, 'model': 1})


def test_partitioner_maps_logical_specs_and_batches():
  part = Partitioner(make_mesh({'data': -1, 'expert': 1, 'model': 1}))
  tree = {'w': P('pool', 'expert', 'embed', 'expert_mlp'), 'b': P('vocab', None)}
  specs = part.logical_to_mesh_spec(tree)
  assert specs == {'w': P(None, 'expert', None, 'model'), 'b': P('model', None)}
  assert part.logical_to_mesh(tree)['w'].spec == specs['w']
  assert part.data_sharding().spec == P(('data', 'expert'))
  batch = part.shard_batch({'x': np.arange(8, dtype=np.int32).reshape(4, 2)})
  assert batch['x'].sharding == part.data_sharding()
  np.testing.assert_array_equal(batch['x'], np.arange(8).reshape(4, 2))
  with pytest.raises(ValueError, match=r"mesh axes \['fsdp'\]"):
    Partitioner(part.mesh, rules=(('batch', 'fsdp'),))


def test_activate_turns_logical_constraints_into_sharding_constraints():
  part = Partitioner(make_mesh({'data': -1, 'expert': 1, 'model': 1}))

  def f(x):
    return nn.with_logical_constraint(x * 2, ('batch', 'embed'))

  fn = part.partition(f, in_shardings=part.data_sharding(), out_shardings=part.data_sharding())
  inside = fn.lower(jax.ShapeDtypeStruct((4, 8), jnp.float32)).as_text()
  outside = jax.jit(f).lower(jax.ShapeDtypeStruct((4, 8), jnp.float32)).as_text()
  assert 'sdy.sharding_constraint' in inside or '@Sharding' in inside
  assert 'sharding_constraint' not in outside and '@Sharding' not in outside
  np.testing.assert_allclose(fn(jnp.ones((4, 8))), 2.0)
  assert fn.cache_size() == 1


MULTI_DEVICE_SCRIPT = textwrap.dedent('''
    import importlib.util, tempfile
    import jax, numpy as np
    from jax.sharding import PartitionSpec as P
    from samoe_jax.models.model import LanguageModel
    from samoe_jax.sharding.mesh import make_mesh
    from samoe_jax.sharding.partitioner import Partitioner
    from samoe_jax.training import state as state_lib
    from samoe_jax.checkpointing.store import Checkpointer, run_meta
    from samoe_jax.training.optimizer import make_optimizer
    from samoe_jax.training.step import make_train_step
    from samoe_jax.training.step_options import StepOptions

    spec = importlib.util.spec_from_file_location('test_tiny', 'configs/test_tiny.py')
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    config = module.get_config()
    model = LanguageModel(config)
    axes = model.param_logical_axes()
    optimizer, schedule = make_optimizer(config.train, model.abstract_params(), axes)
    abstract = state_lib.abstract_state(model, optimizer)
    rng = jax.random.key(0)
    tokens = np.random.default_rng(0).integers(3, 259, (4, 16)).astype(np.int32)
    host_batch = {'decoder_input_tokens': np.pad(tokens[:, :-1], ((0, 0), (1, 0))),
                  'decoder_target_tokens': tokens, 'decoder_loss_weights': np.ones((4, 16), np.float32)}

    def setup(devices, expert):
      part = Partitioner(make_mesh({'data': -1, 'expert': expert, 'model': 1}, devices))
      shardings = state_lib.state_shardings(part, optimizer, abstract, axes)
      step = make_train_step(StepOptions(model, optimizer, schedule), part, shardings)
      return part, shardings, step

    part4, sh4, step4 = setup(jax.devices(), 2)
    assert dict(part4.mesh.shape) == {'data': 2, 'expert': 2, 'model': 1}, part4.mesh.shape
    pool = sh4.params['expert_pool']['w_in'].spec
    assert pool == P(None, 'expert', None, 'model'), pool
    mu = sh4.opt_state[1][0].mu['expert_pool']['w_in'].spec
    assert mu == pool, mu
    init = jax.jit(lambda r: state_lib.init_state(model, optimizer, r), out_shardings=sh4)
    with part4.activate():
      state = init(rng)
    state, metrics = step4(state, part4.shard_batch(host_batch), rng)
    assert len(state.params['expert_pool']['w_in'].sharding.device_set) == 4
    assert np.isfinite(float(metrics['loss']))

    directory = tempfile.mkdtemp()
    config.train.async_checkpoint = False
    ckpt = Checkpointer(directory, config.train)
    ckpt.save(1, state, {'position': 1}, run_meta(config, model.abstract_params()))
    ckpt.wait()
    part1, sh1, step1 = setup(jax.devices()[:1], 1)
    restored, data_state, _ = ckpt.restore(1, state_lib.with_shardings(abstract, sh1))
    ckpt.close()
    assert data_state == {'position': 1}
    assert restored.params['expert_pool']['w_in'].sharding.device_set == {jax.devices()[0]}
    next4 = step4(state, part4.shard_batch(host_batch), rng)[1]
    next1 = step1(restored, part1.shard_batch(host_batch), rng)[1]
    for key in ('loss', 'cross_entropy', 'grad_norm'):
      np.testing.assert_allclose(float(next4[key]), float(next1[key]), rtol=2e-5, err_msg=key)
    print('MULTI_DEVICE_OK')
''')


def test_train_step_on_four_devices_and_restore_onto_one():
  """Expert-sharded params/optimizer state on a (2, 2, 1) mesh; a checkpoint restores onto 1 device and the
  next step's loss and gradient norm match the sharded step's."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4',
             PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  result = subprocess.run([sys.executable, '-c', MULTI_DEVICE_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
  assert 'MULTI_DEVICE_OK' in result.stdout, result.stderr[-4000:]


SIZES = {'data': 2, 'expert': 4, 'model': 2}


@pytest.mark.parametrize('spec,shape,expected', [
    (P(None, 'model'), (32, 64), P(('data', 'expert'), 'model')),        # the free dimension
    (P(None, None), (16, 32), P(None, ('data', 'expert'))),              # the largest free dimension
    (P(None, None), (32, 32), P(('data', 'expert'), None)),              # the first among equals
    (P(None,), (12,), P(None,)),                                         # nothing divides by 8: replicated
    (P('model',), (64,), P(('model', 'data', 'expert'),)),               # no free dimension: split further
    (P('model',), (24,), P('model',)),                                   # 24 / 2 shards do not divide by 8
    (P(None, 'expert', None, 'model'), (2, 8, 32, 64), P(None, 'expert', None, 'model')),   # expert weight
    (P(), (), P()),
])
def test_fsdp_spec(spec, shape, expected):
  from samoe_jax.sharding.fsdp import fsdp_spec
  assert fsdp_spec(spec, shape, SIZES) == expected
  assert fsdp_spec(spec, shape, {'data': 1, 'expert': 1, 'model': 2}) == spec   # one data shard: unchanged


def test_fsdp_partitioner_changes_parameter_specs_only():
  """Partitioner(fsdp=True) rewrites parameter specs; the rules table (activation constraints) stays the same."""
  from samoe_jax.sharding import rules
  mesh = make_mesh({'data': 1, 'expert': 1, 'model': 1})
  plain, fsdp = Partitioner(mesh), Partitioner(mesh, fsdp=True)
  assert fsdp.rules == plain.rules == rules.LOGICAL_AXIS_RULES
  axes = {'w': P('embed', 'mlp')}
  shapes = {'w': jax.ShapeDtypeStruct((32, 64), jnp.float32)}
  assert plain.param_specs(axes, shapes) == fsdp.param_specs(axes, shapes) == {'w': P(None, 'model')}   # 1 device
