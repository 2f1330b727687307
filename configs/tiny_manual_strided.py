"""Tiny manual sharing, strided: MoE layers (0, 2) use pool entry 0 and (1, 3) use entry 1.

SaMoE's heuristic baseline (docs/methods/sharing.md): a fixed one-hot
mixing with P = 2 pool entries and the 'modulo' assignment l -> l mod P, so layers P apart share. The tiny 4-layer
GPT with an MoE FFN in every block (layer_plan 'all', 8 experts top-2; each MoE layer its own router), L_moe = 4.
Same sizes as tiny_manual_adjacent.py.

Run:  python -m samoe_jax.describe --config=configs/tiny_manual_strided.py
      python -m samoe_jax.train --config=configs/tiny_manual_strided.py --workdir=runs/tiny_manual_strided
"""

from samoe_jax.config.presets import tiny


def get_config():
  c = tiny('moe')
  c.model.layer_plan = 'all'       # L_moe = 4
  c.pool.size = 2
  c.pool.mixing = 'fixed'
  c.pool.assignment = 'modulo'     # entries [0, 1, 0, 1]
  return c
