"""Eight-device checks, run in their own process by tests/test_multidevice.py (never imported by pytest).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice_checks.py OUT.json

For the dense, standard-MoE and SaMoE variants of a tiny config, one real train step (AdamW, clipping, donated
state) on meshes (data, expert, model) = 8x1x1, 2x4x1, 1x4x2 and 1x8x1 is compared with the same step on one
device; it also records the parameter / optimizer-state shardings, the collectives of the compiled step, and the
per-device bytes of the expert pool; and a checkpoint saved on 2x4x1 is restored onto 1x8x1 and onto 4 devices.
With mesh.fsdp=True (FSDP_MESHES) it also records, per state leaf, the bytes one device holds (measured from the
arrays' addressable shards), and a checkpoint saved with FSDP is restored without it and vice versa. Results go
to OUT.json; the assertions live in the pytest file.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile

import jax
import numpy as np

from samoe_jax.config.presets import set_sharing
from samoe_jax.config.defaults import get_base_config
from samoe_jax.models.model import TRAIN, LanguageModel
from samoe_jax.sharding.mesh import make_mesh
from samoe_jax.sharding.partitioner import Partitioner
from samoe_jax.training import optimizer as optimizer_lib
from samoe_jax.training import state as state_lib
from samoe_jax.checkpointing.store import Checkpointer, run_meta
from samoe_jax.training.step import make_train_step
from samoe_jax.training.step_options import StepOptions

MESHES = ((8, 1, 1), (2, 4, 1), (1, 4, 2), (1, 8, 1))
FSDP_MESHES = ((8, 1, 1), (2, 4, 1))
KINDS = ('dense', 'moe', 'samoe')
COLLECTIVES = ('all-to-all', 'all-gather', 'all-reduce', 'reduce-scatter', 'collective-permute')


def tiny(kind: str, mesh: tuple[int, int, int], fsdp: bool = False):
  c = get_base_config()
  c.model.vocab_size, c.model.d_model, c.model.num_layers, c.model.num_heads, c.model.d_ff = 256, 32, 4, 4, 64
  c.model.max_len = c.data.seq_len = 16
  c.data.batch_size, c.data.vocabulary = 8, 'byte'
  c.moe.num_experts, c.moe.top_k = 8, 2
  c.moe.capacity_factor_train = c.moe.capacity_factor_eval = 1.0   # some tokens are dropped
  c.train.warmup_steps, c.train.steps = 1, 10
  c.mesh.data, c.mesh.expert, c.mesh.model = mesh
  c.mesh.fsdp = fsdp
  set_sharing(c, kind, num_moe_layers=2)
  return c


def batch(config) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  b, l = config.data.batch_size, config.data.seq_len
  tokens = rng.integers(1, config.model.vocab_size, size=(b, l + 1), dtype=np.int32)
  weights = np.ones((b, l), np.float32)
  weights[-1, -5:] = 0.0   # a little padding
  return {'decoder_input_tokens': tokens[:, :-1], 'decoder_target_tokens': tokens[:, 1:],
          'decoder_loss_weights': weights}


def build(config, devices):
  """(model, partitioner, optimizer, abstract state, state shardings, jitted train step) on a mesh over devices."""
  model = LanguageModel(config)
  partitioner = Partitioner(make_mesh(config.mesh, devices), fsdp=config.mesh.fsdp)
  axes = model.param_logical_axes()
  optimizer, schedule = optimizer_lib.make_optimizer(config.train, model.abstract_params(), axes)
  abstract = state_lib.abstract_state(model, optimizer)
  shardings = state_lib.state_shardings(partitioner, optimizer, abstract, axes)
  step_fn = make_train_step(StepOptions(model, optimizer, schedule), partitioner, shardings)
  return model, partitioner, optimizer, abstract, shardings, step_fn


def init(model, optimizer, shardings):
  return jax.jit(lambda r: state_lib.init_state(model, optimizer, r), out_shardings=shardings)(jax.random.key(0))


def leaf_bytes(tree) -> dict[str, list[int]]:
  """{path: [bytes of the whole array, bytes of each device's shard (all devices: one value when equal)]}."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    shard_bytes = sorted({s.data.nbytes for s in leaf.addressable_shards})
    out[jax.tree_util.keystr(path)] = [int(leaf.nbytes)] + [int(b) for b in shard_bytes]
  return out


def one_step(config, devices, initial=None, with_grads: bool = True) -> dict:
  """Runs one train step on a mesh over `devices` from `initial` (a host TrainState, placed with the mesh's
  shardings; None: initialised here); returns host copies of its results and what it compiled to. with_grads=False
  skips the separate gradient computation (a second compilation; see `first_moment`)."""
  model, partitioner, optimizer, abstract, shardings, step_fn = build(config, devices)
  with partitioner.activate():
    state = init(model, optimizer, shardings) if initial is None else jax.device_put(initial, shardings)
    initial_host = jax.device_get(state) if initial is None else None   # before the step donates it
    state_bytes = {'params': leaf_bytes(state.params), 'opt_state': leaf_bytes(state.opt_state)}
    pool_shards = ({str(s.device): s.data.nbytes for s in state.params['expert_pool']['w_in'].addressable_shards}
                   if 'expert_pool' in state.params else {})
    data = partitioner.shard_batch(batch(config))
    grads = None
    if with_grads:
      grad_fn = jax.jit(lambda p, b: jax.grad(lambda q: model.loss_fn(q, b, None, TRAIN)[0])(p),
                        in_shardings=(shardings.params, partitioner.data_sharding()), out_shardings=shardings.params)
      grads = jax.tree.map(np.asarray, jax.device_get(grad_fn(state.params, data)))
    compiled = step_fn.lower(state, data, jax.random.key(1)).compile()
    new_state, metrics = compiled(state, data, jax.random.key(1))
    hlo = compiled.as_text()
  specs = jax.tree.map(lambda s: str(s.spec), shardings.params)
  opt_specs = [str(s.spec) for s in jax.tree.leaves(shardings.opt_state)]
  return {
      'loss': float(metrics['loss']), 'grad_norm': float(metrics['grad_norm']),
      'params': jax.tree.map(np.asarray, jax.device_get(new_state.params)), 'grads': grads,
      'param_specs': specs, 'opt_specs': opt_specs,
      'collectives': {c: len(re.findall(rf'\b{c}(?:-start)?\(', hlo)) for c in COLLECTIVES},
      'all_gather_shapes': sorted(set(re.findall(r'= \w+\[([\d,]*)\][^ ]* all-gather(?:-start)?\(', hlo))),
      # The pool's arrays [P, E, ...] and one layer's effective experts [E, ...], as shape strings.
      'expert_weight_shapes': sorted({','.join(map(str, a.shape[i:])) for a in jax.tree.leaves(
          abstract.params.get('expert_pool', {})) for i in (0, 1)}),
      'pool_bytes_per_device': pool_shards, 'initial_state': initial_host, 'state_bytes': state_bytes,
      'new_state': jax.device_get(new_state),
  }


def restore_across_meshes(workdir: str) -> dict:
  """Trains 2 steps of SaMoE on 2x4x1, checkpoints, takes a 3rd step; restores that checkpoint onto 1x8x1 (8
  devices) and onto 1x4x1 (4 devices) and takes the 3rd step there. Returns the 3rd-step losses and the largest
  parameter difference right after each restore."""
  devices = jax.devices()
  config = tiny('samoe', (2, 4, 1))
  model, partitioner, optimizer, abstract, shardings, step_fn = build(config, devices)
  checkpointer = Checkpointer(workdir, config.train)
  with partitioner.activate():
    state = init(model, optimizer, shardings)
    data = partitioner.shard_batch(batch(config))
    for _ in range(2):
      state, _ = step_fn(state, data, jax.random.key(1))
    checkpointer.save(2, state, {'epoch': 0}, run_meta(config, abstract.params))
    checkpointer.wait()
    saved_params = jax.tree.map(np.asarray, jax.device_get(state.params))
    _, metrics = step_fn(state, data, jax.random.key(1))
    out = {'2x4x1': float(metrics['loss'])}
  checkpointer.close()
  for name, mesh, devs in (('1x8x1', (1, 8, 1), devices), ('1x4x1', (1, 4, 1), devices[:4])):
    config = tiny('samoe', mesh)
    model, partitioner, optimizer, abstract, shardings, step_fn = build(config, devs)
    checkpointer = Checkpointer(workdir, config.train)
    with partitioner.activate():
      restored, _, _ = checkpointer.restore(2, state_lib.with_shardings(abstract, shardings))
      out[f'{name}_restored_params_max_abs_diff'] = max(jax.tree.leaves(jax.tree.map(
          lambda a, b: float(np.max(np.abs(np.asarray(a) - b))), jax.device_get(restored.params), saved_params)))
      out[f'{name}_pool_spec'] = str(restored.params['expert_pool']['w_in'].sharding.spec)
      _, metrics = step_fn(restored, partitioner.shard_batch(batch(config)), jax.random.key(1))
      out[name] = float(metrics['loss'])
    checkpointer.close()
  return out


def restore_with_and_without_fsdp(workdir: str, trained) -> dict:
  """`trained` (a host TrainState of SaMoE after one step) is placed on 2x4x1 with FSDP, checkpointed and restored
  without FSDP; and placed without FSDP, checkpointed and restored with it. Per direction: whether every state leaf
  is bit-equal to `trained` and whether the restored arrays carry the target run's shardings."""
  devices = jax.devices()
  runs = {fsdp: build(tiny('samoe', (2, 4, 1), fsdp), devices) for fsdp in (True, False)}
  out = {}
  for saved_with in (True, False):
    config = tiny('samoe', (2, 4, 1), saved_with)
    _, partitioner, _, abstract, shardings, _ = runs[saved_with]
    checkpointer = Checkpointer(os.path.join(workdir, f'fsdp_{saved_with}'), config.train)
    with partitioner.activate():
      checkpointer.save(1, jax.device_put(trained, shardings), {'epoch': 0}, run_meta(config, abstract.params))
      checkpointer.wait()
    checkpointer.close()
    _, partitioner, _, abstract, shardings, _ = runs[not saved_with]
    checkpointer = Checkpointer(os.path.join(workdir, f'fsdp_{saved_with}'), config.train)
    with partitioner.activate():
      restored, _, _ = checkpointer.restore(1, state_lib.with_shardings(abstract, shardings))
    checkpointer.close()
    out['fsdp_to_replicated' if saved_with else 'replicated_to_fsdp'] = {
        'bit_equal': all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
                         zip(jax.tree.leaves(jax.device_get(restored)), jax.tree.leaves(trained))),
        'target_shardings': [str(a.sharding.spec) for a in jax.tree.leaves(restored)] ==
                            [str(t.spec) for t in jax.tree.leaves(shardings)],
        'pool_spec': str(restored.params['expert_pool']['w_in'].sharding.spec),
        'embedding_spec': str(restored.params['token_embedding'].sharding.spec),
    }
  return out


def first_moment(state):
  """Adam's mu after the first step from zero moments: (1 - b1) x the clipped gradient, leaf by leaf, so comparing
  it compares every (clipped) gradient leaf without compiling the gradient on its own."""
  adam = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, 'mu')) if hasattr(s, 'mu')]
  return jax.tree.map(np.asarray, adam[0].mu)


def max_rel_diff(a, b) -> float:
  diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(x - y)) / (np.max(np.abs(y)) + 1e-12)), a, b)
  return max(jax.tree.leaves(diffs))


def main(out_path: str) -> None:
  devices = jax.devices()
  assert len(devices) == 8, f'expected 8 host devices, got {len(devices)}: set XLA_FLAGS'
  results = {}
  trained = None
  for kind in KINDS:
    reference = one_step(tiny(kind, (1, 1, 1)), devices[:1])
    cases = [(mesh, False) for mesh in MESHES] + [(mesh, True) for mesh in FSDP_MESHES]
    for mesh, fsdp in cases:   # the same initial state as the reference, placed with the mesh's shardings
      got = one_step(tiny(kind, mesh, fsdp), devices, reference['initial_state'], with_grads=not fsdp)
      if kind == 'samoe' and fsdp and mesh == (2, 4, 1):
        trained = got['new_state']
      results[f'{kind}/{"fsdp/" if fsdp else ""}{"x".join(map(str, mesh))}'] = {
          'loss': got['loss'], 'reference_loss': reference['loss'],
          'grad_norm': got['grad_norm'], 'reference_grad_norm': reference['grad_norm'],
          'params_max_rel_diff': max_rel_diff(got['params'], reference['params']),
          'grads_max_rel_diff': max_rel_diff(got['grads'], reference['grads']) if not fsdp else None,
          'first_moment_max_rel_diff': max_rel_diff(first_moment(got['new_state']),
                                                    first_moment(reference['new_state'])),
          'param_specs': got['param_specs'], 'opt_specs': got['opt_specs'],
          'collectives': got['collectives'], 'pool_bytes_per_device': got['pool_bytes_per_device'],
          'all_gather_shapes': got['all_gather_shapes'], 'expert_weight_shapes': got['expert_weight_shapes'],
          'reference_pool_bytes': sum(reference['pool_bytes_per_device'].values()),
          'state_bytes': got['state_bytes'],
      }
      print(kind, mesh, 'fsdp' if fsdp else '', 'loss', got['loss'], reference['loss'], 'collectives', got['collectives'], flush=True)
  with tempfile.TemporaryDirectory() as workdir:
    results['restore'] = restore_across_meshes(workdir)
    results['restore_fsdp'] = restore_with_and_without_fsdp(workdir, trained)
  print('restore', results['restore'], results['restore_fsdp'], flush=True)
  with open(out_path, 'w') as f:
    json.dump(results, f, indent=1, sort_keys=True)


if __name__ == '__main__':
  main(sys.argv[1])
