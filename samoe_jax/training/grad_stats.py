"""Gradient-flow statistics of a train step (train.grad_stats_every = N; docs/analysis.md, "Gradient flow").

SaMoE (Zhang et al. 2022) attributes the standard MoE's parameter inefficiency to poor gradient flow into the
experts as their number grows, and sharing a pool across layers to more gradient signal per expert. At every step
s with s % N == 0 the trainer runs a second compiled train step that also returns these statistics, computed from
the gradients and the update it already has (no second backward pass):

  grad/{p}/norm          ||g_p||_2, the L2 norm of the gradient of part p's parameters
  grad/{p}/rms           ||g_p|| / sqrt(n_p): the gradient per parameter (n_p parameters)
  grad/{p}/update_ratio  ||w_p' - w_p|| / ||w_p||: the applied optimizer update over the weights before it (NaN
                         while ||w_p|| = 0, e.g. mixing logits before their first update)

for the parts p: 'total', 'embedding', 'norms' (every LayerNorm), 'block{b}/attention', 'block{b}/ffn' (dense FFN),
'block{b}/router' (router and graph-routing parameters), 'block{b}/residual' (Residual-MoE MLP), 'shared' (WideNet's
shared router / attention), 'mixing' (SaMoE's learned mixing logits) and 'other'. Expert statistics:

  grad/block{b}/experts/{norm,rms,update_ratio}            [E_b] per expert of MoE block b's effective experts
                                                           W^(l) (the mixed weights under SaMoE)
  grad/block{b}/experts/mean_{norm,rms,update_ratio}       means over those experts
  grad/block{b}/experts/token_share                        [E_b] share of the step's routed assignments per expert
  grad/{pool}/{norm,rms,update_ratio}                      [P, E] per stored pool entry j and expert e
  grad/{pool}/entry_{norm,rms,update_ratio}                [P] per pool entry (its E experts together)

{pool} is 'pool' for the first expert group and 'pool_e{E}' for Pyramid-MoE's others (parameters 'expert_pool',
'expert_pool_e{E}'). dL/dW^(l) is measured, not derived: the model adds a zero probe to every layer's effective experts
(models/transformer.py, flax `perturb`) and the step differentiates with respect to it too, so for layer-level
mixing the identity grad pool_j = sum_l softmax(alpha_l)_j dL/dW^(l) can be checked (tests/test_grad_stats.py).
A layer whose experts are its own pool entry (the standard MoE: fixed mixing, an entry no other layer uses) needs
no probe: its statistics are that entry's, read from the pool's (own_pool_entries).
Under train.microbatches the probes' gradients are accumulated like the parameters'.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from samoe_jax.layers.experts import ExpertWeights
from samoe_jax.models.transformer import probe_name

Params = Any
Metrics = dict[str, jax.Array]

PREFIX = 'grad/'
EMBEDDINGS = ('token_embedding', 'position_embedding', 'output_embedding')
# Children of a block_<b> module -> part kind ('norms' is one part for the whole model).
BLOCK_PARTS = {'attention': 'attention', 'ffn': 'ffn', 'moe': 'router', 'residual_mlp': 'residual',
               'residual_coef': 'residual', 'attention_norm': 'norms', 'ffn_norm': 'norms'}
POOL_PARAM = 'expert_pool'
# Logical axes of one layer's effective experts (the pool's without 'pool'); extra leading axes are replicated.
PROBE_AXES = {'w_in': ('expert', 'embed', 'expert_mlp'), 'b_in': ('expert', 'expert_mlp'),
              'w_out': ('expert', 'expert_mlp', 'embed'), 'b_out': ('expert', 'embed')}


def check_grad_stats_every(value: Any) -> int:
  """train.grad_stats_every as an int >= 0; ValueError naming the value otherwise."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ValueError(f'train.grad_stats_every={value!r}: must be an integer >= 0 (steps between gradient-flow '
                     'statistics; 0 = off)')
  return value


def is_stats_step(step: int, every: int) -> bool:
  """Whether update `step` (1-based) records gradient statistics."""
  return every > 0 and step % every == 0


def _keys(path: tuple) -> tuple[str, ...]:
  return tuple(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def part_name(keys: tuple[str, ...]) -> str:
  """The statistics part of a parameter path (pool arrays are handled per entry and expert, not here)."""
  top = keys[0]
  if top.startswith('block_') and len(keys) > 1:
    kind = BLOCK_PARTS.get(keys[1], 'other')
    return 'norms' if kind == 'norms' else f'block{top[len("block_"):]}/{kind}'
  if top in EMBEDDINGS:
    return 'embedding'
  if top == 'final_norm':
    return 'norms'
  if top.startswith('shared_'):
    return 'shared'
  if top.startswith('mixing_logits'):
    return 'mixing'
  return 'other'


def pool_part(top: str) -> str:
  """'expert_pool' -> 'pool', 'expert_pool_e16' -> 'pool_e16'."""
  return 'pool' + top[len(POOL_PARAM):]


def _sq(x: jax.Array, keep: int = 0) -> jax.Array:
  """Sum of squares in float32 over every axis but the first `keep`."""
  x = x.astype(jnp.float32)
  return jnp.sum(jnp.square(x), axis=tuple(range(keep, x.ndim)))


def _expert_sq(x: jax.Array, field: str) -> jax.Array:
  """Per-expert sum of squares of one ExpertWeights field ([..., E, D, F] or [..., E, F]) -> [E]."""
  axis = x.ndim - len(PROBE_AXES[field])
  x = jnp.moveaxis(x.astype(jnp.float32), axis, 0)
  return jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim)))


def _ratio(update_sq: jax.Array, weight_sq: jax.Array) -> jax.Array:
  return jnp.where(weight_sq > 0, jnp.sqrt(update_sq) / jnp.sqrt(jnp.maximum(weight_sq, 1e-30)), jnp.nan)


@dataclasses.dataclass
class _Sums:
  """Sums of squares of gradient, weight and update, and the parameter count, of one part."""
  grad: Any = 0.0
  weight: Any = 0.0
  update: Any = 0.0
  count: int = 0

  def add(self, grad: jax.Array, weight: jax.Array, update: jax.Array, count: int) -> None:
    self.grad, self.weight, self.update = self.grad + grad, self.weight + weight, self.update + update
    self.count += count

  def metrics(self, name: str, prefix: str = '') -> Metrics:
    norm = jnp.sqrt(jnp.asarray(self.grad, jnp.float32))
    return {f'{PREFIX}{name}/{prefix}norm': norm,
            f'{PREFIX}{name}/{prefix}rms': norm / math.sqrt(max(self.count, 1)),
            f'{PREFIX}{name}/{prefix}update_ratio': _ratio(jnp.asarray(self.update), jnp.asarray(self.weight))}


def own_pool_entries(spec: Any) -> dict[int, tuple[str, int]]:
  """{block: (pool part, entry)} of the MoE layers whose effective experts ARE one pool entry used by no other
  layer (fixed weight-space mixing; the standard MoE): their statistics are that entry's, read from the pool's."""
  if not spec.moe_layers or not spec.mixing.selects_entries:
    return {}
  out = {}
  for group in spec.groups:
    for layer, entry in zip(group.layers, group.entries):
      if group.entries.count(entry) == 1:
        out[spec.moe_layers[layer]] = (pool_part(group.pool_name), entry)
  return out


class GradStats:
  """Computes the statistics of one update for `model` (a LanguageModel). Layers whose experts are their own
  pool entry (the standard MoE) are read from the pool's statistics; the others (SaMoE, shared fixed entries,
  output-space mixing) get probes, and all of them then do (flax needs every probe once one is passed)."""

  def __init__(self, model: Any):
    self.model = model
    self.own_entries = own_pool_entries(model.spec)
    probed = set(model.spec.moe_layers) - set(self.own_entries)
    self.abstract_probes = model.abstract_probes() if probed else {}
    if probed:
      self.own_entries = {}

  def zero_probes(self) -> Params:
    """Zeros of every MoE block's effective experts (the probes the step differentiates with respect to); {}
    when every layer's statistics come from the pool."""
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self.abstract_probes)

  def probe_logical_axes(self) -> Params:
    """PartitionSpecs of logical axes of the probes (leading axes beyond an expert set's are replicated)."""
    def axes(field: str, shape: jax.ShapeDtypeStruct) -> PartitionSpec:
      names = PROBE_AXES[field]
      return PartitionSpec(*((None,) * (len(shape.shape) - len(names)) + names))
    return {name: ExpertWeights(**{f.name: axes(f.name, getattr(w, f.name)) for f in dataclasses.fields(w)})
            for name, w in self.abstract_probes.items()}

  def __call__(self, old_params: Params, new_params: Params, grads: Params, probe_grads: Params,
               metrics: Metrics) -> Metrics:
    """The statistics (module docstring) of the update old_params -> new_params with gradient `grads`;
    probe_grads: dL/dW^(l) per MoE block; metrics: the step's model metrics (for the token shares)."""
    out: Metrics = {}
    parts: dict[str, _Sums] = {}
    total = _Sums()
    pools: dict[str, _Sums] = {}
    flat_old = jax.tree_util.tree_flatten_with_path(old_params)[0]
    for (path, old), new, grad in zip(flat_old, jax.tree.leaves(new_params), jax.tree.leaves(grads)):
      keys = _keys(path)
      update = new - old
      size = math.prod(old.shape)
      if keys[0].startswith(POOL_PARAM):   # [P, E, ...]: per pool entry and expert (one pass over each array)
        per_expert = (_sq(grad, 2), _sq(old, 2), _sq(update, 2))
        pools.setdefault(pool_part(keys[0]), _Sums()).add(*per_expert, math.prod(old.shape[2:]))
        total.add(*(jnp.sum(x) for x in per_expert), size)
        continue
      sums = (_sq(grad), _sq(old), _sq(update))
      total.add(*sums, size)
      parts.setdefault(part_name(keys), _Sums()).add(*sums, size)
    out.update(total.metrics('total'))
    for name, sums in sorted(parts.items()):
      out.update(sums.metrics(name))
    for name, sums in sorted(pools.items()):
      out.update(sums.metrics(name))
      entry = _Sums(jnp.sum(sums.grad, 1), jnp.sum(sums.weight, 1), jnp.sum(sums.update, 1),
                    sums.count * sums.grad.shape[1])
      out.update(entry.metrics(name, 'entry_'))
    out.update(self._layer_experts(old_params, new_params, probe_grads, metrics, pools))
    return out

  def _probed_sums(self, old_params: Params, new_params: Params, probe_grads: Params) -> dict[int, _Sums]:
    """Per probed MoE block: per-expert sums of its effective experts W^(l), mixed again from the old and the new
    parameters for the update."""
    if not self.abstract_probes:
      return {}
    old_experts = self.model.layer_experts(old_params)
    new_experts = self.model.layer_experts(new_params)
    out = {}
    for block in self.model.spec.moe_layers:
      grad_w = probe_grads[probe_name(block)]
      old_w, new_w = old_experts[block].experts, new_experts[block].experts
      sums = out[block] = _Sums()
      for f in dataclasses.fields(grad_w):
        g, o, n = getattr(grad_w, f.name), getattr(old_w, f.name), getattr(new_w, f.name)
        sums.add(_expert_sq(g, f.name), _expert_sq(o, f.name), _expert_sq(n - o, f.name),
                 math.prod(g.shape) // g.shape[g.ndim - len(PROBE_AXES[f.name])])
    return out

  def _layer_experts(self, old_params: Params, new_params: Params, probe_grads: Params, metrics: Metrics,
                     pools: dict[str, _Sums]) -> Metrics:
    """Per MoE block: statistics of its effective experts W^(l), and its experts' token shares."""
    layer_sums = self._probed_sums(old_params, new_params, probe_grads)
    for block, (pool, entry) in self.own_entries.items():
      sums = pools[pool]
      layer_sums[block] = _Sums(sums.grad[entry], sums.weight[entry], sums.update[entry], sums.count)
    out: Metrics = {}
    for block in self.model.spec.moe_layers:
      sums = layer_sums[block]
      name = f'block{block}/experts'
      per_expert = sums.metrics(name)
      out.update(per_expert)
      for stat in ('norm', 'rms', 'update_ratio'):
        out[f'{PREFIX}{name}/mean_{stat}'] = jnp.mean(per_expert[f'{PREFIX}{name}/{stat}'])
      load = metrics.get(f'moe/layer{block}/expert_load')
      if load is not None:
        out[f'{PREFIX}{name}/token_share'] = load
    return out


def split_grad_metrics(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """(the step's other metrics, its grad/... statistics)."""
  grad = {k: v for k, v in metrics.items() if k.startswith(PREFIX)}
  return {k: v for k, v in metrics.items() if not k.startswith(PREFIX)}, grad
