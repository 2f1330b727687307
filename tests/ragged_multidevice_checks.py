"""Eight-device checks of moe.dispatch='ragged', run in their own process by tests/test_ragged_dispatch.py:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/ragged_multidevice_checks.py

The MoE layer (top-2, SaMoE weight-space mixing, capacity factor 0.5) on a (data, expert, model) = 2x1x4 mesh,
experts sharded by their logical axes, against the same computation unsharded: outputs and gradients. Then the
same layer on a 4x2x1 mesh (expert parallelism), which must refuse at trace time. Prints 'key value' lines.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from samoe_jax.layers.experts import expert_weight_axes
from samoe_jax.layers.pool import mix_weight_space, mixing_weights
from samoe_jax.sharding.mesh import make_mesh
from samoe_jax.sharding.partitioner import Partitioner
from test_moe_layer import _setup


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
  assert len(experts.w_in.sharding.device_set) == 1 and len(g_many[1].w_in.sharding.device_set) == 8
  print('max_abs_diff', float(jnp.max(jnp.abs(y_many - y_one))))
  print('grad_max_abs_diff', max(float(jnp.max(jnp.abs(a - b)))
                                 for a, b in zip(jax.tree.leaves(g_many), jax.tree.leaves(g_one))))

  expert_part = Partitioner(make_mesh({'data': 4, 'expert': 2, 'model': 1}))
  try:
    with expert_part.activate():
      jax.jit(grad)(variables, experts, x)
    print('expert_parallel ran')
  except ValueError as err:
    print('expert_parallel', str(err).replace('\n', ' '))


if __name__ == '__main__':
  main()
