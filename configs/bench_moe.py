"""Benchmark reference workload, standard MoE: the throughput baseline for bench_dense.py and bench_samoe.py.

d_model 256, 4 layers, 4 heads, d_ff 1024, MoE on blocks 1 and 3 with 8 experts top-2, capacity factor 1.25
(train and eval), seq 256, batch 8, vocab_size 32000, float32. Standard MoE: pool.size = 2 = MoE layers, fixed
mixing. The benchmark feeds synthetic token ids below 32000; data.vocabulary 'byte' is a placeholder it never
reads.

Run:  python -m samoe_jax.describe --config=configs/bench_moe.py
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
  c.pool.mixing = 'fixed'
  c.pool.assignment = 'modulo'
  c.data.vocabulary = 'byte'
  c.data.seq_len = 256
  c.data.batch_size = 8
  c.mesh.data = -1
  c.mesh.expert = 1
  c.mesh.model = 1
  return c
