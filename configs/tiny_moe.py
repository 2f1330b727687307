"""Tiny standard MoE on the embedded Shakespeare corpus: the baseline for tiny_samoe.py.

Same model and data as tiny_samoe.py (4 layers, d_model 128, 8 experts top-2 on blocks 1 and 3), but every MoE
layer owns its experts: pool.size = 2 = the number of MoE layers, fixed one-hot mixing, 'modulo' (identity)
assignment. That is the standard GShard/Switch MoE; at this size it stores as many experts as the SaMoE P = 2
pool, so the tiny comparison is about mixing, not size (the gpt3_* configs show the parameter savings).

Run:  python -m samoe_jax.describe --config=configs/tiny_moe.py
      python -m samoe_jax.train --config=configs/tiny_moe.py --workdir=runs/tiny_moe
"""

from samoe_jax.config.presets import tiny


def get_config():
  return tiny('moe')
