"""Benchmark reference workload, dense: bench_moe.py with every FFN dense (layer_plan 'none').

d_model 256, 4 layers, 4 heads, d_ff 1024, seq 256, batch 8, vocab_size 32000, float32; synthetic tokens.

Run:  python -m samoe_jax.describe --config=configs/bench_dense.py
"""

from samoe_jax.config.presets import bench


def get_config():
  return bench('dense')
