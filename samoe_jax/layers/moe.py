"""The MoE FFN layer: its own router and mixing logits, experts drawn from the global pool.

Einsum letters: B batch, L length, G groups, S tokens per group, D width, E experts, P pool entries.

One layer of a standard MoE (GShard/Switch, methods.md §1), a SaMoE layer (§2) and a fully tied layer are the
same module: it receives its effective experts, which the decoder mixed from the global pool (experts.py).
Dropped tokens get a zero output, so only the block's residual carries them.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from samoe_jax.layers import initializers
from samoe_jax.layers import routing as routing_lib
from samoe_jax.layers.dispatch import get_dispatcher
from samoe_jax.layers.experts import ExpertWeights, expert_ffn, expert_ffn_output_mixed


def to_groups(x_BLD: jax.Array, group_size: int) -> jax.Array:
  """Routing groups x_GSD. A group is a run of positions of one sequence (group_size <= L) or R = S / L whole
  sequences interleaved position-major (token order t0 of each sequence, then t1, ...), so a token's slot
  depends only on tokens at earlier or equal positions and routing stays causal."""
  b, l, d = x_BLD.shape
  if group_size <= l:
    return x_BLD.reshape(b * l // group_size, group_size, d)
  r = group_size // l
  return jnp.swapaxes(x_BLD.reshape(b // r, r, l, d), 1, 2).reshape(b // r, group_size, d)


def from_groups(x_GSD: jax.Array, b: int, l: int) -> jax.Array:
  """Inverse of to_groups: x_GSD -> x_BLD."""
  g, s, d = x_GSD.shape
  if s <= l:
    return x_GSD.reshape(b, l, d)
  return jnp.swapaxes(x_GSD.reshape(g, l, s // l, d), 1, 2).reshape(b, l, d)


class Router(nn.Module):
  """Router logits in float32: x_GSD -> logits_GSE (no bias, as in fairseq's Top2Gate)."""
  num_experts: int
  init_std: float

  @nn.compact
  def __call__(self, x_GSD: jax.Array) -> jax.Array:
    w_DE = self.param('kernel', initializers.normal(self.init_std, ('embed', 'router')),
                      (x_GSD.shape[-1], self.num_experts))
    return jnp.einsum('gsd,de->gse', x_GSD.astype(jnp.float32), w_DE)


class MoeFFN(nn.Module):
  """One MoE layer: x_BLD -> (y_BLD, aux). aux holds 'lb_loss', 'z_loss' and the routing metrics.

  experts: this layer's effective experts (leading axis E), already mixed from the pool; or, for output-space
  mixing, the whole pool (leading axes [P, E]) with `output_mix_weights` ([P] or [E, P]).
  """
  num_experts: int
  top_k: int
  capacity_factor_train: float
  capacity_factor_eval: float
  min_capacity: int
  group_size: int           # tokens per routing group (divides B*L; a multiple or divisor of L)
  dispatch: str
  init_std: float
  priority: str = 'position'  # slot priority, see routing.py ('choice' is fairseq's, not causal)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BLD: jax.Array, experts: ExpertWeights, token_mask_BL: jax.Array, *, train: bool,
               output_mix_weights: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    b, l, d = x_BLD.shape
    s = self.group_size
    x_GSD = nn.with_logical_constraint(to_groups(x_BLD, s), ('group', 'length', 'embed'))
    mask_GS = to_groups(token_mask_BL[..., None], s)[..., 0]
    cf = self.capacity_factor_train if train else self.capacity_factor_eval
    capacity = routing_lib.expert_capacity(s, self.num_experts, self.top_k, cf, self.min_capacity)
    logits_GSE = Router(self.num_experts, self.init_std, name='router')(x_GSD)
    routing = routing_lib.route(logits_GSE, mask_GS, top_k=self.top_k, capacity=capacity,
                                priority=self.priority)

    dispatcher = get_dispatcher(self.dispatch)
    x_EXD = dispatcher.dispatch(x_GSD.astype(self.dtype), routing)
    x_EXD = nn.with_logical_constraint(x_EXD, ('expert', None, 'embed'))
    if output_mix_weights is None:
      y_EXD = expert_ffn(x_EXD, experts.astype(self.dtype))
    else:
      y_EXD = expert_ffn_output_mixed(x_EXD, experts.astype(self.dtype), output_mix_weights)
    y_EXD = nn.with_logical_constraint(y_EXD, ('expert', None, 'embed'))
    y_GSD = dispatcher.combine(y_EXD, routing)
    aux = {'lb_loss': routing_lib.load_balancing_loss(routing, mask_GS)}
    aux['z_loss'] = routing_lib.router_z_loss(routing, mask_GS)
    aux.update(routing_lib.routing_metrics(routing, mask_GS))
    return from_groups(y_GSD, b, l), aux
