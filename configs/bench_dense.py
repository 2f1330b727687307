"""Benchmark reference workload, dense: bench_moe.py with every FFN dense (layer_plan 'none').

d_model 256, 4 layers, 4 heads, d_ff 1024, seq 256, batch 8, vocab_size 32000, float32; synthetic tokens.

Run:  python -m samoe_jax.describe --config=configs/bench_dense.py
"""

from samoe_jax.config.defaults import get_base_config


def get_config():
  c = get_base_config()
  c.model.vocab_size = 32000
  c.model.d_model = 256
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.d_ff = 1024
  c.model.max_len = 256
  c.model.dtype = 'float32'
  c.model.layer_plan = 'none'
  c.data.vocabulary = 'byte'
  c.data.seq_len = 256
  c.data.batch_size = 8
  c.mesh.data = -1
  c.mesh.expert = 1
  c.mesh.model = 1
  return c
