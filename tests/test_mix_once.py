"""SaMoE under gradient accumulation mixes its pool once per optimizer step (training/accumulate.py).

The once-mixed path (premix: mix before the scan, accumulate the mixed experts' gradients, one backward pass
through the mixing) must give the per-microbatch mixing's gradients and metrics, for layer- and expert-level
mixing; and the scan must no longer read the pool.
"""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from samoe_jax.config.defaults import get_base_config
from samoe_jax.config.presets import set_sharing
from samoe_jax.models.model import LanguageModel
from samoe_jax.training import accumulate
from samoe_jax.training.step import _premix

B, L, P, E, D, F = 4, 8, 3, 4, 16, 24
FAST = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def tiny(granularity: str):
  """2 MoE blocks sharing a learned pool of P = 3 (a pool shape no other array has), batch 4 x 8."""
  c = get_base_config()
  c.model.vocab_size, c.model.d_model, c.model.num_layers, c.model.num_heads = 32, D, 2, 2
  c.model.d_ff, c.model.layer_plan, c.model.init_std = F, 'all', 0.2
  c.model.max_len = c.data.seq_len = L
  c.data.batch_size, c.data.vocabulary = B, 'byte'
  c.moe.num_experts, c.moe.top_k = E, 2
  set_sharing(c, 'samoe', num_moe_layers=2, pool_size=P)
  c.pool.granularity, c.pool.init = granularity, 'one_hot'   # one-hot init: layers mix the pool differently
  return c


def make_batch():
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 32, size=(B, L + 1), dtype=np.int32)
  weights = np.ones((B, L), np.float32)
  weights[1, 5:] = 0.0
  return {'decoder_input_tokens': tokens[:, :-1], 'decoder_target_tokens': tokens[:, 1:],
          'decoder_loss_weights': weights}


def accumulated(model, params, batch, premix):
  fn = jax.jit(lambda p, b: accumulate.accumulate_gradients(model.loss_fn, p, b, jax.random.key(1), 2,
                                                            premix=premix), compiler_options=FAST)
  return jax.device_get(fn(params, batch))


@pytest.mark.parametrize('granularity', ['layer', 'expert'])
def test_mixing_once_equals_mixing_per_microbatch(granularity):
  model = LanguageModel(tiny(granularity))
  params = model.init_params(jax.random.key(0))
  batch = make_batch()
  premix = _premix(model, None)
  assert premix is not None
  grads_each, metrics_each = accumulated(model, params, batch, None)
  grads_once, metrics_once = accumulated(model, params, batch, premix)
  flat_each = jax.tree_util.tree_flatten_with_path(grads_each)[0]
  flat_once = dict(jax.tree_util.tree_flatten_with_path(grads_once)[0])
  assert len(flat_each) == len(flat_once)
  for path, g in flat_each:
    np.testing.assert_allclose(flat_once[path], g, rtol=2e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))
  # the pool and the mixing logits get real gradients through the one backward pass
  assert float(np.abs(grads_once['mixing_logits']['alpha']).max()) > 1e-6
  assert float(np.abs(grads_once['expert_pool']['w_in']).max()) > 1e-6
  assert set(metrics_once) == set(metrics_each)
  for key, value in metrics_each.items():
    np.testing.assert_allclose(metrics_once[key], value, rtol=2e-5, atol=1e-7, err_msg=key)
  np.testing.assert_allclose(metrics_once['pool/mixing_weights'], model.mixing_weights(params), rtol=1e-6)


def _pool_consumers(jaxpr, pool_shape: tuple[int, ...], in_scan: bool = False) -> set[str]:
  """Primitives inside a scan body (recursively) that take a pool-shaped operand."""
  found = set()
  for eqn in jaxpr.eqns:
    if in_scan and any(tuple(getattr(v.aval, 'shape', ())) == pool_shape for v in eqn.invars):
      found.add(eqn.primitive.name)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      found |= _pool_consumers(sub, pool_shape, in_scan or eqn.primitive.name == 'scan')
  return found


def test_the_scan_does_not_mix():
  """Per microbatch the pool is reshaped and contracted inside the scan; mixed once, the pool reaches the scan
  only as the (always zero) addend of its own gradient accumulator."""
  model = LanguageModel(tiny('layer'))
  params = model.init_params(jax.random.key(0))
  batch = make_batch()
  consumers = {}
  for name, premix in (('each', None), ('once', _premix(model, None))):
    jaxpr = jax.make_jaxpr(lambda p, b: accumulate.accumulate_gradients(
        model.loss_fn, p, b, jax.random.key(1), 2, premix=premix))(params, batch).jaxpr
    consumers[name] = _pool_consumers(jaxpr, (P, E, D, F))
  assert consumers['each'] & {'reshape', 'dot_general'}, consumers
  assert consumers['once'] <= {'add', 'add_any'}, consumers


def test_premix_only_for_a_learned_weight_space_pool():
  standard = get_base_config()
  set_sharing(standard, 'moe', num_moe_layers=2)
  output_space = tiny('layer')
  output_space.pool.space = 'output'
  assert _premix(LanguageModel(standard), None) is None
  assert _premix(LanguageModel(output_space), None) is None
  mixed, weights = _premix(LanguageModel(tiny('layer')), None)(
      LanguageModel(tiny('layer')).init_params(jax.random.key(0)))
  assert sorted(mixed) == [0, 1] and weights.shape == (2, P)
  assert jnp.asarray(mixed[0].experts.w_in).shape == (E, D, F)
