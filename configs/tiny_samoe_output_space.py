"""Tiny SaMoE ablation: output-space mixing y = sum_j w_j MoE_j(x) instead of mixing weights.

docs/methods/sharing.md, an ablation. tiny_samoe.py
(P = 2, blocks 1 and 3, 8 experts top-2) with pool.space = 'output': each routed token runs through the experts of
all P pool entries and the outputs are mixed, so expert FLOPs are P = 2 times those of weight-space mixing (describe
shows it). Same parameters as tiny_samoe.py.

Run:  python -m samoe_jax.describe --config=configs/tiny_samoe_output_space.py
      python -m samoe_jax.train --config=configs/tiny_samoe_output_space.py --workdir=runs/tiny_samoe_output_space
"""

from samoe_jax.config.presets import tiny


def get_config():
  c = tiny('samoe')
  c.pool.space = 'output'
  return c
