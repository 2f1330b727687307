"""SMoE-Dropout (docs/methods/smoe_dropout.md): k schedules, active k through the model, evaluation k / gate overrides, the
frozen random router, accounting, causality, training, and the self-slimmability analysis end to end."""

import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from method_checks import ROOT, assert_causal, assert_loss_falls, load_config_file, shrink_for_training, \
    tiny_model_config
from samoe_jax.models import accounting
from samoe_jax.training.config_checks import config_errors
from samoe_jax.describe import describe
from samoe_jax.layers import k_schedule
from samoe_jax.layers.experts import ExpertWeights
from samoe_jax.layers.moe_call import MoeCall
from samoe_jax.models.model import EVAL, TRAIN, LanguageModel
from samoe_jax.models.spec import ModelSpec
from samoe_jax.models.transformer import make_moe_ffn

E = 4


# --------------------------------------------------------------------------------------------------- schedules
def repo_gate_number(kind, s, S, k_min, k_max):
  """calculate_gate_number of VITA-Group/Random-MoE-as-Dropout (new_utils.py), transcribed with plain Python."""
  if kind == 'linear_increase':
    k = round((k_max - k_min) * s / S) + k_min
  elif kind == 'linear_decrease':
    k = round((k_min - k_max) * s / S) + k_max
  elif kind == 'cosine_decrease':
    k = round((k_max - k_min) * math.cos(math.pi * s / (2 * S))) + k_min
  elif kind == 'cosine_increase':
    k = round((k_min - k_max) * math.cos(math.pi * s / (2 * S))) + k_max
  elif kind == 'exp_increase':   # the repo divides by S // 300 = 0 for S < 300; we use a period of 1 step there
    k = round((k_min - k_max) * 0.99 ** (s // max(S // 300, 1))) + k_max
  return min(max(k, k_min), k_max)


def test_schedule_hand_values():
  lin = k_schedule.KSchedule('linear_increase', 8, 16, 16)
  # round half to even: s=1 -> round(0.5) = 0, s=3 -> round(1.5) = 2, s=5 -> round(2.5) = 2
  assert lin.numpy(np.arange(17)).tolist() == [8, 8, 9, 10, 10, 10, 11, 12, 12, 12, 13, 14, 14, 14, 15, 16, 16]
  paper = k_schedule.KSchedule('linear_increase', 8, 16, 400_000)   # Table 1: 8 -> 16 over 400k steps
  assert paper.numpy([0, 25_000, 25_001, 200_000, 400_000, 500_000]).tolist() == [8, 8, 9, 12, 16, 16]
  cos = k_schedule.KSchedule('cosine_decrease', 2, 6, 6)   # round(4 cos(pi s / 12)) + 2
  assert cos.numpy(np.arange(7)).tolist() == [6, 6, 5, 5, 4, 3, 2]
  assert k_schedule.KSchedule('constant', 16, 16, 10).numpy([0, 5, 99]).tolist() == [16, 16, 16]
  assert lin.mean_k(16) == pytest.approx(np.mean(lin.numpy(np.arange(16))))


@pytest.mark.parametrize('kind', ['linear_increase', 'linear_decrease', 'cosine_increase', 'cosine_decrease',
                                  'exp_increase'])
@pytest.mark.parametrize('k_min,k_max,S', [(8, 16, 400), (1, 4, 37), (2, 2, 301), (3, 16, 900)])
def test_numpy_schedule_equals_the_repo_formula(kind, k_min, k_max, S):
  ours = k_schedule.schedule_numpy(kind, np.arange(S + 1), k_min, k_max, S)
  assert ours.tolist() == [repo_gate_number(kind, s, S, k_min, k_max) for s in range(S + 1)]


@pytest.mark.parametrize('kind', k_schedule.KINDS)
def test_jnp_schedule_equals_numpy_at_every_step(kind):
  for k_min, k_max, S in ((8, 16, 400), (1, 4, 7), (3, 16, 1000)):
    sched = k_schedule.KSchedule(kind, k_min, k_max, S)
    steps = np.arange(-3, S + 20)
    traced = jax.jit(jax.vmap(sched))(jnp.asarray(steps, jnp.int32))
    assert traced.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(traced), sched.numpy(steps))
    assert np.all((np.asarray(traced) >= k_min) & (np.asarray(traced) <= k_max))
    assert len(sched.jumps[1]) <= k_max - k_min   # monotone: at most k_max - k_min changes


def test_from_config_defaults_and_steps():
  c = load_config_file('tiny_smoe_dropout')
  sched = k_schedule.KSchedule.from_config(c)
  assert (sched.kind, sched.k_min, sched.k_max, sched.total_steps) == ('linear_increase', 8, 16, c.train.steps)
  c.moe.k_schedule_steps = 100
  assert k_schedule.KSchedule.from_config(c).total_steps == 100
  assert k_schedule.train_active_k(tiny_model_config(), jnp.int32(3)) is None   # constant: nothing is passed


BAD = [
    ({'moe.k_schedule': 'sawtooth'}, 'moe.k_schedule'),
    ({'moe.k_schedule': 'linear_increase', 'moe.k_min': 0}, 'moe.k_min'),
    ({'moe.k_schedule': 'linear_increase', 'moe.k_min': 3, 'moe.top_k': 2}, 'moe.k_min'),
    ({'moe.k_schedule': 'linear_increase', 'moe.k_max': 3}, 'moe.k_max'),
    ({'moe.k_schedule': 'linear_increase', 'moe.k_schedule_steps': -1}, 'moe.k_schedule_steps'),
    ({'moe.eval_top_k': 5}, 'moe.eval_top_k'),
    ({'moe.eval_gate': 'argmax'}, 'moe.eval_gate'),
    ({'moe.experts_per_layer': '2,4', 'moe.top_k': 1, 'moe.eval_top_k': 3}, 'moe.eval_top_k'),   # Pyramid-MoE
]


@pytest.mark.parametrize('overrides,key', BAD)
def test_bad_values_are_refused(overrides, key):
  errors = config_errors(tiny_model_config(**overrides))
  assert any(line.startswith(key + '=') for line in errors), errors


def test_good_values_pass():
  assert not config_errors(tiny_model_config(**{'moe.k_schedule': 'cosine_increase', 'moe.k_min': 1,
                                                 'moe.k_max': 2, 'moe.eval_top_k': 4, 'moe.eval_gate': 'uniform'}))
  assert not config_errors(load_config_file('tiny_smoe_dropout'))
  assert not config_errors(load_config_file('tiny_smoe_dropout', 'learned'))


# ------------------------------------------------------------------------------------------------------ model
def smoe_config(**overrides):
  """The SMoE-Dropout layer settings on the 4-layer test decoder: E = 4, top_k = k_max = 4, every layer MoE."""
  c = tiny_model_config(**{'model.layer_plan': 'all', 'pool.size': 4, 'pool.mixing': 'fixed', 'moe.top_k': E,
                           'moe.gate': 'topk_softmax', 'moe.router_bias': True, 'moe.router_trainable': False,
                           'moe.capacity_formula': 'none', 'moe.lb_loss_coef': 0.0, 'moe.z_loss_coef': 0.0,
                           'moe.k_schedule': 'linear_increase', 'moe.k_min': 2})
  c.update_from_flattened_dict(overrides)
  return c


def _batch(seed=1, b=2):
  tokens = jax.random.randint(jax.random.key(seed), (b, 13), 1, 64)
  return {'decoder_input_tokens': tokens[:, :-1], 'decoder_target_tokens': tokens[:, 1:],
          'decoder_loss_weights': jnp.ones((b, 12), jnp.float32)}


def reference_layer(x_TD, w, router_kernel, router_bias, k, gate):
  """y_t = sum_{i in topk(h_t, k)} g_i FFN_i(x_t), h = x W_r + b: a loop over tokens and chosen experts (docs/methods/smoe_dropout.md)."""
  y = np.zeros_like(x_TD)
  for t, x in enumerate(x_TD):
    h = x @ router_kernel + router_bias
    idx = sorted(range(len(h)), key=lambda e: (-h[e], e))[:k]
    if gate == 'uniform':
      g = np.full(k, 1.0 / k)
    else:
      g = np.exp(h[idx] - h[idx].max())
      g = g / g.sum()
    for gi, e in zip(g, idx):
      u = x @ w.w_in[e] + w.b_in[e]
      hidden = 0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u ** 3)))   # jax.nn.gelu (tanh form)
      y[t] += gi * (hidden @ w.w_out[e] + w.b_out[e])
  return y


@pytest.mark.parametrize('gate', ['topk_softmax', 'uniform'])
def test_moe_layer_at_active_k_equals_the_token_loop(gate):
  spec = ModelSpec.from_config(smoe_config(**{'moe.gate': gate}))
  layer = make_moe_ffn(spec, 'moe')
  rng = np.random.default_rng(0)
  x_BLD = jnp.asarray(rng.normal(size=(2, 12, 16)), jnp.float32)
  experts = ExpertWeights(*(jnp.asarray(rng.normal(size=s) * 0.3, jnp.float32)
                            for s in ((E, 16, 32), (E, 32), (E, 32, 16), (E, 16))))
  mask = jnp.ones((2, 12), bool)
  params = nn.meta.unbox(layer.init(jax.random.key(0), x_BLD, experts, mask, train=True))
  params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)   # bias != 0
  router = params['params']['router']
  apply = jax.jit(lambda p, a: layer.apply(p, x_BLD, experts, mask, train=True, call=MoeCall(active_k=a))[0])
  for k in range(1, E + 1):
    y = apply(params, jnp.int32(k))   # one compilation: k is traced
    ref = reference_layer(np.asarray(x_BLD).reshape(-1, 16), jax.tree.map(np.asarray, experts),
                          np.asarray(router['kernel']), np.asarray(router['bias']), k, gate)
    np.testing.assert_allclose(np.asarray(y).reshape(-1, 16), ref, rtol=2e-5, atol=2e-5, err_msg=f'k={k}')


def _outputs(model, params, batch, active_k=None):
  """(train-mode cross-entropy, eval-mode cross-entropy, evaluation-routing logits) of one model, jitted."""
  @jax.jit
  def run(p, b):
    _, train = model.loss_fn(p, b, None, TRAIN, active_k=active_k)
    _, evaluation = model.loss_fn(p, b, None, EVAL)
    return train, evaluation['cross_entropy'], model.logits(p, b['decoder_input_tokens'], sequence_routing=True)
  return run(params, batch)


@pytest.mark.parametrize('k', [3])
def test_active_k_and_eval_top_k_equal_a_model_built_with_that_top_k(k):
  """k_max = 4 with active_k = k (training) and eval_top_k = k (validation, evaluation routing) give the model
  built with top_k = k, on the same parameters."""
  params = jax.jit(LanguageModel(smoe_config()).init_params)(jax.random.key(0))
  batch = _batch()
  at_k = LanguageModel(smoe_config(**{'moe.eval_top_k': k}))
  same = LanguageModel(smoe_config(**{'moe.top_k': k, 'moe.k_min': 1}))
  m_active, eval_active, logits_active = _outputs(at_k, params, batch, jnp.int32(k))
  m_static, eval_static, logits_static = _outputs(same, params, batch)
  np.testing.assert_allclose(m_active['cross_entropy'], m_static['cross_entropy'], rtol=1e-5)
  assert float(m_active['moe/active_k']) == k and 'moe/active_k' not in m_static
  np.testing.assert_allclose(eval_active, eval_static, rtol=1e-5)
  np.testing.assert_allclose(logits_active, logits_static, rtol=1e-5, atol=1e-5)


def test_eval_gate_uniform_equals_a_model_trained_with_the_uniform_gate():
  params = jax.jit(LanguageModel(smoe_config()).init_params)(jax.random.key(0))
  tokens = _batch()['decoder_input_tokens']
  uniform = LanguageModel(smoe_config(**{'moe.eval_top_k': E, 'moe.eval_gate': 'uniform'}))
  trained_uniform = LanguageModel(smoe_config(**{'moe.gate': 'uniform'}))
  softmax = LanguageModel(smoe_config())
  logits = lambda m: jax.jit(m.logits)(params, tokens)
  np.testing.assert_allclose(logits(uniform), logits(trained_uniform), rtol=1e-5, atol=1e-5)
  assert not np.allclose(logits(uniform), logits(softmax), atol=1e-4)


def test_constant_schedule_passes_nothing():
  assert k_schedule.train_active_k(tiny_model_config(), jnp.int32(5)) is None
  assert k_schedule.train_active_k(None, jnp.int32(5)) is None
  config = smoe_config()
  expected = k_schedule.KSchedule.from_config(config)(jnp.int32(0))
  assert int(k_schedule.train_active_k(config, jnp.int32(0))) == int(expected)


@pytest.mark.parametrize('overrides', [{'moe.eval_top_k': 2},
                                       {'moe.eval_top_k': E, 'moe.eval_gate': 'uniform',
                                        'moe.capacity_formula': 'deepspeed', 'moe.capacity_factor_eval': 0.5}])
def test_causal(overrides):
  assert_causal(smoe_config(**overrides))


# ------------------------------------------------------------------------------------------------- accounting
@pytest.mark.parametrize('variant', ['', 'learned'])
def test_analytic_counts_equal_the_real_parameter_tree(variant):
  c = load_config_file('tiny_smoe_dropout', variant)
  summary = LanguageModel(c).param_summary()
  counts = accounting.param_counts(c)
  assert counts['total'] == summary['total'] == 1_874_240
  assert counts['active_per_token'] == summary['active_per_token']
  assert c.moe.expert_d_ff * c.moe.num_experts == c.model.d_ff   # the dense MLP split evenly


def test_describe_reports_the_schedule_and_the_eval_k():
  c = load_config_file('tiny_smoe_dropout')
  c.moe.eval_top_k = 4
  k = describe(c)['k_schedule']
  assert (k['k_start'], k['k_end'], k['eval_top_k'], k['eval_gate']) == (8, 16, 4, 'topk_softmax')
  assert k['mean_train_k'] == pytest.approx(12.0, abs=0.01)   # steps 0 .. 1999
  at4 = load_config_file('tiny_smoe_dropout')
  at4.moe.top_k, at4.moe.k_schedule = 4, 'constant'
  assert k['eval_active_per_token'] == LanguageModel(at4).param_summary()['active_per_token']
  flops16 = accounting.flops_per_token(load_config_file('tiny_smoe_dropout'))['train']
  flops4 = accounting.flops_per_token(at4)['train']
  assert k['train_flops_per_token'] == pytest.approx(
      flops4 + (k['mean_train_k'] - 4) / (16 - 4) * (flops16 - flops4), rel=1e-9)   # linear in k
  assert describe(tiny_model_config()).get('k_schedule') is None


def test_docs_page_names_the_formulas_and_keys():
  text = (ROOT / 'docs' / 'methods' / 'smoe_dropout.md').read_text()
  for needle in ('round((k_max - k_min) s / S) + k_min', 'cos(pi s / (2 S))', '2303.01610', 'moe.k_schedule',
                 'moe.k_min', 'moe.k_max', 'moe.k_schedule_steps', 'moe.eval_top_k', 'moe.eval_gate',
                 'samoe_jax.analysis.slimmability'):
    assert needle in text, needle


# ------------------------------------------------------------------------------------- training and slimmability
@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """The shrunk tiny_smoe_dropout config trained 40 steps (k: 8 -> 16); (config, workdir, train cross-entropies)."""
  workdir = tmp_path_factory.mktemp('smoe_dropout')
  config = shrink_for_training(load_config_file('tiny_smoe_dropout'))
  config.train.checkpoint_every, config.train.keep_checkpoints = 20, 2   # checkpoints of steps 20 and 40
  ce = assert_loss_falls(config, workdir)
  return config, workdir, ce


def test_loss_falls_and_active_k_is_logged(trained):
  from samoe_jax.training.metrics_writer import read_metrics
  config, workdir, _ = trained
  records = read_metrics(str(workdir), 'train')
  sched = k_schedule.KSchedule.from_config(config)
  for r in records:   # metrics logged at step s describe the update made from state.step = s - 1
    assert float(r['moe/active_k']) == sched.numpy(int(r['step']) - 1), r['step']
  assert float(records[0]['moe/active_k']) == 8 and float(records[-1]['moe/active_k']) == 16


def test_frozen_router_is_unchanged_by_training(trained):
  from samoe_jax.evaluation.checkpoints import restore_params
  from samoe_jax.sharding.mesh import make_mesh
  from samoe_jax.sharding.partitioner import Partitioner
  config, workdir, _ = trained
  model = LanguageModel(config)
  partitioner = Partitioner(make_mesh(config.mesh))
  initial = jax.jit(model.init_params)(jax.random.key(config.train.seed))   # the trainer's init (train.seed)
  middle = restore_params(model, partitioner, str(workdir), 20)
  final = restore_params(model, partitioner, str(workdir), config.train.steps)
  for i in range(config.model.num_layers):
    for name in ('kernel', 'bias'):
      router = lambda p: np.asarray(p[f'block_{i}']['moe']['router'][name])
      np.testing.assert_array_equal(router(final), router(middle))   # 20 updates changed nothing, bit for bit
      np.testing.assert_allclose(router(final), router(initial), rtol=0, atol=1e-7)   # the random init (XLA ulps)
  assert not np.allclose(final['expert_pool']['w_in'], middle['expert_pool']['w_in'], atol=1e-4)   # experts learn


def test_slimmability_cli_end_to_end(trained, tmp_path):
  from samoe_jax.data import pipeline
  from samoe_jax.evaluation.checkpoints import restore_params
  from samoe_jax.sharding.mesh import make_mesh
  from samoe_jax.sharding.partitioner import Partitioner
  config, workdir, _ = trained
  cmd = [sys.executable, '-m', 'samoe_jax.analysis.slimmability', f'--workdir={workdir}', '--ks=2',
         '--validation_batches=1']
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert '| top-2 | 2 | topk_softmax |' in out.stdout and '| uniform | 16 | uniform |' in out.stdout
  directory = workdir / 'analysis'
  for ext in ('json', 'md', 'png'):
    assert (directory / f'slimmability.{ext}').stat().st_size > 0
  report = json.loads((directory / 'slimmability.json').read_text())
  rows = {r['mode']: r for r in report['rows']}
  assert list(rows) == ['top-2', 'uniform'] and report['step'] == config.train.steps
  # direct computation: model.loss_fn(train=False) at eval_top_k = 2, token-weighted over the same batch
  c2 = shrink_for_training(load_config_file('tiny_smoe_dropout'))
  c2.moe.eval_top_k = 2
  model = LanguageModel(c2)
  params = restore_params(model, Partitioner(make_mesh(c2.mesh)), str(workdir), config.train.steps)
  batch = pipeline.make_eval_batches(c2.data, 1)[0]
  _, metrics = model.loss_fn(params, jax.tree.map(jnp.asarray, batch), None, EVAL)
  assert rows['top-2']['cross_entropy'] == pytest.approx(float(metrics['cross_entropy']), rel=1e-5)
  assert rows['top-2']['perplexity'] == pytest.approx(math.exp(float(metrics['cross_entropy'])), rel=1e-5)
  assert rows['top-2']['active_params_per_token'] < rows['uniform']['active_params_per_token']
  assert rows['uniform']['k'] == 16 and rows['top-2']['cross_entropy'] != rows['uniform']['cross_entropy']


def test_train_step_with_accumulation_runs_at_k_of_the_step():
  """train_step (2 microbatches) at state.step = 2 of a 4-step linear 2 -> 4 schedule: k = round(2 * 2 / 4) + 2 = 3
  is reported, and the whole-batch loss is the model's loss at that k (a 2-layer model, to compile fast)."""
  from samoe_jax.training import optimizer as optimizer_lib
  from samoe_jax.training.state import init_state
  from samoe_jax.training.step import train_step
  from samoe_jax.training.step_options import StepOptions
  config = smoe_config(**{'moe.k_schedule_steps': 4, 'model.num_layers': 2, 'pool.size': 2})
  model = LanguageModel(config)
  opt, schedule = optimizer_lib.make_optimizer(config.train, model.abstract_params(), model.param_logical_axes())
  state = jax.jit(lambda r: init_state(model, opt, r))(jax.random.key(0)).replace(step=jnp.int32(2))
  batch = _batch(b=4)
  _, metrics = jax.jit(lambda s, b: train_step(StepOptions(model, opt, schedule, microbatches=2), s, b,
                                                jax.random.key(1)))(
      state, batch)
  assert float(metrics['moe/active_k']) == 3 == k_schedule.KSchedule.from_config(config).numpy(2)
  _, direct = jax.jit(lambda p, b: model.loss_fn(p, b, None, TRAIN, active_k=jnp.int32(3)))(state.params, batch)
  np.testing.assert_allclose(metrics['cross_entropy'], direct['cross_entropy'], rtol=1e-5)
