"""Tiny Switch Transformer MoE (Fedus et al. 2021, arXiv 2101.03961; docs/methods/routing.md): top-1 routing, raw gate
p[e1], Switch capacity C = ceil(T * CF / E) (no minimum), DeepSpeed 'Jitter' router noise (input * U[0.99, 1.01]).

Standard MoE (tiny('moe')) otherwise: 8 experts on blocks 1 and 3. docs/methods/routing.md.

Run:  python -m samoe_jax.describe --config=configs/tiny_switch_top1.py
      python -m samoe_jax.train --config=configs/tiny_switch_top1.py --workdir=runs/tiny_switch_top1
"""

from samoe_jax.config.presets import tiny


def get_config():
  c = tiny('moe')
  c.moe.top_k = 1
  c.moe.capacity_formula = 'switch'
  c.moe.capacity_factor_train, c.moe.capacity_factor_eval = 1.25, 2.0
  c.moe.noise = 'jitter'
  return c
