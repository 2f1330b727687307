"""Benchmark reference workload, SaMoE: bench_moe.py's active config with learned weight-space pool mixing.

Same sizes as bench_moe.py (d_model 256, 4 layers, 8 experts top-2 on blocks 1 and 3, capacity factor 1.25, seq
256, batch 8, vocab_size 32000, float32). Choice: pool.size = 2 with learned layer-level mixing, so both MoE
layers are soft mixtures of both pool entries and every step pays the real P = 2 weight-space mixing (P = 1 would
make the softmax identically 1: a degenerate mix with zero alpha gradient). At this depth the P = 2 pool stores as
many experts as bench_moe.py; the benchmark measures SaMoE's compute overhead, not its parameter saving. For the
tied variant run with --config.pool.size=1.

Run:  python -m samoe_jax.describe --config=configs/bench_samoe.py
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
  c.model.layer_plan = 'every_other'
  c.moe.num_experts = 8
  c.moe.top_k = 2
  c.moe.capacity_factor_train = 1.25
  c.moe.capacity_factor_eval = 1.25
  c.pool.size = 2
  c.pool.mixing = 'learned'
  c.pool.granularity = 'layer'
  c.pool.space = 'weight'
  c.pool.init = 'uniform'
  c.data.vocabulary = 'byte'
  c.data.seq_len = 256
  c.data.batch_size = 8
  c.mesh.data = -1
  c.mesh.expert = 1
  c.mesh.model = 1
  return c
