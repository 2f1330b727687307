"""Gradient accumulation (train.microbatches) and activation rematerialisation (model.remat).

Accumulation must give the update of one big batch: the same loss, metrics, gradients and new parameters, with
padding spread unevenly over the microbatches (so averaging per-microbatch means would be wrong), for dense,
standard-MoE and SaMoE models (the SaMoE one with routing groups of two sequences). Remat must change memory only.
The 8-device checks run in a subprocess (tests/accumulation_checks.py).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from samoe_jax.config.defaults import get_base_config
from samoe_jax.config.layer_plan import group_rows
from samoe_jax.config.presets import set_sharing
from samoe_jax.training.config_checks import config_errors, validate_config
from samoe_jax.models.model import TRAIN, LanguageModel, token_mask
from samoe_jax.training import accumulate
from samoe_jax.training import optimizer as optimizer_lib
from samoe_jax.training import state as state_lib
from samoe_jax.training.step import make_train_step, train_step
from samoe_jax.training.step_options import StepOptions

ROOT = pathlib.Path(__file__).resolve().parents[1]
KINDS = ('dense', 'moe', 'samoe')
B, L = 8, 16
# Padded positions per row: microbatches of 1-row units (dense, moe) and of 2-row units (samoe) get very
# different numbers of target tokens.
PADDING = (12, 10, 0, 1, 14, 9, 2, 0)
# Less LLVM optimisation: these tiny steps compile about twice as fast and the comparisons are between
# executables built alike.
FAST = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}
LB_KEYS = ('moe/lb_loss', 'moe/layer0/lb_loss')   # the one metric accumulation does not reproduce (accumulate.py)


def tiny(kind: str, **overrides):
  """One block (MoE unless dense: 4 experts top-2, capacity factor 1 so tokens drop), d_model 32, batch 8 x 16.

  init_std 0.2 makes per-token cross-entropies differ (at 0.02 every token costs about log V).
  """
  c = get_base_config()
  c.model.vocab_size, c.model.d_model, c.model.num_layers, c.model.num_heads, c.model.d_ff = 64, 32, 1, 2, 64
  c.model.layer_plan, c.model.init_std = 'all', 0.2
  c.model.max_len = c.data.seq_len = L
  c.data.batch_size, c.data.vocabulary = B, 'byte'
  c.moe.num_experts, c.moe.top_k = 4, 2
  c.moe.capacity_factor_train = c.moe.capacity_factor_eval = 1.0
  c.moe.lb_loss_coef = 0.0
  c.moe.group_size = 2 * L if kind == 'samoe' else 0
  c.train.warmup_steps, c.train.steps = 1, 10
  set_sharing(c, kind, num_moe_layers=1)
  c.update_from_flattened_dict(overrides)
  return c


def with_value(config, key: str, value):
  """config with section.key = value, bypassing ConfigDict's type check (to build invalid configs)."""
  section, name = key.split('.')
  config[section] = ml_collections.ConfigDict({**config[section].to_dict(), name: value})
  return config


def make_batch(vocab: int = 64) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, vocab, size=(B, L + 1), dtype=np.int32)
  inputs, weights = tokens[:, :-1].copy(), np.ones((B, L), np.float32)
  for row, pad in enumerate(PADDING):
    if pad:
      weights[row, L - pad:] = 0.0
      inputs[row, L - pad + 1:] = 0   # the input is the target shifted right: one more real input position
  return {'decoder_input_tokens': inputs, 'decoder_target_tokens': tokens[:, 1:], 'decoder_loss_weights': weights}


def recording(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
  """`optimizer` that also keeps the gradients of its last update in its state (state[0])."""

  def init(params):
    return jax.tree.map(jnp.zeros_like, params), optimizer.init(params)

  def update(grads, state, params=None):
    updates, inner = optimizer.update(grads, state[1], params)
    return updates, (grads, inner)

  return optax.GradientTransformation(init, update)


def setup(config) -> types.SimpleNamespace:
  """model, optimizer (recording its gradients), schedule and a fresh state at step 3."""
  model = LanguageModel(config)
  optimizer, schedule = optimizer_lib.make_optimizer(config.train, model.abstract_params(),
                                                     model.param_logical_axes())
  optimizer = recording(optimizer)
  state = jax.jit(lambda r: state_lib.init_state(model, optimizer, r).replace(step=jnp.asarray(3, jnp.int32)),
                  compiler_options=FAST)(jax.random.key(0))
  return types.SimpleNamespace(model=model, optimizer=optimizer, schedule=schedule, state=state)


def run_step(s: types.SimpleNamespace, batch, microbatches: int):
  """(new state, metrics, gradients) of one jitted train_step."""
  fn = jax.jit(lambda st, b, r: train_step(StepOptions(s.model, s.optimizer, s.schedule, microbatches), st, b, r),
               compiler_options=FAST)
  new_state, metrics = fn(s.state, batch, jax.random.key(1))
  return new_state, jax.device_get(metrics), new_state.opt_state[0]


@pytest.fixture(scope='module', autouse=True)
def exact_matmuls():
  """float32 matmuls at full precision (GPUs default to TF32, whose rounding differs between the compared
  computations by ~1e-4); a no-op on CPU."""
  saved = jax.config.jax_default_matmul_precision
  jax.config.update('jax_default_matmul_precision', 'highest')
  yield
  jax.config.update('jax_default_matmul_precision', saved)


@pytest.fixture(scope='module')
def steps():
  """{(kind, M): (setup, new state, metrics, grads)} for M = 1, 2, 4 on the same batch."""
  batch = make_batch()
  out = {}
  for kind in KINDS:
    s = setup(tiny(kind))
    for m in (1, 2, 4):
      out[kind, m] = (s,) + run_step(s, batch, m)
  return out


def leaf_rel_diffs(a, b) -> list[float]:
  return jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / (np.max(np.abs(np.asarray(y))) + 1e-30)),
      a, b))


def global_rel_diff(a, b) -> float:
  diff = optax.tree.norm(jax.tree.map(lambda x, y: x - y, a, b))
  return float(diff / optax.tree.norm(b))


# ----------------------------------------------------------------------------------------------- accumulation
@pytest.mark.parametrize('microbatches', (2, 4))
@pytest.mark.parametrize('kind', KINDS)
def test_accumulation_equals_one_big_batch(steps, kind, microbatches):
  _, state_1, metrics_1, grads_1 = steps[kind, 1]
  _, state_m, metrics_m, grads_m = steps[kind, microbatches]
  assert set(metrics_m) == set(metrics_1)
  for key, want in metrics_1.items():
    if key in LB_KEYS:
      continue
    np.testing.assert_allclose(metrics_m[key], want, rtol=1e-5, atol=1e-7, err_msg=key)
  assert metrics_m['num_tokens'] == B * L - sum(PADDING)
  # Gradients: the same sums in another order.
  assert global_rel_diff(grads_m, grads_1) < 1e-5
  assert max(leaf_rel_diffs(grads_m, grads_1)) < 1e-4
  # AdamW's first update is lr * g / (|g| + 1e-8), whose slope in g is 1e-8 / (|g| + 1e-8)^2: entries with a
  # gradient near 0 amplify float noise, every other entry agrees to float precision.
  for p_m, p_1, g_1 in zip(*(jax.tree.leaves(t) for t in (state_m.params, state_1.params, grads_1))):
    significant = np.abs(np.asarray(g_1)) > 1e-5   # 1000 x Adam's epsilon
    np.testing.assert_allclose(np.asarray(p_m)[significant], np.asarray(p_1)[significant], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('kind', ('dense', 'samoe'))
def test_averaging_microbatch_means_would_be_wrong(steps, kind):
  """The padding is uneven enough that the plain mean of per-microbatch cross-entropies is off."""
  s, _, metrics_1, _ = steps[kind, 1]
  split = accumulate.split_microbatches(make_batch(), 2, group_rows(s.model.config))
  cross_entropy = jax.jit(lambda p, b: s.model.loss_fn(p, b, None, TRAIN)[1]['cross_entropy'], compiler_options=FAST)
  naive = np.mean([float(cross_entropy(s.state.params, {k: v[m] for k, v in split.items()})) for m in range(2)])
  assert abs(naive - metrics_1['cross_entropy']) > 1e-3 * metrics_1['cross_entropy']
  np.testing.assert_allclose(steps[kind, 2][2]['cross_entropy'], metrics_1['cross_entropy'], rtol=1e-6)


def test_microbatches_interleave_routing_groups():
  """Microbatch m holds units m, m + M, ... of R rows: rows stay whole groups and every data shard keeps its rows."""
  rows = jnp.arange(16)[:, None]
  got = accumulate.split_microbatches({'x': rows}, 2, unit_rows=2)['x'][..., 0]
  np.testing.assert_array_equal(got, [[0, 1, 4, 5, 8, 9, 12, 13], [2, 3, 6, 7, 10, 11, 14, 15]])
  got = accumulate.split_microbatches({'x': rows}, 4)['x'][..., 0]
  np.testing.assert_array_equal(got, [[0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10, 14], [3, 7, 11, 15]])


def reference_accumulation(model, params, batch, step_key, microbatches, unit_rows):
  """The accumulated objective written out by hand: a Python loop over microbatches (no scan), each weighted by
  its share of target tokens (cross-entropy) and of real input tokens (MoE losses)."""
  split = {k: np.asarray(v) for k, v in accumulate.split_microbatches(batch, microbatches, unit_rows).items()}
  targets = [max(float(np.sum(split['decoder_loss_weights'][m])), 1.0) for m in range(microbatches)]
  routed = [float(np.sum(token_mask(split['decoder_input_tokens'][m]))) for m in range(microbatches)]

  def objective(p):
    total, metrics = 0.0, []
    for m in range(microbatches):
      micro = {k: v[m] for k, v in split.items()}
      _, mets = model.loss_fn(p, micro, jax.random.fold_in(step_key, m), TRAIN)
      total += mets['cross_entropy'] * targets[m] / sum(targets) + mets['aux_loss'] * routed[m] / sum(routed)
      metrics.append(mets)
    return total, metrics

  (loss, metrics), grads = jax.jit(jax.value_and_grad(objective, has_aux=True), compiler_options=FAST)(params)
  lb = sum(float(mets['moe/lb_loss']) * routed[m] / sum(routed) for m, mets in enumerate(metrics))
  return float(loss), lb, grads


def test_dropout_keys_and_load_balancing_loss_under_accumulation():
  """With dropout and the load-balancing loss on: microbatch m draws fold_in(fold_in(rng, step), m), and the loss,
  its lb part and the gradients are those of the hand-written token-weighted objective."""
  s = setup(tiny('moe', **{'model.dropout_rate': 0.2, 'moe.lb_loss_coef': 0.01}))
  batch = make_batch()
  step_key = jax.random.fold_in(jax.random.key(1), 3)   # the state is at step 3
  _, metrics_2, grads_2 = run_step(s, batch, 2)
  loss, lb, grads = reference_accumulation(s.model, s.state.params, batch, step_key, 2, 1)
  np.testing.assert_allclose(metrics_2['loss'], loss, rtol=1e-6)
  np.testing.assert_allclose(metrics_2['moe/lb_loss'], lb, rtol=1e-6)
  assert global_rel_diff(grads_2, grads) < 1e-5
  # M = 1 keeps the pre-accumulation key fold_in(rng, step) (so existing runs resume identically).
  _, metrics_1, _ = run_step(s, batch, 1)
  want, _ = jax.jit(s.model.loss_fn, static_argnums=3, compiler_options=FAST)(s.state.params, batch, step_key, TRAIN)
  np.testing.assert_allclose(metrics_1['loss'], want, rtol=1e-6)
  # The big batch's balancing loss is E sum f P over all tokens: a different number (documented).
  assert abs(float(metrics_1['moe/lb_loss']) - lb) > 1e-6


@pytest.fixture(scope='module', autouse=True)
def eight_device_process(tmp_path_factory):
  """Starts tests/accumulation_checks.py on 8 fake devices when the module starts, so it runs beside the other
  tests; yields (process, results path, log path)."""
  folder = tmp_path_factory.mktemp('accumulation')
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8 '
             '--xla_llvm_disable_expensive_passes=true',
             PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  with open(folder / 'log.txt', 'w') as log:
    process = subprocess.Popen([sys.executable, str(ROOT / 'tests' / 'accumulation_checks.py'),
                                str(folder / 'results.json')], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
  yield process, folder / 'results.json', folder / 'log.txt'
  if process.poll() is None:
    process.kill()
    process.wait()


@pytest.fixture(scope='module')
def eight_devices(eight_device_process):
  process, results, log = eight_device_process
  assert process.wait(timeout=600) == 0, log.read_text()[-4000:]
  return json.loads(results.read_text())


def test_split_keeps_rows_on_their_devices(eight_devices):
  split = eight_devices['split']
  assert split['split_spec'] == "P(None, ('data', 'expert'))"
  assert split['rows_per_device_after'] == split['rows_per_device_before']
  assert all(n == 0 for n in split['interleaved']['collectives'].values())
  assert sum(split['contiguous']['collectives'].values()) > 0    # a contiguous split would move data
  rows = split['microbatch_rows']   # 4 microbatches of 2-row routing groups
  assert rows[1][:4] == [2, 3, 10, 11] and sorted(sum(rows, [])) == list(range(64))


@pytest.mark.parametrize('microbatches', (2, 4))
def test_accumulation_on_2x4x1_mesh_equals_one_device(eight_devices, microbatches):
  got, want = eight_devices[f'microbatches={microbatches}']['metrics'], eight_devices['reference_metrics']
  assert set(got) == set(want)
  for key in ('loss', 'cross_entropy', 'accuracy', 'num_tokens', 'grad_norm', 'aux_loss', 'moe/z_loss',
              'moe/dropped_fraction', 'moe/layer0/expert_load'):
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)
  assert eight_devices[f'microbatches={microbatches}']['params_max_rel_diff'] < 1e-2   # Adam: see the test above


# ---------------------------------------------------------------------------------------------------- remat
@pytest.fixture(scope='module')
def remat_results():
  """Per remat mode: (loss, grads, bytes the backward pass keeps) of the MoE model's loss with dropout on."""
  batch = make_batch()
  out = {}
  for mode in ('none', 'block', 'dots'):
    model = LanguageModel(tiny('moe', **{'model.remat': mode, 'model.num_layers': 2, 'model.dropout_rate': 0.1}))
    params = jax.jit(model.init_params, compiler_options=FAST)(jax.random.key(0))

    def loss(p, model=model):
      return model.loss_fn(p, batch, jax.random.key(2), TRAIN)[0]

    value, grads = jax.jit(jax.value_and_grad(loss), compiler_options=FAST)(params)
    residuals = jax.eval_shape(lambda p, loss=loss: jax.tree.leaves(jax.vjp(loss, p)[1]), params)
    out[mode] = (float(value), grads, sum(math.prod(r.shape) * r.dtype.itemsize for r in residuals))
  return out


@pytest.mark.parametrize('mode', ('block', 'dots'))
def test_remat_changes_neither_loss_nor_gradients(remat_results, mode):
  loss, grads, _ = remat_results[mode]
  want_loss, want_grads, _ = remat_results['none']
  assert loss == pytest.approx(want_loss, rel=1e-6)
  assert max(leaf_rel_diffs(grads, want_grads)) < 1e-5


def test_remat_keeps_fewer_activations(remat_results):
  """Bytes the backward pass keeps from the forward pass (jax.vjp's residuals: parameters and activations)."""
  none, block, dots = (remat_results[m][2] for m in ('none', 'block', 'dots'))
  assert block < dots < none
  assert block < none / 3


@pytest.mark.skipif(jax.default_backend() == 'cpu', reason="XLA:CPU removes jax.checkpoint's optimization barriers "
                    '(cse_barrier_expander) and then merges the recomputation with the forward pass, so remat '
                    'saves no memory there; this runs on GPU/TPU')
def test_remat_lowers_compiled_train_step_temp_memory():
  temps = {}
  for mode in ('none', 'block'):
    config = tiny('moe', **{'model.remat': mode, 'model.num_layers': 8, 'model.d_model': 128, 'model.d_ff': 512,
                            'model.max_len': 256, 'data.seq_len': 256, 'data.batch_size': 32})
    model = LanguageModel(config)
    optimizer, schedule = optimizer_lib.make_optimizer(config.train, model.abstract_params(),
                                                       model.param_logical_axes())
    abstract = state_lib.abstract_state(model, optimizer)
    batch = {k: jax.ShapeDtypeStruct((32, 256), dtype) for k, dtype in (
        ('decoder_input_tokens', jnp.int32), ('decoder_target_tokens', jnp.int32),
        ('decoder_loss_weights', jnp.float32))}
    fn = jax.jit(lambda st, b, r, model=model, optimizer=optimizer, schedule=schedule: train_step(
        StepOptions(model, optimizer, schedule), st, b, r))
    compiled = fn.lower(abstract, batch, jax.ShapeDtypeStruct((), jax.random.key(0).dtype)).compile()
    temps[mode] = compiled.memory_analysis().temp_size_in_bytes
  assert temps['block'] < temps['none'], temps


# ----------------------------------------------------------------------------------------------- validation
def test_bad_microbatches_are_refused_early():
  from samoe_jax.training import loop  # pylint: disable=g-import-not-at-top  (imports the data pipeline)
  for bad in (0, -2, 1.5, True, '2'):
    with pytest.raises(ValueError, match=r'train\.microbatches=.*integer >= 1'):
      validate_config(with_value(tiny('dense'), 'train.microbatches', bad))
  with pytest.raises(ValueError, match=r'data\.batch_size=8 must be divisible by train\.microbatches=3'):
    validate_config(tiny('dense', **{'train.microbatches': 3}))
  with pytest.raises(ValueError, match=r'train\.microbatches=8 x 2 sequences per routing group'):
    validate_config(tiny('samoe', **{'train.microbatches': 8}))
  assert not [line for line in config_errors(tiny('samoe', **{'train.microbatches': 4})) if 'microbatches' in line]
  # With the mesh: every microbatch must split evenly over the data shards (data x expert).
  partitioner = types.SimpleNamespace(num_data_shards=4, mesh=types.SimpleNamespace(
      shape={'data': 2, 'expert': 2, 'model': 1}))
  with pytest.raises(ValueError, match=r'train\.microbatches=4 x the 4 data shards of the mesh \(data=2 expert=2 '
                     r'model=1\) = 16'):
    loop.check_mesh_fits(tiny('dense', **{'train.microbatches': 4}), partitioner, has_moe=False)
  loop.check_mesh_fits(tiny('dense', **{'train.microbatches': 2}), partitioner, has_moe=False)
  with pytest.raises(ValueError, match='train.microbatches=0'):
    make_train_step(StepOptions(None, None, None, microbatches=0), None, None)


def test_bad_remat_is_refused_early():
  for bad in ('full', '', None, True):
    with pytest.raises(ValueError, match=r"model\.remat=.*must be one of \['block', 'dots', 'none'\]"):
      LanguageModel(with_value(tiny('dense'), 'model.remat', bad))
  assert get_base_config().model.remat == 'none' and get_base_config().train.microbatches == 1
