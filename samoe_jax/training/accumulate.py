"""Gradient accumulation (train.microbatches = M): one optimizer update from M forward/backward passes.

Einsum letters: M microbatches, B global batch rows, L length, R rows of one routing group, N = B / (R M).

Splitting. Microbatch m takes routing-group units m, m + M, m + 2M, ... of the global batch, a unit being the R
rows of one MoE routing group (R = moe.group_size / data.seq_len when a group spans several sequences, else 1):
x_BL -> x_NMRL -> x_MNRL -> x_M(B/M)L. The batch is sharded over its rows in contiguous blocks of B / S rows per
data shard (S = data x expert); when B is divisible by S x M x R, every block holds whole M x R row runs, so each
device contributes its own rows to every microbatch and the split is a local transpose: no data moves between
devices (checked on 8 devices by tests/accumulation_checks.py). Routing groups stay whole, so every token is
routed, and dropped, exactly as in the single big batch.

Weighting. The full batch's loss is sum(ce) / sum(loss weights) over the whole batch, so microbatch m's
gradient is taken of  ce_m * n_m / N + aux_m * r_m / R_tot, with n_m its loss weight (max 1), N the batch's,
r_m its real (routed) input tokens and R_tot the batch's; the M gradients are summed in a jax.lax.scan (memory
constant in M). Every MoE quantity (z-loss, expert load, dropped fraction, router entropy) is a mean over real
tokens, so r_m / R_tot weighting reproduces the big batch exactly; the Switch load-balancing loss E sum_e f_e P_e
is a product of two such means, so under accumulation it is the r-weighted mean of the per-microbatch losses (the
fairseq / t5x convention: no extra forward pass), which differs slightly from the big batch's. The reported
metrics have the same keys and meanings as one big batch's, combined the same way (`combine_metrics`).

Mixing once. With a learned SaMoE pool the step passes `premix` (LanguageModel.mixed_experts): every MoE layer's
experts W^(l) are mixed from the pool once, before the scan; each microbatch differentiates with respect to the
parameters and to those mixed experts, the mixed experts' gradients are summed like the parameters', and one
backward pass through the mixing (jax.vjp) turns the sum into the pool's and the mixing logits' gradients. The
result is the per-microbatch mixing's (the mixing is linear in the pool and the same in every microbatch); the
cost of mixing and of its backward pass is paid once per optimizer step, not M times.

Dropout. Microbatch m draws from fold_in(step_key, m), step_key = fold_in(run key, step); M = 1 does not split
and uses step_key itself, exactly as before accumulation existed.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from samoe_jax.layers.mixing import mixing_metrics
from samoe_jax.models.model import TRAIN, ForwardOptions, token_mask

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
LossFn = Callable[[Any, Batch, jax.Array | None, ForwardOptions], tuple[jax.Array, Metrics]]

SUMMED = ('num_tokens',)                     # totals over the batch
LOSS_WEIGHTED = ('cross_entropy', 'accuracy',  # means over target tokens (decoder_loss_weights)
                 'distill/kl', 'distill/loss')  # knowledge distillation (training/distill.py)
SHARED = ('pool/mixing_weights', 'distill/active',  # the same in every microbatch (parameters / step alone)
          'moe/active_k')                          # SMoE-Dropout's k at this step (layers/k_schedule.py)
KD_LOSS = 'distill/loss'                     # a KD term in the loss, weighted like the cross-entropy
# 'loss' is recomputed as cross_entropy + aux_loss; every other metric is a mean over real (routed) input tokens.


def check_microbatches(microbatches: Any) -> int:
  """Returns microbatches when it is an integer >= 1; ValueError naming it otherwise."""
  if not isinstance(microbatches, int) or isinstance(microbatches, bool) or microbatches < 1:
    raise ValueError(f'train.microbatches={microbatches!r}: must be an integer >= 1 (gradient-accumulation passes '
                     'per optimizer step; 1 = no accumulation)')
  return microbatches


def split_microbatches(batch: Batch, microbatches: int, unit_rows: int = 1) -> Batch:
  """Each feature x_BL... -> x_M(B/M)L...: microbatch m = units of `unit_rows` rows m, m + M, m + 2M, ...

  The result is constrained to (None, 'batch', ...) so each microbatch keeps the batch's row sharding.
  """
  out = {}
  for key, x in batch.items():
    b, rest = x.shape[0], x.shape[1:]
    if b % (microbatches * unit_rows):
      raise ValueError(f'batch feature {key!r} has {b} rows, not divisible by {microbatches} microbatches x '
                       f'{unit_rows} rows per routing group')
    x_NMR = x.reshape((b // (microbatches * unit_rows), microbatches, unit_rows) + rest)
    x_MB = jnp.swapaxes(x_NMR, 0, 1).reshape((microbatches, b // microbatches) + rest)
    out[key] = nn.with_logical_constraint(x_MB, (None, 'batch') + (None,) * len(rest))
  return out


def microbatch_weights(batch: Batch, microbatches: int, unit_rows: int = 1) -> tuple[jax.Array, jax.Array]:
  """Per microbatch, float32 [M]: (target-token share n_m / N, routed-token share r_m / R_tot).

  n_m is clipped to >= 1 as the model's own means are (cross_entropy = sum / max(n, 1)), so share * mean gives
  back the microbatch's sum over the batch's max(N, 1).
  """
  split = split_microbatches({'w': batch['decoder_loss_weights'].astype(jnp.float32),
                              'mask': token_mask(batch['decoder_input_tokens']).astype(jnp.float32)},
                             microbatches, unit_rows)
  n_M = jnp.sum(split['w'], axis=(1, 2))
  r_M = jnp.sum(split['mask'], axis=(1, 2))
  return jnp.maximum(n_M, 1.0) / jnp.maximum(jnp.sum(n_M), 1.0), r_M / jnp.maximum(jnp.sum(r_M), 1.0)


def combine_metrics(metrics_M: Metrics, loss_share_M: jax.Array, routed_share_M: jax.Array) -> Metrics:
  """Stacked per-microbatch metrics (leading axis M) -> the metrics of the whole batch (see the module doc)."""

  def weighted(x_M: jax.Array, share_M: jax.Array) -> jax.Array:
    return jnp.tensordot(share_M, x_M.astype(jnp.float32), axes=1).astype(x_M.dtype)

  out = {}
  for key, x_M in metrics_M.items():
    if key in SUMMED:
      out[key] = jnp.sum(x_M, axis=0)
    elif key in LOSS_WEIGHTED:
      out[key] = weighted(x_M, loss_share_M)
    elif key in SHARED:
      out[key] = x_M[0]
    elif key != 'loss':
      out[key] = weighted(x_M, routed_share_M)
  out['loss'] = out['cross_entropy'] + out['aux_loss']
  if KD_LOSS in out:
    out['loss'] = out['loss'] + out[KD_LOSS]
  return out


def accumulate_gradients(loss_fn: LossFn, params: Any, batch: Batch, step_rng: jax.Array, microbatches: int,
                         unit_rows: int = 1, grad_shardings: Any | None = None,
                         premix: Callable[[Any], tuple[Any, jax.Array | None]] | None = None
                         ) -> tuple[Any, Metrics]:
  """(gradients of the whole batch's loss, its metrics) from `microbatches` passes under one jax.lax.scan.

  loss_fn: model.loss_fn(params, batch, rng, options) -> (loss, metrics with 'cross_entropy' and 'aux_loss'),
  called with models/model.TRAIN.
  grad_shardings: the parameters' shardings, kept by the gradient accumulator (None: no constraint).
  premix: params -> (the MoE layers' mixed experts, the mixing weights or None), mixed once for all microbatches
  (see the module doc); loss_fn then takes them as `experts=`, and the weights become 'pool/mixing_weights' and
  the per-layer mixing statistics (layers/mixing.py:mixing_metrics).
  """
  def constrain(grads: Any) -> Any:
    return grads if grad_shardings is None else jax.lax.with_sharding_constraint(grads, grad_shardings)

  if premix is None:
    return _accumulate(loss_fn, params, batch, step_rng, microbatches, unit_rows, constrain)
  experts, mix_vjp, mixing = jax.vjp(premix, params, has_aux=True)
  grads, metrics = _accumulate(lambda pe, *args: loss_fn(pe[0], *args, experts=pe[1]), (params, experts), batch,
                               step_rng, microbatches, unit_rows, lambda pe: (constrain(pe[0]), pe[1]))
  grads_params, grads_experts = grads
  (through_mixing,) = mix_vjp(grads_experts)
  grads = constrain(jax.tree.map(jnp.add, grads_params, through_mixing))
  if mixing is not None:   # experts: {block: LayerExperts}, so its keys are the MoE blocks in order
    metrics = dict(metrics, **mixing_metrics(mixing, sorted(experts)))
  return grads, metrics


def _accumulate(loss_fn: LossFn, params: Any, batch: Batch, step_rng: jax.Array, microbatches: int,
                unit_rows: int, constrain: Callable[[Any], Any]) -> tuple[Any, Metrics]:
  """accumulate_gradients without premixing: loss_fn's gradients with respect to `params`, summed in an
  accumulator that `constrain` keeps sharded like the parameters."""
  split = split_microbatches(batch, microbatches, unit_rows)
  loss_share_M, routed_share_M = microbatch_weights(batch, microbatches, unit_rows)

  def scaled_loss(p, micro: Batch, rng: jax.Array, loss_share: jax.Array, routed_share: jax.Array):
    _, metrics = loss_fn(p, micro, rng, TRAIN)
    loss = metrics['cross_entropy'] * loss_share + metrics['aux_loss'] * routed_share
    if KD_LOSS in metrics:   # a mean over target tokens, like the cross-entropy
      loss = loss + metrics[KD_LOSS] * loss_share
    return loss, metrics

  grad_fn = jax.grad(scaled_loss, has_aux=True)

  def body(acc, xs):
    micro, index, loss_share, routed_share = xs
    grads, metrics = grad_fn(params, micro, jax.random.fold_in(step_rng, index), loss_share, routed_share)
    return constrain(jax.tree.map(jnp.add, acc, grads)), metrics

  zeros = constrain(jax.tree.map(jnp.zeros_like, params))
  xs = (split, jnp.arange(microbatches, dtype=jnp.int32), loss_share_M, routed_share_M)
  grads, metrics_M = jax.lax.scan(body, zeros, xs)
  return grads, combine_metrics(metrics_M, loss_share_M, routed_share_M)
