"""Tiny SaMoE ablation: expert-level mixing (every expert slot of every MoE layer mixes the pool on its own).

docs/methods/sharing.md, granularity (b). tiny_samoe.py (P = 2, blocks 1 and 3,
8 experts top-2) with pool.granularity = 'expert': alpha_l is [E, P] instead of [P], so expert e of layer l is
W^(l)_e = sum_j softmax(alpha_{l,e} / tau)_j W_{j,e}. Costs L_moe * E * P = 32 mixing logits instead of 4; the
per-token compute is that of one MoE layer, like the layer-level default.

Run:  python -m samoe_jax.describe --config=configs/tiny_samoe_expert_level.py
      python -m samoe_jax.train --config=configs/tiny_samoe_expert_level.py --workdir=runs/tiny_samoe_expert_level
"""

from samoe_jax.config.presets import tiny


def get_config():
  c = tiny('samoe')
  c.pool.granularity = 'expert'
  return c
