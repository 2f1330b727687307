"""Tiny manual sharing, adjacent layers share: MoE layers (0, 1) use pool entry 0 and (2, 3) use entry 1.

SaMoE's heuristic baseline (docs/methods/sharing.md): a fixed one-hot
mixing with P = L_moe / 2 pool entries and the 'block' assignment l -> l * P // L_moe. The tiny 4-layer GPT with an
MoE FFN in every block (layer_plan 'all', 8 experts top-2; each MoE layer its own router), so L_moe = 4, P = 2.
Compare with tiny_manual_strided.py (same sizes, strided), the standard MoE of the same layout
(configs/tiny_moe.py --config.model.layer_plan=all --config.pool.size=4) and SaMoE
(configs/tiny_samoe.py --config.model.layer_plan=all).

Run:  python -m samoe_jax.describe --config=configs/tiny_manual_adjacent.py
      python -m samoe_jax.train --config=configs/tiny_manual_adjacent.py --workdir=runs/tiny_manual_adjacent
"""

from samoe_jax.config.presets import tiny


def get_config():
  c = tiny('moe')
  c.model.layer_plan = 'all'       # L_moe = 4
  c.pool.size = 2                  # P = L_moe / 2
  c.pool.mixing = 'fixed'
  c.pool.assignment = 'block'      # entries [0, 0, 1, 1]
  return c
