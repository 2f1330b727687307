"""Knowledge distillation with staged KD (samoe_jax/training/distill.py, docs/methods/distillation.md).

References: `plain_kd_kl_sum` on full logits (and a per-token NumPy loop) for the chunked KL and its gradients;
CE + alpha T^2 KL of full logits for the loss; the plain CE-only loss_fn after stop_step (bit-exact); a run through
loop.train of a teacher and a MoS student.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from method_checks import assert_causal, load_config_file, shrink_for_training, tiny_model_config

from samoe_jax import describe
from samoe_jax.models import accounting
from samoe_jax.training.config_checks import validate_config
from samoe_jax.models.model import EVAL, LanguageModel
from samoe_jax.training import distill, loop, step as step_lib
from samoe_jax.training.step_options import StepOptions
from samoe_jax.training.metrics_writer import read_metrics


def test_chunked_kl_matches_reference_values_and_grads():
  t, d, v = 1040, 8, 24                      # 1040 rows: 4 chunks of 260
  keys = jax.random.split(jax.random.key(0), 5)
  h, th = jax.random.normal(keys[0], (t, d)), jax.random.normal(keys[1], (t, d))
  emb, temb = jax.random.normal(keys[2], (v, d)), jax.random.normal(keys[3], (v, d))
  w = (jax.random.uniform(keys[4], (t,)) > 0.3).astype(jnp.float32)
  for temperature in (1.0, 2.5):
    def ref(h, emb, temperature=temperature):
      return distill.plain_kd_kl_sum(h @ emb.T, th @ temb.T, w, temperature)

    def fast(h, emb, temperature=temperature):
      return distill.kd_kl_sum(h, emb, th, temb, w, temperature)

    got, want = jax.jit(fast)(h, emb), ref(h, emb)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # per-token loop in NumPy (first 20 tokens)
    s, q = np.asarray(h @ emb.T, np.float64)[:20] / temperature, np.asarray(th @ temb.T, np.float64)[:20] / temperature
    total = 0.0
    for i in range(20):
      p_t = np.exp(q[i] - q[i].max()) / np.exp(q[i] - q[i].max()).sum()
      q_s = np.exp(s[i] - s[i].max()) / np.exp(s[i] - s[i].max()).sum()
      total += float(w[i]) * float(np.sum(p_t * (np.log(p_t) - np.log(q_s))))
    np.testing.assert_allclose(distill.kd_kl_sum(h[:20], emb, th[:20], temb, w[:20], temperature), total, rtol=1e-4)
    g_fast, g_ref = jax.jit(jax.grad(fast, argnums=(0, 1)))(h, emb), jax.grad(ref, argnums=(0, 1))(h, emb)
    for a, b in zip(g_fast, g_ref):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _models():
  student_cfg = tiny_model_config(**{'model.num_layers': 3})
  teacher_cfg = tiny_model_config()
  student, teacher = LanguageModel(student_cfg), LanguageModel(teacher_cfg)
  params = student.init_params(jax.random.key(1))
  t_params = teacher.init_params(jax.random.key(2))
  tokens = jax.random.randint(jax.random.key(3), (2, student_cfg.data.seq_len), 1, student_cfg.model.vocab_size)
  batch = {'decoder_input_tokens': tokens, 'decoder_target_tokens': jnp.roll(tokens, -1, axis=1),
           'decoder_loss_weights': jnp.ones(tokens.shape, jnp.float32).at[:, -3:].set(0.0)}
  return student, teacher, params, t_params, batch


def test_kd_loss_matches_reference_and_switches_off_after_stop_step():
  student, teacher, params, t_params, batch = _models()
  spec = distill.DistillSpec(alpha=0.7, temperature=2.0, stop_step=5)

  def kd(p, step):
    return distill.kd_loss_fn(student, teacher, spec, t_params, step)(p, batch, None, EVAL)

  def reference(p):
    ce_loss, _ = student.loss_fn(p, batch, None, EVAL)
    w = batch['decoder_loss_weights'].reshape(-1)
    s = student.logits(p, batch['decoder_input_tokens']).reshape(-1, student.spec.model.vocab_size)
    t = teacher.logits(t_params, batch['decoder_input_tokens']).reshape(-1, teacher.spec.model.vocab_size)
    kl = distill.plain_kd_kl_sum(s, t, w, spec.temperature) / jnp.sum(w)
    return ce_loss + spec.alpha * spec.temperature ** 2 * kl

  kd_jit = jax.jit(jax.value_and_grad(kd, has_aux=True))
  (loss, metrics), grads = kd_jit(params, jnp.int32(4))
  ref_value_and_grad = jax.jit(jax.value_and_grad(reference))
  ref_loss, ref_grads = ref_value_and_grad(params)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  assert float(metrics['distill/active']) == 1.0 and float(metrics['distill/kl']) > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), grads, ref_grads)
  # step >= stop_step: exactly the CE-only loss and gradients, same compiled function (no recompilation)
  (off_loss, off_metrics), off_grads = kd_jit(params, jnp.int32(5))
  plain = jax.jit(jax.value_and_grad(lambda p: student.loss_fn(p, batch, None, EVAL), has_aux=True))
  (plain_loss, _), plain_grads = plain(params)
  np.testing.assert_array_equal(off_loss, plain_loss)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), off_grads, plain_grads)
  assert float(off_metrics['distill/active']) == 0.0 and float(off_metrics['distill/kl']) == 0.0
  assert kd_jit._cache_size() == 1
  # the teacher forward sits in a lax.cond: with NaN teacher weights the inactive step stays finite (a select
  # would propagate NaN into the gradient)
  nan_params = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), t_params)
  nan_kd = jax.jit(jax.grad(lambda p, s: distill.kd_loss_fn(student, teacher, spec, nan_params, s)(
      p, batch, None, EVAL)[0]))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(nan_kd(params, jnp.int32(7))))
  assert 'cond' in str(jax.make_jaxpr(kd)(params, jnp.int32(0)))


def test_kd_with_microbatches_matches_one_batch():
  student, teacher, params, t_params, batch = _models()
  batch = jax.tree.map(lambda x: jnp.concatenate([x, x[::-1]]), batch)
  teacher_obj = distill.Teacher(teacher, t_params, distill.DistillSpec(1.0, 1.5, 0), 0, '')
  import optax
  from samoe_jax.training.state import TrainState
  opt = optax.sgd(0.0)
  state = TrainState(jnp.int32(0), params, opt.init(params))
  outs = [jax.jit(lambda s, m=m: step_lib.train_step(
              StepOptions(student, opt, lambda _: 0.0, m, teacher=teacher_obj.model, distill=teacher_obj.spec),
              s, batch, jax.random.key(0), teacher_params=t_params))(state)
          for m in (1, 2)]
  for key in ('loss', 'distill/kl', 'distill/loss', 'cross_entropy', 'grad_norm'):
    np.testing.assert_allclose(outs[0][1][key], outs[1][1][key], rtol=1e-4, err_msg=key)


@pytest.fixture(scope='module')
def teacher_run(tmp_path_factory):
  config = shrink_for_training(load_config_file('tiny_moe'), steps=10)
  workdir = str(tmp_path_factory.mktemp('teacher'))
  loop.train(config, workdir)
  return workdir, config


def test_mos_student_end_to_end(teacher_run, tmp_path):
  teacher_dir, _ = teacher_run
  config = shrink_for_training(load_config_file('tiny_mos_student'), steps=30)
  config.distill.teacher_workdir = config.init.from_workdir = teacher_dir
  config.distill.stop_step = 15
  loop.train(config, str(tmp_path))
  records = read_metrics(str(tmp_path), 'train')
  ce = [float(r['cross_entropy']) for r in records]
  assert np.mean(ce[-5:]) < ce[0] - 0.2, ce
  kl = [float(r['distill/kl']) for r in records]
  active = [float(r['distill/active']) for r in records]
  assert [r['step'] for r in records] == list(range(1, 31))
  assert all(a == 1.0 for a in active[:15]) and all(k > 0 for k in kl[:15])
  assert all(a == 0.0 for a in active[15:]) and all(k == 0.0 for k in kl[15:])
  for r in records:   # loss = CE + aux + KD term
    np.testing.assert_allclose(r['loss'], r['cross_entropy'] + r['aux_loss'] + r['distill/loss'], rtol=1e-5)


def test_errors(teacher_run, tmp_path):
  teacher_dir, _ = teacher_run
  config = shrink_for_training(load_config_file('tiny_mos_student'), steps=4)
  config.distill.teacher_workdir = str(tmp_path / 'nowhere')
  with pytest.raises(ValueError, match='distill.teacher_workdir=.*does not exist'):
    loop.train(config, str(tmp_path / 'a'))
  config.distill.teacher_workdir = teacher_dir
  config.model.vocab_size = 300
  with pytest.raises(ValueError, match='teacher model.vocab_size=264 differs'):
    loop.train(config, str(tmp_path / 'b'))
  config.model.vocab_size = 264
  config.data.vocabulary = 'sentencepiece'
  with pytest.raises(ValueError, match='vocabulary'):
    distill.teacher_config(config)
  bad = shrink_for_training(load_config_file('tiny_mos_student'))
  bad.distill.teacher_workdir, bad.distill.temperature, bad.distill.stop_step = 'x', 0.0, -1
  with pytest.raises(ValueError, match=r'distill.temperature=0.0: must be a number > 0(.|\n)*distill.stop_step=-1'):
    validate_config(bad)


def test_config_describe_accounting_causality():
  config = load_config_file('tiny_mos_student')
  config.distill.teacher_workdir, config.init.from_workdir = 'runs/tiny_moe', 'runs/tiny_moe'
  report = describe.describe(config)
  assert report['distill']['stop_step'] == 1000 and report['init']['mode'] == 'bottom_layers'
  text = describe.format_text(report)
  assert 'teacher' in text and 'not counted' in text and 'bottom_layers' in text
  assert accounting.param_counts(config)['total'] == LanguageModel(config).param_summary()['total']
  small = shrink_for_training(config)
  small.data.seq_len = small.model.max_len = 12
  assert_causal(small)
  cfg = ml_collections.ConfigDict(config.to_dict())
  validate_config(cfg)
