"""Tiny sparse upcycling (Komatsuzaki et al. 2022): the tiny standard MoE initialised from a trained dense model.

Same model as configs/tiny_moe.py (MoE blocks 1 and 3, 8 experts top-2 with renormalised gates). With
--config.init.from_workdir set to a trained configs/tiny_dense.py run, every expert of MoE block b starts as block
b's dense MLP (init.noise_std = 0: exact copies, so the upcycled model computes the dense model's function at
step 0 when no token is dropped); routers are freshly initialised; attention, norms, embeddings and the dense
FFNs of blocks 0 and 2 are copied (init.mode='upcycle', samoe_jax/training/init_from.py,
docs/methods/upcycling.md).

Run:  python -m samoe_jax.train --config=configs/tiny_dense.py --workdir=runs/tiny_dense
      python -m samoe_jax.describe --config=configs/tiny_upcycled_moe.py
      python -m samoe_jax.train --config=configs/tiny_upcycled_moe.py --workdir=runs/tiny_upcycled_moe \
          --config.init.from_workdir=runs/tiny_dense
"""

from samoe_jax.config.presets import tiny


def get_config():
  c = tiny('moe')
  c.init.mode = 'upcycle'
  c.init.noise_std = 0.0
  return c
