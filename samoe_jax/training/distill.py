"""Knowledge distillation with staged KD (Mixture-of-Students, docs/methods/distillation.md; DeepSpeed-MoE, Eq. 1).

Einsum letters: B batch, L length, T tokens (B*L flattened), D width, V vocabulary, C rows of one chunk.

Loss of the student (config.distill, docs/methods/distillation.md):

    L = CE(y, student) + aux + a(step) * alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))

with the KL a mean over real target positions (decoder_loss_weights, the same weights as the CE), z_t / z_s the
teacher's / student's logits, and a(step) = 1 while step < distill.stop_step (staged KD; stop_step = 0: the whole
run), else 0. The T^2 factor (Hinton et al. 2015) keeps the KD gradient's scale independent of T; at T = 1 it is 1
and the loss is the paper's CE + alpha * KL.

The teacher is another run's checkpoint (distill.teacher_workdir, its config.json or distill.teacher_config),
restored once onto the student's mesh with the teacher model's own logical axes, and passed to the jitted train
step as a separate, non-donated argument. Its forward pass (train=False: no dropout, eval capacities) sits in a
`lax.cond` on the traced step, so after stop_step it does not run and nothing is recompiled; the loss is then
exactly the CE-only loss. The teacher gets no gradient (stop_gradient; its params are not the student's params
and are never updated or checkpointed).

`kd_kl_sum` computes sum_t w_t KL_t in row chunks without storing the [T, V] logits (each chunk rematerialised in
the backward pass); `plain_kd_kl_sum` is the full-logits reference it is tested against.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from samoe_jax.config.checks import Problems, is_int, register
from samoe_jax.config.gin_config import load_config_file
from samoe_jax.config.sections import complete_config
from samoe_jax.evaluation.checkpoints import available_steps, restore_params
from samoe_jax.models.losses import num_chunks
from samoe_jax.models.model import EVAL, ForwardOptions, LanguageModel

Params = Any
Batch = dict[str, jax.Array]


@register('distill')
def check_distill(c: ml_collections.ConfigDict, problems: Problems) -> None:
  """config.distill (a registered check, config/checks.py); an absent section or an empty
  distill.teacher_workdir is off."""
  if 'distill' not in c:
    return
  d = c.distill
  for key in ('teacher_workdir', 'teacher_config'):
    if not isinstance(d.get(key, ''), str):
      problems.add(f'distill.{key}', d.get(key), "must be a string ('' = off / the teacher's config.json)")
  if d.teacher_workdir:
    problems.non_negative('distill.alpha', d.alpha)
    problems.positive('distill.temperature', d.temperature)
    for key in ('teacher_step', 'stop_step'):
      if not is_int(d[key]) or d[key] < 0:
        problems.add(f'distill.{key}', d[key], 'must be an integer >= 0 (0 = latest checkpoint / KD for the whole '
                     'run)')


# ------------------------------------------------------------------------------------------------------ the KL
def plain_kd_kl_sum(student_TV: jax.Array, teacher_TV: jax.Array, weights_T: jax.Array,
                    temperature: float) -> jax.Array:
  """Reference: sum_t w_t sum_v p_tv (log p_tv - log q_tv), p = softmax(teacher / T), q = softmax(student / T)."""
  log_p_TV = jax.nn.log_softmax(teacher_TV.astype(jnp.float32) / temperature, axis=-1)
  log_q_TV = jax.nn.log_softmax(student_TV.astype(jnp.float32) / temperature, axis=-1)
  kl_T = jnp.sum(jnp.exp(log_p_TV) * (log_p_TV - log_q_TV), axis=-1)
  return jnp.sum(kl_T * weights_T.astype(jnp.float32))


def kd_kl_sum(h_TD: jax.Array, emb_VD: jax.Array, teacher_h_TD: jax.Array, teacher_emb_VD: jax.Array,
              weights_T: jax.Array, temperature: float) -> jax.Array:
  """sum_t w_t KL(softmax(h_t E_t^T / T) || softmax(h_t E_s^T / T)) from final hidden states, in row chunks.

  h_TD, emb_VD: the student's hidden states and output embedding (differentiated); teacher_h_TD, teacher_emb_VD:
  the teacher's (no gradient). Each chunk's [C, V] logits are recomputed in the backward pass (jax.checkpoint),
  so memory is O(C V), not O(T V).
  """
  t_count = h_TD.shape[0]
  chunks = num_chunks(t_count)
  teacher_h_TD, teacher_emb_VD = jax.lax.stop_gradient((teacher_h_TD, teacher_emb_VD))
  weights_T = jax.lax.stop_gradient(weights_T.astype(jnp.float32))

  @jax.checkpoint
  def chunk_kl(emb, inputs):
    h_CD, th_CD, w_C = inputs
    student_CV = jnp.einsum('cd,vd->cv', h_CD, emb.astype(h_CD.dtype), preferred_element_type=jnp.float32)
    teacher_CV = jnp.einsum('cd,vd->cv', th_CD, teacher_emb_VD.astype(th_CD.dtype),
                            preferred_element_type=jnp.float32)
    return plain_kd_kl_sum(student_CV, teacher_CV, w_C, temperature)

  def body(total, inputs):
    return total + chunk_kl(emb_VD, inputs), None

  inputs = (h_TD.reshape(chunks, t_count // chunks, -1), teacher_h_TD.reshape(chunks, t_count // chunks, -1),
            weights_T.reshape(chunks, -1))
  total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), inputs)
  return total


# -------------------------------------------------------------------------------------------------- the teacher
@dataclasses.dataclass(frozen=True)
class DistillSpec:
  """config.distill resolved: alpha, temperature T, stop_step (0 = KD for the whole run)."""
  alpha: float
  temperature: float
  stop_step: int

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> 'DistillSpec':
    d = config.distill
    return cls(float(d.alpha), float(d.temperature), int(d.stop_step))


@dataclasses.dataclass
class Teacher:
  """The teacher model, its restored parameters (on the student's mesh) and the KD settings."""
  model: Any
  params: Params
  spec: DistillSpec
  step: int
  workdir: str


def enabled(config: ml_collections.ConfigDict) -> bool:
  return 'distill' in config and bool(config.distill.teacher_workdir)


def teacher_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The teacher's model config: distill.teacher_config (a Python config file) or TEACHER_WORKDIR/config.json, with
  the student's data section's seq_len (the teacher reads the student's batches). Raises ValueError when the
  teacher directory, its config or its checkpoints are missing, or its vocabulary differs from the student's."""
  d = config.distill
  workdir = d.teacher_workdir
  if not os.path.isdir(workdir):
    raise ValueError(f'distill.teacher_workdir={workdir!r} does not exist: train the teacher first '
                     f'(python -m samoe_jax.train --workdir={workdir} ...)')
  if d.teacher_config:
    t_config = load_config_file(d.teacher_config)
  else:
    path = os.path.join(workdir, 'config.json')
    if not os.path.isfile(path):
      raise ValueError(f'distill.teacher_workdir={workdir!r} has no config.json: set distill.teacher_config to the '
                       "teacher's config file")
    with open(path) as f:
      t_config = complete_config(json.load(f))
  steps = available_steps(workdir)
  if not steps:
    raise ValueError(f'distill.teacher_workdir={workdir!r} holds no checkpoint (no {workdir}/checkpoints/<step>)')
  if d.teacher_step and d.teacher_step not in steps:
    raise ValueError(f'distill.teacher_step={d.teacher_step}: no such checkpoint in {workdir}; available: {steps}')
  for key in ('vocab_size',):
    if t_config.model[key] != config.model[key]:
      raise ValueError(f'distill: teacher model.{key}={t_config.model[key]} differs from the student\'s '
                       f'{config.model[key]}: teacher and student must share the vocabulary')
  if t_config.data.vocabulary != config.data.vocabulary:
    raise ValueError(f'distill: teacher data.vocabulary={t_config.data.vocabulary!r} differs from the student\'s '
                     f'{config.data.vocabulary!r}: teacher and student must share the vocabulary')
  if t_config.model.max_len < config.data.seq_len:
    raise ValueError(f'distill: teacher model.max_len={t_config.model.max_len} < the student\'s data.seq_len='
                     f'{config.data.seq_len}')
  t_config = ml_collections.ConfigDict(t_config.to_dict())
  t_config.data.seq_len = config.data.seq_len
  return t_config


def load_teacher(config: ml_collections.ConfigDict, partitioner: Any) -> Teacher | None:
  """The teacher of a KD run (None when distill.teacher_workdir is ''), its params restored onto the mesh."""
  if not enabled(config):
    return None
  t_config = teacher_config(config)
  model = LanguageModel(t_config)
  workdir = config.distill.teacher_workdir
  step = config.distill.teacher_step or available_steps(workdir)[-1]
  params = restore_params(model, partitioner, workdir, step)
  return Teacher(model, params, DistillSpec.from_config(config), step, workdir)


def teacher_shardings(teacher_model: LanguageModel, partitioner: Any) -> Any:
  """The teacher params' shardings from the teacher model's own logical axes."""
  return partitioner.logical_to_mesh(teacher_model.param_logical_axes())


# ----------------------------------------------------------------------------------------------- the loss hook
def kd_term(student: Any, teacher_model: Any, spec: DistillSpec, teacher_params: Params,
            step: jax.Array) -> Callable[[Params, jax.Array, Batch], tuple[jax.Array, dict[str, jax.Array]]]:
  """The `extra_loss` hook for LanguageModel.loss_fn: (params, h_BLD, batch) -> (KD term, metrics).

  metrics: 'distill/kl' (mean KL over target tokens at temperature T; 0 when inactive), 'distill/loss' (the term
  added to the loss), 'distill/active' (1.0 while step < stop_step, else 0.0). The teacher's forward pass runs only
  in the active branch of a lax.cond on the traced step.
  """
  active = jnp.asarray(True) if spec.stop_step <= 0 else step < spec.stop_step

  def hook(params: Params, h_BLD: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    b, l, d = h_BLD.shape
    weights_T = batch['decoder_loss_weights'].astype(jnp.float32).reshape(b * l)
    emb_VD = student.output_embedding(params)

    def on(h_BLD, emb_VD):
      t_h_BLD, _ = teacher_model.hidden(teacher_params, batch['decoder_input_tokens'], EVAL)
      t_emb_VD = teacher_model.output_embedding(teacher_params)
      return kd_kl_sum(h_BLD.reshape(b * l, d), emb_VD, t_h_BLD.reshape(b * l, -1), t_emb_VD, weights_T,
                       spec.temperature)

    def off(h_BLD, emb_VD):
      del h_BLD, emb_VD
      return jnp.zeros((), jnp.float32)

    kl = jax.lax.cond(active, on, off, h_BLD, emb_VD) / jnp.maximum(jnp.sum(weights_T), 1.0)
    term = spec.alpha * spec.temperature ** 2 * kl
    return term, {'distill/kl': kl, 'distill/loss': term, 'distill/active': active.astype(jnp.float32)}

  return hook


def kd_loss_fn(student: Any, teacher_model: Any, spec: DistillSpec, teacher_params: Params,
               step: jax.Array, student_loss_fn: Callable | None = None) -> Callable:
  """The student's loss (student_loss_fn, default student.loss_fn; it must accept `extra_loss=`) with the KD term
  added: (params, batch, rng, options, **extras) -> (loss, metrics); options (a ForwardOptions) and extras (e.g.
  experts=) go to the student's.
  """
  hook = kd_term(student, teacher_model, spec, teacher_params, step)
  base = student.loss_fn if student_loss_fn is None else student_loss_fn

  def loss_fn(params: Params, batch: Batch, rng: jax.Array | None, options: ForwardOptions, **extras):
    return base(params, batch, rng, options, extra_loss=hook, **extras)

  return loss_fn


def describe(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The KD settings for samoe_jax.describe (None when off). The teacher's parameters are not counted."""
  if not enabled(config):
    return None
  d = config.distill
  return {'teacher_workdir': d.teacher_workdir, 'teacher_config': d.teacher_config or '<teacher config.json>',
          'teacher_step': d.teacher_step or 'latest', 'alpha': d.alpha, 'temperature': d.temperature,
          'stop_step': d.stop_step or 'none (KD for the whole run)'}
