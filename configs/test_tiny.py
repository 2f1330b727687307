"""Smallest config, for the fast tests: a 2-layer byte-level SaMoE on the tiny Shakespeare task.

d_model 32, 2 layers (block 1 is MoE: 4 experts, top-2, drawn from a learned pool of 2), 2 heads, d_ff 64,
seq 16, batch 4, byte vocabulary (259 ids, table padded to 264 rows), a handful of steps. Reproduces nothing;
it only has to build, train and evaluate in seconds on CPU.

Run:  python -m samoe_jax.describe --config=configs/test_tiny.py
      pytest tests/
"""

from samoe_jax.config.defaults import get_base_config


def get_config():
  c = get_base_config()
  c.model.vocab_size = 264        # 259 byte-vocabulary ids rounded up to a multiple of 8
  c.model.d_model = 32
  c.model.num_layers = 2
  c.model.num_heads = 2
  c.model.d_ff = 64
  c.model.max_len = 16
  c.model.layer_plan = 'every_other'
  c.moe.num_experts = 4
  c.moe.top_k = 2
  c.pool.size = 2
  c.pool.mixing = 'learned'
  c.data.task = 'shakespeare_tiny'
  c.data.vocabulary = 'byte'
  c.data.seq_len = 16
  c.data.batch_size = 4
  c.data.shuffle_buffer = 100
  c.train.steps = 4
  c.train.warmup_steps = 1
  c.train.log_every = 1
  c.train.eval_every = 2
  c.train.eval_batches = 1
  c.train.checkpoint_every = 2
  c.train.keep_checkpoints = 1
  c.train.async_checkpoint = False
  return c
