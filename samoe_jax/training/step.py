"""The pure train and eval steps, and their jitted (partitioned) forms.

train_step(state, batch, rng) -> (state, metrics): one AdamW update on the batch. The dropout key is
fold_in(rng, state.step), so a run resumed from a checkpoint at step s draws exactly the keys the uninterrupted
run would. metrics are the model's (loss, cross_entropy, aux_loss, num_tokens, accuracy, moe/..., pool/...)
plus 'learning_rate' (of this update) and 'grad_norm' (global norm before clipping); the grad_stats variant adds
the gradient-flow statistics 'grad/...' (training/grad_stats.py). With microbatches M > 1
(train.microbatches) the gradient is accumulated over M slices of the batch before the one update, microbatch
m drawing dropout from fold_in(fold_in(rng, state.step), m); loss and metrics keep their whole-batch meaning
(samoe_jax/training/accumulate.py).
eval_step(params, batch) -> metrics of model.loss_fn(train=False).

Both are jitted once through the partitioner with explicit shardings (state and metrics stay on device; the
state is donated) and contain no host synchronisation.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import optax

from samoe_jax.config.layer_plan import group_rows
from samoe_jax.layers import k_schedule
from samoe_jax.sharding.partitioner import PartitionedFn, Partitioner
from samoe_jax.training import accumulate, distill
from samoe_jax.training.grad_stats import GradStats
from samoe_jax.training.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def train_step(model: Any, optimizer: optax.GradientTransformation, schedule: Callable, state: TrainState,
               batch: Batch, rng: jax.Array, microbatches: int = 1,
               grad_shardings: Any | None = None, teacher: Any | None = None,
               teacher_params: Any | None = None,
               grad_stats: GradStats | None = None) -> tuple[TrainState, Metrics]:
  """One update. batch: int32/float32 [B, L] decoder features; rng: the run's base key (fixed for the run).

  microbatches: M >= 1 gradient-accumulation passes (B divisible by M x rows per routing group);
  grad_shardings: the parameters' shardings, kept by the accumulated gradients (M > 1 only).
  teacher, teacher_params: knowledge distillation (training/distill.py: a Teacher and its params, never updated).
  grad_stats: also return the gradient-flow statistics 'grad/...' of this update (training/grad_stats.py), from
  the same backward pass, which then also differentiates with respect to zero probes on every MoE layer's
  effective experts; with grad_shardings, a pair (parameter shardings, probe shardings).
  """
  dropout_rng = jax.random.fold_in(rng, state.step)
  active_k = k_schedule.train_active_k(getattr(model, 'config', None), state.step)   # SMoE-Dropout: k(step)

  def student_loss(probes: Any | None) -> Callable:
    options = {k: v for k, v in (('active_k', active_k), ('probes', probes)) if v is not None}
    loss_fn = functools.partial(model.loss_fn, **options) if options else model.loss_fn
    if teacher is not None:
      loss_fn = distill.kd_loss_fn(model, teacher.model, teacher.spec, teacher_params, state.step, loss_fn)
    return loss_fn

  if grad_stats is None:
    loss_fn, wrt = student_loss(None), state.params
  else:   # differentiate with respect to (params, probes): dL/dW^(l) comes out of the same backward pass
    loss_fn = lambda pp, *args, **kw: student_loss(pp[1])(pp[0], *args, **kw)  # noqa: E731
    wrt = (state.params, grad_stats.zero_probes())
  if accumulate.check_microbatches(microbatches) == 1:
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(wrt, batch, dropout_rng, True)
  else:
    unit_rows = group_rows(model.config)
    grads, metrics = accumulate.accumulate_gradients(loss_fn, wrt, batch, dropout_rng, microbatches, unit_rows,
                                                     grad_shardings, premix=_premix(model, grad_stats))
  grads, probe_grads = grads if grad_stats is not None else (grads, None)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, learning_rate=schedule(state.step), grad_norm=optax.tree.norm(grads))
  if grad_stats is not None:
    metrics.update(grad_stats(state.params, params, grads, probe_grads, metrics))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def _premix(model: Any, grad_stats: GradStats | None) -> Callable | None:
  """Under gradient accumulation with a learned weight-space pool: wrt -> (mixed experts, mixing weights), so the
  pool is mixed once per optimizer step (training/accumulate.py); None for other models (nothing to mix, or
  output-space mixing, which hands every layer the whole pool). wrt is the params, or (params, probes) with
  grad_stats: the probes' gradient is then the mixed experts' gradient, through the same backward pass."""
  spec = getattr(model, 'spec', None)
  if spec is None or not spec.moe_layers or not spec.mixing.mixes_weights:
    return None
  if grad_stats is None:
    return model.mixed_experts
  return lambda pp: model.mixed_experts(pp[0], probes=pp[1])


def eval_step(model: Any, params: Any, batch: Batch) -> Metrics:
  """The model's metrics on one batch, without dropout (train=False capacities)."""
  _, metrics = model.loss_fn(params, batch, None, False)
  return metrics


def make_train_step(model: Any, optimizer: optax.GradientTransformation, schedule: Callable,
                    partitioner: Partitioner, state_shardings: TrainState, microbatches: int = 1,
                    teacher: Any | None = None, grad_stats: GradStats | None = None) -> PartitionedFn:
  """train_step (accumulating over `microbatches`) jitted with (state, batch, rng) shardings, replicated metrics
  and the state donated. With a `teacher` (training/distill.py) the step takes a 4th argument, the teacher's
  params, sharded by the teacher model's own logical axes and not donated. grad_stats: the variant that also
  returns the gradient-flow statistics (training/grad_stats.py; the trainer compiles both)."""
  accumulate.check_microbatches(microbatches)
  replicated = partitioner.replicated()
  in_shardings = (state_shardings, partitioner.data_sharding(), replicated)
  grad_shardings = state_shardings.params
  if grad_stats is not None:
    grad_shardings = (grad_shardings, partitioner.logical_to_mesh(grad_stats.probe_logical_axes()))
  if teacher is None:
    fn = functools.partial(train_step, model, optimizer, schedule, microbatches=microbatches,
                           grad_shardings=grad_shardings, grad_stats=grad_stats)
  else:
    def fn(state, batch, rng, teacher_params):
      return train_step(model, optimizer, schedule, state, batch, rng, microbatches=microbatches,
                        grad_shardings=grad_shardings, teacher=teacher, teacher_params=teacher_params,
                        grad_stats=grad_stats)
    in_shardings += (distill.teacher_shardings(teacher, partitioner),)
  return partitioner.partition(fn, in_shardings=in_shardings, out_shardings=(state_shardings, replicated),
                               donate_argnums=(0,))


def make_eval_step(model: Any, partitioner: Partitioner, param_shardings: Any) -> PartitionedFn:
  """eval_step jitted with (params, batch) shardings and replicated metrics."""
  fn = functools.partial(eval_step, model)
  return partitioner.partition(fn, in_shardings=(param_shardings, partitioner.data_sharding()),
                               out_shardings=partitioner.replicated())
