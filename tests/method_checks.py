"""Checks every method of issue 5 shares (tests/ helper): causality of a decoder config, and a short training run
on the tiny corpus whose loss must fall.

  tiny_model_config(**overrides)   the tiny decoder of tests/test_model.py (V=64, d 16, 4 layers, E=4, top-2, L=12)
  assert_causal(config)            later tokens never change earlier logits (full forward and evaluation routing)
  shrink_for_training(config)      a method's configs/*.py config at test size (byte vocabulary, shakespeare_tiny)
  assert_loss_falls(config, dir)   trains through samoe_jax.training.loop.train and checks the loss falls
"""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np

from samoe_jax.config.defaults import get_base_config
from samoe_jax.models.model import LanguageModel
from samoe_jax.training import loop
from samoe_jax.training.metrics_writer import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
V, L = 64, 12


def tiny_model_config(**overrides: Any) -> ml_collections.ConfigDict:
  """A 4-layer decoder small enough to compile in a second; overrides are dotted keys ('moe.top_k': 1)."""
  c = get_base_config()
  c.model.vocab_size, c.model.d_model, c.model.num_layers, c.model.num_heads, c.model.d_ff = V, 16, 4, 2, 32
  c.model.max_len = c.data.seq_len = L
  c.model.init_std = 0.3   # large weights make the routers decisive, so routing changes would show
  c.moe.num_experts, c.moe.top_k = 4, 2
  c.update_from_flattened_dict(overrides)
  return c


def assert_causal(config: ml_collections.ConfigDict, *, sequence_routing: bool = True, seed: int = 0) -> None:
  """Changing tokens after position t never changes the logits at positions <= t, in the training-style forward
  pass and (sequence_routing=True) in evaluation routing; the change must be visible at later positions."""
  model = LanguageModel(config)
  params = jax.jit(model.init_params)(jax.random.key(seed))
  length, vocab = config.data.seq_len, config.model.vocab_size
  modes = [False, True] if sequence_routing else [False]
  tokens = jax.random.randint(jax.random.key(seed + 1), (2, length), 1, vocab)
  for mode in modes:
    logits = jax.jit(lambda p, t, m=mode: model.logits(p, t, sequence_routing=m))
    base = np.asarray(logits(params, tokens))
    for t in (2, length // 2 + 1):
      changed = tokens.at[:, t + 1:].set(jax.random.randint(jax.random.key(t), (2, length - t - 1), 1, vocab))
      out = np.asarray(logits(params, changed))
      np.testing.assert_allclose(out[:, :t + 1], base[:, :t + 1], rtol=1e-5, atol=1e-5,
                                 err_msg=f'not causal at t={t} (sequence_routing={mode})')
      assert not np.allclose(out[:, t + 1:], base[:, t + 1:]), 'the change is not visible later on'


def load_config_file(name: str, argument: str | None = None) -> ml_collections.ConfigDict:
  """configs/<name>.py's get_config() (with its optional ':argument')."""
  spec = importlib.util.spec_from_file_location(f'configs_{name}', ROOT / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(argument) if argument is not None else module.get_config()


def shrink_for_training(config: ml_collections.ConfigDict, steps: int = 40) -> ml_collections.ConfigDict:
  """The same method at test size: widths d 32 / F 64 (experts 64 unless set smaller), 2 heads, seq 32, batch 8,
  the byte vocabulary on 'shakespeare_tiny', `steps` steps at lr 3e-3 with 4 warm-up steps; layers, experts, top-k
  and every method key are kept."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.model.vocab_size, c.model.d_model, c.model.num_heads, c.model.d_ff = 264, 32, 2, 64
  c.model.max_len = c.data.seq_len = 32
  c.model.dtype, c.model.remat = 'float32', 'none'
  if c.moe.expert_d_ff > 64:
    c.moe.expert_d_ff = 64
  c.moe.group_size = 0
  c.data.task, c.data.vocabulary, c.data.batch_size, c.data.shuffle_buffer = 'shakespeare_tiny', 'byte', 8, 100
  c.data.tfds_name = ''
  c.train.steps, c.train.decay_steps, c.train.warmup_steps, c.train.learning_rate = steps, 0, 4, 3e-3
  c.train.log_every, c.train.eval_every, c.train.eval_batches = 1, steps, 1
  c.train.checkpoint_every, c.train.keep_checkpoints, c.train.async_checkpoint = steps, 1, False
  c.train.microbatches = 1
  c.eval.tasks = ''
  c.mesh.data, c.mesh.expert, c.mesh.model = -1, 1, 1
  return c


def assert_loss_falls(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                      min_drop: float = 0.5) -> list[float]:
  """Trains `config` in `workdir` with the real trainer; the mean cross-entropy of the last 5 logged steps must be
  at least `min_drop` nats below the first step's. Returns the per-step cross-entropies."""
  loop.train(config, str(workdir))
  records = read_metrics(str(workdir), 'train')
  ce = [float(r['cross_entropy']) for r in records]
  assert len(ce) >= 10, f'only {len(ce)} train records'
  assert all(np.isfinite(ce)), ce
  assert np.mean(ce[-5:]) < ce[0] - min_drop, f'the loss does not fall: first {ce[0]:.3f}, last {ce[-5:]}'
  return ce
