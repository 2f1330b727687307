"""Eight-device checks of moe.dispatch='ragged', run in their own process by tests/test_ragged_multidevice.py:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/ragged_multidevice_checks.py

The MoE layer (top-2, SaMoE weight-space mixing, capacity factor 0.5) on a (data, expert, model) = 2x1x4 mesh,
experts sharded by their logical axes, against the same computation unsharded: outputs and gradients. Then the
same layer under expert parallelism (2x4x1; weight- and output-space mixing) against one device too, and
one group on 2x4x1 (not divisible over the expert axis) must refuse at trace time. Each data shard sorts its own
groups: no collective of the compiled sharded program carries the N = G*S*K rows of the whole call (the rows
exchanged are the shard's, over 'model'). One group (G = 1, not divisible over data) falls back to the global
sort and still equals one device. A whole SaMoE train step with dropless experts on 4x1x2 and on 2x4x1 equals
one device. Prints 'key value' lines.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from samoe_jax.layers.experts import LayerExperts, expert_weight_axes
from samoe_jax.layers.pool import mix_weight_space, mixing_weights
from samoe_jax.sharding.mesh import make_mesh
from samoe_jax.sharding.partitioner import Partitioner
from multidevice_checks import one_step, tiny
from test_moe_layer import _setup


TOP_K = 2
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
  layer, variables, pool, alpha, x, mask = _setup(dispatch='ragged', top_k=TOP_K, capacity_factor=0.5)
  experts = mix_weight_space(pool, mixing_weights(alpha, 0.7))
  probe = jax.random.normal(jax.random.key(5), x.shape)

  def loss(v, w, x):
    y, _ = layer.apply(v, x, w, mask, train=True)
    return jnp.sum(y * probe), y

  grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
  (_, y_one), g_one = jax.jit(grad)(variables, experts, x)

  part = Partitioner(make_mesh({'data': 2, 'expert': 1, 'model': 4}))
  w_sharding = part.logical_to_mesh(expert_weight_axes())
  x_spec = jax.sharding.PartitionSpec('batch', 'length', 'embed')
  x_sharding = part.logical_to_mesh(x_spec)
  with part.activate():
    sharded = jax.jit(grad, in_shardings=(None, w_sharding, x_sharding))
    (_, y_many), g_many = sharded(variables, jax.device_put(experts, w_sharding), jax.device_put(x, x_sharding))
    hlo = sharded.lower(variables, experts, x).compile().as_text()
    y_group, _ = jax.jit(lambda v, w, x: layer.apply(v, x, w, mask[:1], train=True))(variables, experts, x[:1])
  rows = x.shape[0] * x.shape[1] * TOP_K   # N = G*S*K of the whole call
  shapes = collective_shapes(hlo)
  print('collectives', len(shapes))
  print('global_row_collectives', sum(bool(re.search(rf'\[{rows}[,\]]', shape)) for shape in shapes))
  print('one_group_max_abs_diff', float(jnp.max(jnp.abs(y_group - y_one[:1]))))   # groups are whole sequences
  assert len(experts.w_in.sharding.device_set) == 1 and len(g_many[1].w_in.sharding.device_set) == 8
  print('max_abs_diff', float(jnp.max(jnp.abs(y_many - y_one))))
  print('grad_max_abs_diff', max(float(jnp.max(jnp.abs(a - b)))
                                 for a, b in zip(jax.tree.leaves(g_many), jax.tree.leaves(g_one))))

  # One real SaMoE train step (AdamW, donated state) with dropless experts on data=4 x model=2 and on data=2 x
  # expert=4 (expert parallelism) against one device.
  configs = [tiny('samoe', mesh) for mesh in ((1, 1, 1), (4, 1, 2), (2, 4, 1))]
  for config in configs:
    config.moe.dispatch, config.model.num_layers = 'ragged', 2   # one MoE block (every other), a pool of 2
  one = one_step(configs[0], jax.devices()[:1], with_grads=False)
  for config in configs[1:]:
    many = one_step(config, jax.devices(), initial=one['initial_state'], with_grads=False)
    name = 'x'.join(str(config.mesh[a]) for a in ('data', 'expert', 'model'))
    print(f'train_step_{name}_loss_diff', abs(many['loss'] - one['loss']))
    print(f'train_step_{name}_param_max_abs_diff', max(float(np.max(np.abs(a - b))) for a, b in
                                                       zip(jax.tree.leaves(many['params']),
                                                           jax.tree.leaves(one['params']))))

  # Expert parallelism (all-gather / reduce-scatter) on data=2 x expert=4: equal to one device, outputs and
  # gradients, SaMoE weight-space and output-space mixing; 8 sequences (one group each).
  x8 = jax.random.normal(jax.random.key(11), (8,) + x.shape[1:])
  mask8, probe8 = jnp.ones(x8.shape[:2], bool), jax.random.normal(jax.random.key(12), x8.shape)

  def ep_loss(v, w, x):
    y, _ = layer.apply(v, x, w, mask8, train=True)
    return jnp.sum(y * probe8)

  ep_grad = jax.value_and_grad(ep_loss, argnums=(0, 1, 2))
  layer_experts = LayerExperts(pool, mixing_weights(alpha, 0.7))
  ep = Partitioner(make_mesh({'data': 2, 'expert': 4, 'model': 1}))
  for space, w in (('weight', experts), ('output', layer_experts)):
    one_ep = jax.jit(ep_grad)(variables, w, x8)
    with ep.activate():
      sharded = jax.jit(ep_grad, in_shardings=(None, None, ep.logical_to_mesh(x_spec)))
      many_ep = sharded(variables, w, x8)
      hlo = sharded.lower(variables, w, x8).compile().as_text()
    print(f'ep_{space}_2x4x1_max_abs_diff', max(float(jnp.max(jnp.abs(a - b)))
                                                for a, b in zip(jax.tree.leaves(many_ep), jax.tree.leaves(one_ep))))
    print(f'ep_{space}_2x4x1_collectives', ','.join(sorted({m.group(1) for line in hlo.splitlines()
                                                            if (m := COLLECTIVE.search(line))})))
  try:
    with ep.activate():
      jax.jit(lambda v, w, x: layer.apply(v, x, w, mask[:1], train=True))(variables, experts, x[:1])
    print('ep_one_group ran')
  except ValueError as err:
    print('ep_one_group', str(err).replace('\n', ' '))


if __name__ == '__main__':
  main()
