"""Tiny fully tied experts (P = 1) on the embedded Shakespeare corpus: the aggressive-sharing baseline.

Same model and data as tiny_samoe.py, but both MoE layers use one shared set of 8 experts (pool.size = 1, fixed
mixing; each layer keeps its own router). WideNet-style MoE tying (docs/methods/sharing.md special cases):
expected to be worse than tiny_samoe.py and tiny_moe.py. WideNet proper (Xue et al., AAAI 2022, docs/methods/README.md)
also shares the router and attention: configs/tiny_widenet.py, configs/tiny_widenet_full.py
(docs/methods/sharing.md).

Run:  python -m samoe_jax.describe --config=configs/tiny_tied.py
      python -m samoe_jax.train --config=configs/tiny_tied.py --workdir=runs/tiny_tied
"""

from samoe_jax.config.presets import tiny


def get_config():
  return tiny('tied')
