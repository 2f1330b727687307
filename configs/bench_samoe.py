"""Benchmark reference workload, SaMoE: bench_moe.py's active config with learned weight-space pool mixing.

Same sizes as bench_moe.py (d_model 256, 4 layers, 8 experts top-2 on blocks 1 and 3, capacity factor 1.25, seq
256, batch 8, vocab_size 32000, float32). Choice: pool.size = 2 with learned layer-level mixing, so both MoE
layers are soft mixtures of both pool entries and every step pays the real P = 2 weight-space mixing (P = 1 would
make the softmax identically 1: a degenerate mix with zero alpha gradient). At this depth the P = 2 pool stores as
many experts as bench_moe.py; the benchmark measures SaMoE's compute overhead, not its parameter saving. For the
tied variant run with --config.pool.size=1.

Run:  python -m samoe_jax.describe --config=configs/bench_samoe.py
"""

from samoe_jax.config.presets import bench


def get_config():
  return bench('samoe')
