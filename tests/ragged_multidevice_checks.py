"""Eight-device checks of moe.dispatch='ragged', run in their own process by tests/test_ragged_dispatch.py:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/ragged_multidevice_checks.py

The MoE layer (top-2, SaMoE weight-space mixing, capacity factor 0.5) on a (data, expert, model) = 2x1x4 mesh,
experts sharded by their logical axes, against the same computation unsharded: outputs and gradients. Then the
same layer on a 4x2x1 mesh (expert parallelism), which must refuse at trace time. Each data shard sorts its own
groups: no collective of the compiled sharded program carries the N = G*S*K rows of the whole call (the rows
exchanged are the shard's, over 'model'). One group (G = 1, not divisible over data) falls back to the global
sort and still equals one device. Prints 'key value' lines.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from samoe_jax.layers.experts import expert_weight_axes
from samoe_jax.layers.pool import mix_weight_space, mixing_weights
from samoe_jax.sharding.mesh import make_mesh
from samoe_jax.sharding.partitioner import Partitioner
from multidevice_checks import one_step, tiny
from test_moe_layer import _setup


COLLECTIVE = re.compile(r' (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(-start)?\(')


def collective_shapes(hlo: str) -> list[str]:
  """The result shapes (text before the op name) of every collective in compiled HLO text."""
  shapes = []
  for line in hlo.splitlines():
    rhs = line.split(' = ', 1)[-1]
    if ' = ' in line and (m := COLLECTIVE.search(rhs)):
      shapes.append(rhs[:m.start()])
  return shapes


def main() -> None:
  assert jax.device_count() == 8, jax.devices()
  layer, variables, pool, alpha, x, mask = _setup(dispatch='ragged', top_k=2, capacity_factor=0.5)
  experts = mix_weight_space(pool, mixing_weights(alpha, 0.7))
  probe = jax.random.normal(jax.random.key(5), x.shape)

  def loss(v, w, x):
    y, _ = layer.apply(v, x, w, mask, train=True)
    return jnp.sum(y * probe), y

  grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
  (_, y_one), g_one = jax.jit(grad)(variables, experts, x)

  part = Partitioner(make_mesh({'data': 2, 'expert': 1, 'model': 4}))
  w_sharding = part.logical_to_mesh(expert_weight_axes())
  x_sharding = part.logical_to_mesh(jax.sharding.PartitionSpec('batch', 'length', 'embed'))
  with part.activate():
    sharded = jax.jit(grad, in_shardings=(None, w_sharding, x_sharding))
    (_, y_many), g_many = sharded(variables, jax.device_put(experts, w_sharding), jax.device_put(x, x_sharding))
    hlo = sharded.lower(variables, experts, x).compile().as_text()
    y_group, _ = jax.jit(lambda v, w, x: layer.apply(v, x, w, mask[:1], train=True))(variables, experts, x[:1])
  rows = x.shape[0] * x.shape[1] * 2
  shapes = collective_shapes(hlo)
  print('collectives', len(shapes))
  print('global_row_collectives', sum(bool(re.search(rf'\[{rows}[,\]]', shape)) for shape in shapes))
  print('one_group_max_abs_diff', float(jnp.max(jnp.abs(y_group - y_one[:1]))))   # groups are whole sequences
  assert len(experts.w_in.sharding.device_set) == 1 and len(g_many[1].w_in.sharding.device_set) == 8
  print('max_abs_diff', float(jnp.max(jnp.abs(y_many - y_one))))
  print('grad_max_abs_diff', max(float(jnp.max(jnp.abs(a - b)))
                                 for a, b in zip(jax.tree.leaves(g_many), jax.tree.leaves(g_one))))

  # One real SaMoE train step (AdamW, donated state) with dropless experts on data=4 x model=2 against one device.
  configs = [tiny('samoe', mesh) for mesh in ((1, 1, 1), (4, 1, 2))]
  for config in configs:
    config.moe.dispatch, config.model.num_layers = 'ragged', 2   # one MoE block (every other), a pool of 2
  one = one_step(configs[0], jax.devices()[:1], with_grads=False)
  many = one_step(configs[1], jax.devices(), initial=one['initial_state'], with_grads=False)
  print('train_step_loss_diff', abs(many['loss'] - one['loss']))
  print('train_step_param_max_abs_diff', max(float(np.max(np.abs(a - b))) for a, b in
                                             zip(jax.tree.leaves(many['params']), jax.tree.leaves(one['params']))))

  expert_part = Partitioner(make_mesh({'data': 4, 'expert': 2, 'model': 1}))
  try:
    with expert_part.activate():
      jax.jit(grad)(variables, experts, x)
    print('expert_parallel ran')
  except ValueError as err:
    print('expert_parallel', str(err).replace('\n', ' '))


if __name__ == '__main__':
  main()
