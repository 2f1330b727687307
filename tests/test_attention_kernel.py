"""The attention kernels (layers/attention_kernel.py): the fused call equals the materialized einsums (outputs,
gradients, causality), 'auto' resolves per backend and dtype, and a kernel that cannot run is refused by name.

cuDNN itself needs an NVIDIA GPU; on CPU the fused path runs jax.nn.dot_product_attention's XLA implementation of
the same call (same layout, scale and causal mask)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samoe_jax.config.presets import bench
from samoe_jax.training.config_checks import validate_config
from samoe_jax.layers.attention import CausalSelfAttention
from samoe_jax.layers.attention_kernel import resolve_kernel
from samoe_jax.layers.inference import InferenceMode
from samoe_jax.models.model import LanguageModel

B, L, D, H = 2, 12, 32, 4


def _module(kernel, dtype=jnp.float32):
  return CausalSelfAttention(H, 0.3, 0.3, dtype=dtype, kernel=kernel)


@pytest.fixture(scope='module')
def params_x():
  x = jax.random.normal(jax.random.key(0), (B, L, D))
  params = nn.meta.unbox(_module('einsum').init(jax.random.key(1), x, train=False))['params']
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), params)  # biases too
  return params, x


def _outputs_and_gradients(kernel, dtype, params, x):
  def loss(params, x):
    y = _module(kernel, dtype).apply({'params': params}, x, train=True)
    return jnp.sum(jnp.sin(y.astype(jnp.float32))), y
  (_, y), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(params, x)
  return [np.asarray(a, np.float32) for a in [y] + jax.tree.leaves(grads)]


def test_fused_call_equals_einsums_outputs_and_gradients(params_x):
  """float32: equal to rounding; bfloat16: the fused call's error against the float32 einsums is no larger than
  the bfloat16 einsums' own (both round differently, so they are compared with the exact result, not each other)."""
  params, x = params_x
  exact = _outputs_and_gradients('einsum', jnp.float32, params, x)
  for got, want in zip(_outputs_and_gradients('xla', jnp.float32, params, x), exact):
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
  fused, einsum = (_outputs_and_gradients(k, jnp.bfloat16, params, x) for k in ('xla', 'einsum'))
  assert fused[0].shape == (B, L, D)
  for f, e, want in zip(fused, einsum, exact):
    error = lambda a: np.linalg.norm(a - want) / np.linalg.norm(want)
    assert error(f) <= 1.5 * error(e) + 2e-3, (error(f), error(e))
    assert error(f) < 0.05


def test_fused_call_is_causal(params_x):
  params, x = params_x
  apply = lambda x: _module('xla').apply({'params': params}, x, train=False)
  later = x.at[:, 7:].set(jax.random.normal(jax.random.key(9), (B, L - 7, D)))
  y, y_later = apply(x), apply(later)
  np.testing.assert_array_equal(np.asarray(y[:, :7]), np.asarray(y_later[:, :7]))
  assert not np.allclose(np.asarray(y[:, 7:]), np.asarray(y_later[:, 7:]))


def test_decoding_takes_the_cache_path_and_equals_the_fused_forward(params_x):
  params, x = params_x
  module = _module('xla')
  full = module.apply({'params': params}, x, train=False, inference=InferenceMode())   # scoring: fused
  lengths = jnp.full((B,), 5, jnp.int32)
  y, state = module.apply({'params': params}, x[:, :5], train=False,
                          inference=InferenceMode.prefill(lengths, L), mutable=['cache'])
  assert state['cache']['key'].shape == (B, H, L, D // H)
  np.testing.assert_allclose(y, full[:, :5], rtol=2e-5, atol=2e-5)
  for t in range(5, L):
    y_t, state = module.apply({'params': params, **state}, x[:, t:t + 1], train=False,
                              inference=InferenceMode('step', L, jnp.full((B,), t, jnp.int32)), mutable=['cache'])
    np.testing.assert_allclose(y_t[:, 0], full[:, t], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize('setting, dtype, dropout, width, backend, want', [
    ('auto', 'bfloat16', 0.0, 64, 'gpu', 'cudnn'),
    ('auto', 'bfloat16', 0.0, 64, 'cpu', 'einsum'),
    ('auto', 'bfloat16', 0.0, 64, 'tpu', 'einsum'),
    ('auto', 'float32', 0.0, 64, 'gpu', 'einsum'),
    ('auto', 'bfloat16', 0.1, 64, 'gpu', 'einsum'),
    ('auto', 'bfloat16', 0.0, 12, 'gpu', 'einsum'),
    ('auto', 'bfloat16', 0.0, 256, 'gpu', 'einsum'),
    ('einsum', 'bfloat16', 0.0, 64, 'gpu', 'einsum'),
    ('cudnn', 'bfloat16', 0.0, 128, 'gpu', 'cudnn'),
])
def test_auto_resolves_per_backend_dtype_dropout_and_head_width(setting, dtype, dropout, width, backend, want):
  assert resolve_kernel(setting, dtype, dropout, width, backend=backend) == want


def test_cudnn_without_a_gpu_is_refused_when_the_model_is_built():
  config = bench('dense')
  config.model.dtype, config.model.attention = 'bfloat16', 'cudnn'
  config.model.num_layers, config.model.vocab_size, config.data.seq_len = 1, 512, 16
  validate_config(config)   # valid as a config: it may be meant for another machine
  with pytest.raises(ValueError, match=r"model.attention='cudnn' needs an NVIDIA GPU backend, this process has 'cpu'"):
    LanguageModel(config).abstract_params()


@pytest.mark.parametrize('changes, message', [
    ({'attention': 'flash'}, r"model.attention='flash': must be one of \('auto', 'einsum', 'cudnn'\)"),
    ({'attention': 'cudnn'}, r"model.attention='cudnn' cannot run with model.dtype='float32'"),
    ({'attention': 'cudnn', 'dtype': 'bfloat16', 'dropout_rate': 0.1},
     r"model.attention='cudnn' cannot run with model.dropout_rate=0.1"),
    ({'attention': 'cudnn', 'dtype': 'bfloat16', 'num_heads': 64},
     r'head width model.d_model / model.num_heads = 4 \(needs a multiple of 8, <= 128\)'),
])
def test_config_validation_names_the_kernel_problem(changes, message):
  config = bench('dense')
  for key, value in changes.items():
    config.model[key] = value
  with pytest.raises(ValueError, match=message):
    validate_config(config)
