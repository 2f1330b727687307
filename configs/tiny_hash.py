"""Tiny Hash-Layer MoE (Roller et al. 2021, "Hash Layers For Large Sparse Models", arXiv 2106.04426): every token
goes to expert fmix32(token id + seed) mod E (a fixed random hash), gate 1, no router and no balancing loss;
causal position-priority slots with the usual capacity, so scoring and KV-cache decoding work.

Standard MoE (tiny('moe')) otherwise, with top_k = 1. docs/methods/routing.md.

Run:  python -m samoe_jax.describe --config=configs/tiny_hash.py
      python -m samoe_jax.train --config=configs/tiny_hash.py --workdir=runs/tiny_hash
"""

from samoe_jax.config.presets import tiny


def get_config():
  c = tiny('moe')
  c.moe.routing = 'hash'
  c.moe.top_k = 1
  c.moe.lb_loss_coef = c.moe.z_loss_coef = 0.0
  return c
