"""The pure train step and its jitted (partitioned) form (the eval step: evaluation/validation.py).

train_step(options, state, batch, rng) -> (state, metrics): one AdamW update on the batch. The dropout key is
fold_in(rng, state.step), so a run resumed from a checkpoint at step s draws exactly the keys the uninterrupted
run would. metrics are the model's (loss, cross_entropy, aux_loss, num_tokens, accuracy, moe/..., pool/...)
plus 'learning_rate' (of this update) and 'grad_norm' (global norm before clipping); the grad_stats variant adds
the gradient-flow statistics 'grad/...' (training/grad_stats.py). With microbatches M > 1
(train.microbatches) the gradient is accumulated over M slices of the batch before the one update, microbatch
m drawing dropout from fold_in(fold_in(rng, state.step), m); loss and metrics keep their whole-batch meaning
(samoe_jax/training/accumulate.py).

It is jitted once through the partitioner with explicit shardings (state and metrics stay on device; the
state is donated) and contains no host synchronisation.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import optax

from samoe_jax.models.model import TRAIN, LanguageModel
from samoe_jax.sharding.partitioner import PartitionedFn, Partitioner
from samoe_jax.training import accumulate, distill
from samoe_jax.training.step_options import StepOptions
from samoe_jax.training.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def train_step(options: StepOptions, state: TrainState, batch: Batch, rng: jax.Array,
               teacher_params: Any | None = None, grad_shardings: Any | None = None) -> tuple[TrainState, Metrics]:
  """One update with the static choices of `options` (training/step_options.py). batch: int32/float32 [B, L]
  decoder features; rng: the run's base key (fixed for the run).

  teacher_params: the teacher's params with options.teacher (knowledge distillation, training/distill.py).
  grad_shardings: the parameters' shardings, kept by the accumulated gradients (options.microbatches > 1 only);
  with options.grad_stats, a pair (parameter shardings, probe shardings).
  """
  model, grad_stats = options.model, options.grad_stats
  dropout_rng = jax.random.fold_in(rng, state.step)
  active_k = model.train_active_k(state.step)   # SMoE-Dropout: k(step)

  def student_loss(probes: Any | None) -> Callable:
    extras = {k: v for k, v in (('active_k', active_k), ('probes', probes)) if v is not None}
    loss_fn = functools.partial(model.loss_fn, **extras) if extras else model.loss_fn
    if options.teacher is not None:
      loss_fn = distill.kd_loss_fn(model, options.teacher, options.distill, teacher_params, state.step, loss_fn)
    return loss_fn

  if grad_stats is None:
    loss_fn, wrt = student_loss(None), state.params
  else:   # differentiate with respect to (params, probes): dL/dW^(l) comes out of the same backward pass
    loss_fn = lambda pp, *args, **kw: student_loss(pp[1])(pp[0], *args, **kw)  # noqa: E731
    wrt = (state.params, grad_stats.zero_probes())
  if options.microbatches == 1:
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(wrt, batch, dropout_rng, TRAIN)
  else:
    grads, metrics = accumulate.accumulate_gradients(loss_fn, wrt, batch, dropout_rng, options.microbatches,
                                                     model.routing_group_rows, grad_shardings,
                                                     premix=_premix(model, grad_stats is not None))
  grads, probe_grads = grads if grad_stats is not None else (grads, None)
  updates, opt_state = options.optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, learning_rate=options.schedule(state.step), grad_norm=optax.tree.norm(grads))
  if grad_stats is not None:
    metrics.update(grad_stats(state.params, params, grads, probe_grads, metrics))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def _premix(model: LanguageModel, probed: bool) -> Callable | None:
  """Under gradient accumulation with a learned weight-space pool: wrt -> (mixed experts, mixing weights), so the
  pool is mixed once per optimizer step (training/accumulate.py); None for other models (nothing to mix, or
  output-space mixing, which hands every layer the whole pool). wrt is the params, or (params, probes) when
  probed (grad_stats): the probes' gradient is then the mixed experts' gradient, through the same backward pass."""
  if not model.mixes_weights:
    return None
  if not probed:
    return model.mixed_experts
  return lambda pp: model.mixed_experts(pp[0], probes=pp[1])


def make_train_step(options: StepOptions, partitioner: Partitioner, state_shardings: TrainState) -> PartitionedFn:
  """train_step with `options` jitted with (state, batch, rng) shardings, replicated metrics and the state
  donated. With options.teacher (training/distill.py) the step takes a 4th argument, the teacher's params,
  sharded by the teacher model's own logical axes and not donated. options.grad_stats: the variant that also
  returns the gradient-flow statistics (training/grad_stats.py; the trainer compiles both)."""
  replicated = partitioner.replicated()
  in_shardings = (state_shardings, partitioner.data_sharding(), replicated)
  grad_shardings = state_shardings.params
  if options.grad_stats is not None:
    grad_shardings = (grad_shardings, partitioner.logical_to_mesh(options.grad_stats.probe_logical_axes()))
  if options.teacher is not None:
    in_shardings += (distill.teacher_shardings(options.teacher, partitioner),)
  fn = functools.partial(train_step, options, grad_shardings=grad_shardings)
  return partitioner.partition(fn, in_shardings=in_shardings, out_shardings=(state_shardings, replicated),
                               donate_argnums=(0,))
