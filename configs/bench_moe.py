"""Benchmark reference workload, standard MoE: the throughput baseline for bench_dense.py and bench_samoe.py.

d_model 256, 4 layers, 4 heads, d_ff 1024, MoE on blocks 1 and 3 with 8 experts top-2, capacity factor 1.25
(train and eval), seq 256, batch 8, vocab_size 32000, float32. Standard MoE: pool.size = 2 = MoE layers, fixed
mixing. The benchmark feeds synthetic token ids below 32000; data.vocabulary 'byte' is a placeholder it never
reads.

Run:  python -m samoe_jax.describe --config=configs/bench_moe.py
"""

from samoe_jax.config.presets import bench


def get_config():
  return bench('moe')
