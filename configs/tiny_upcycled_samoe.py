"""Tiny sparse upcycling into a SaMoE pool: the tiny SaMoE (P = 2, learned layer-level mixing) from a dense model.

Same model as configs/tiny_samoe.py. With --config.init.from_workdir set to a trained configs/tiny_dense.py run,
pool entry j's 8 experts all start as the dense MLP of the MoE block assigned to j (pool.assignment 'modulo':
block 1 -> entry 0, block 3 -> entry 1; several blocks on one entry are averaged), routers fresh, and the mixing
logits one-hot (pool.init = 'one_hot', scale 3: each layer starts with weight e^3 / (e^3 + 1) = 0.95 on its own
entry). Everything else is copied from the dense model (samoe_jax/training/init_from.py,
docs/methods/upcycling.md).

Run:  python -m samoe_jax.train --config=configs/tiny_dense.py --workdir=runs/tiny_dense
      python -m samoe_jax.describe --config=configs/tiny_upcycled_samoe.py
      python -m samoe_jax.train --config=configs/tiny_upcycled_samoe.py --workdir=runs/tiny_upcycled_samoe \
          --config.init.from_workdir=runs/tiny_dense
"""

from samoe_jax.config.presets import tiny


def get_config():
  c = tiny('samoe')
  c.pool.size, c.pool.init = 2, 'one_hot'
  c.init.mode = 'upcycle'
  return c
