"""Eight-device checks of gradient accumulation, run in their own process by tests/test_accumulation.py.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/accumulation_checks.py OUT.json

On a (data, expert, model) = 2x4x1 mesh (8 data shards): the microbatch split keeps the batch sharding and
compiles to no collective at all (a contiguous split, for contrast, needs some); and one real train step of a
tiny SaMoE model (routing groups of two sequences, uneven padding) with train.microbatches = 2 and 4 is
compared with the same step on one device without accumulation. Results go to OUT.json; the assertions live in
the pytest file.
"""

from __future__ import annotations

import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

from samoe_jax.config.defaults import get_base_config
from samoe_jax.config.presets import set_sharing
from samoe_jax.models.model import LanguageModel
from samoe_jax.sharding.mesh import make_mesh
from samoe_jax.sharding.partitioner import Partitioner
from samoe_jax.training import accumulate
from samoe_jax.training import optimizer as optimizer_lib
from samoe_jax.training import state as state_lib
from samoe_jax.training.step import make_train_step
from samoe_jax.training.step_options import StepOptions

COLLECTIVES = ('all-to-all', 'all-gather', 'all-reduce', 'reduce-scatter', 'collective-permute')
MICROBATCHES = (2, 4)


def tiny(mesh: tuple[int, int, int]):
  c = get_base_config()
  c.model.vocab_size, c.model.d_model, c.model.num_layers, c.model.num_heads, c.model.d_ff = 256, 32, 1, 4, 64
  c.model.layer_plan = 'all'
  c.model.max_len = c.data.seq_len = 16
  c.data.batch_size, c.data.vocabulary = 64, 'byte'
  c.moe.num_experts, c.moe.top_k, c.moe.group_size = 8, 2, 32     # a routing group spans two sequences
  c.moe.capacity_factor_train = c.moe.capacity_factor_eval = 1.0  # some tokens are dropped
  c.moe.lb_loss_coef = 0.0   # the only MoE term that accumulation does not reproduce exactly (accumulate.py)
  c.train.warmup_steps, c.train.steps = 1, 10
  c.mesh.data, c.mesh.expert, c.mesh.model = mesh
  set_sharing(c, 'samoe', num_moe_layers=1)
  return c


def batch(config) -> dict[str, np.ndarray]:
  """Random tokens; padding at the end of every third row (uneven across microbatches and devices)."""
  rng = np.random.default_rng(0)
  b, l = config.data.batch_size, config.data.seq_len
  tokens = rng.integers(1, config.model.vocab_size, size=(b, l + 1), dtype=np.int32)
  inputs, weights = tokens[:, :-1].copy(), np.ones((b, l), np.float32)
  for row in range(0, b, 3):
    pad = 1 + row % (l - 1)
    weights[row, l - pad:] = 0.0
    inputs[row, l - pad + 1:] = 0
  return {'decoder_input_tokens': inputs, 'decoder_target_tokens': tokens[:, 1:], 'decoder_loss_weights': weights}


def collectives(hlo: str) -> dict[str, int]:
  return {c: len(re.findall(rf'\b{c}(?:-start)?\(', hlo)) for c in COLLECTIVES}


def split_checks(partitioner: Partitioner, microbatches: int, unit_rows: int) -> dict:
  """Shardings and collectives of the microbatch split, and of a contiguous split for contrast."""
  x = jax.ShapeDtypeStruct((64, 16), jnp.int32, sharding=partitioner.data_sharding())

  def contiguous(x_BL):
    return x_BL.reshape(microbatches, -1, x_BL.shape[1])

  out = {}
  for name, fn in (('interleaved', lambda x_BL: accumulate.split_microbatches({'x': x_BL}, microbatches,
                                                                              unit_rows)['x']),
                   ('contiguous', contiguous)):
    with partitioner.activate():
      # Each microbatch keeps the batch's row sharding: that is the output sharding asked for.
      jitted = jax.jit(fn, out_shardings=jax.sharding.NamedSharding(
          partitioner.mesh, jax.sharding.PartitionSpec(None, ('data', 'expert'))))
      compiled = jitted.lower(x).compile()
    out[name] = {'collectives': collectives(compiled.as_text()),
                 'output_spec': str(compiled.output_shardings.spec)}
  # Which global rows each device holds, before and after the split (tokens encode their row: value // 16).
  data = partitioner.shard_batch({'x': np.arange(64 * 16, dtype=np.int32).reshape(64, 16)})['x']
  with partitioner.activate():
    split = jax.jit(lambda x_BL: accumulate.split_microbatches({'x': x_BL}, microbatches, unit_rows)['x'])(data)
  before = {s.device.id: sorted(set((np.asarray(s.data)[:, 0] // 16).tolist())) for s in data.addressable_shards}
  after = {s.device.id: sorted(set((np.asarray(s.data)[..., 0] // 16).ravel().tolist()))
           for s in split.addressable_shards}
  out['rows_per_device_before'], out['rows_per_device_after'] = before, after
  out['microbatch_rows'] = (np.asarray(split)[..., 0] // 16).tolist()
  out['split_spec'] = str(split.sharding.spec)
  return out


def one_step(config, devices, microbatches: int) -> dict:
  model = LanguageModel(config)
  partitioner = Partitioner(make_mesh(config.mesh, devices))
  axes = model.param_logical_axes()
  optimizer, schedule = optimizer_lib.make_optimizer(config.train, model.abstract_params(), axes)
  abstract = state_lib.abstract_state(model, optimizer)
  shardings = state_lib.state_shardings(partitioner, optimizer, abstract, axes)
  step_fn = make_train_step(StepOptions(model, optimizer, schedule, microbatches), partitioner, shardings)
  with partitioner.activate():
    state = jax.jit(lambda r: state_lib.init_state(model, optimizer, r), out_shardings=shardings)(
        jax.random.key(0))
    data = partitioner.shard_batch(batch(config))
    compiled = step_fn.lower(state, data, jax.random.key(1)).compile()
    new_state, metrics = compiled(state, data, jax.random.key(1))
  return {'metrics': {k: np.asarray(v).tolist() for k, v in jax.device_get(metrics).items()},
          'params': jax.tree.map(np.asarray, jax.device_get(new_state.params)),
          'collectives': collectives(compiled.as_text())}


def max_rel_diff(a, b) -> float:
  diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(x - y)) / (np.max(np.abs(y)) + 1e-12)), a, b)
  return max(jax.tree.leaves(diffs))


def main(out_path: str) -> None:
  devices = jax.devices()
  assert len(devices) == 8, f'expected 8 host devices, got {len(devices)}: set XLA_FLAGS'
  config = tiny((2, 4, 1))
  partitioner = Partitioner(make_mesh(config.mesh, devices))
  results = {'split': split_checks(partitioner, microbatches=4, unit_rows=2)}
  reference = one_step(tiny((1, 1, 1)), devices[:1], 1)
  results['reference_metrics'] = reference['metrics']
  for m in MICROBATCHES:
    got = one_step(config, devices, m)
    results[f'microbatches={m}'] = {
        'metrics': got['metrics'], 'collectives': got['collectives'],
        'params_max_rel_diff': max_rel_diff(got['params'], reference['params']),
    }
    print('microbatches', m, 'loss', got['metrics']['loss'], reference['metrics']['loss'], got['collectives'],
          flush=True)
  with open(out_path, 'w') as f:
    json.dump(results, f, indent=1, sort_keys=True)


if __name__ == '__main__':
  main(sys.argv[1])
