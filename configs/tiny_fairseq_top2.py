"""Tiny fairseq / Artetxe et al. 2021 MoE (arXiv 2112.10684; docs/methods/routing.md): top-2, gates renormalised
over the two chosen experts, second_policy 'sampling' (the 2nd expert is the argmax of h + Gumbel noise over the
other experts, in training), capacity C = 2 ceil(T/E).

fairseq's 'choice' slot priority (first choices before second ones) is NOT causal in a decoder, so this config
keeps the causal 'position' priority (set moe.slot_priority='choice' for the exact fairseq order in training; it
is refused by evaluation routing and decoding). docs/methods/routing.md.

Run:  python -m samoe_jax.describe --config=configs/tiny_fairseq_top2.py
      python -m samoe_jax.train --config=configs/tiny_fairseq_top2.py --workdir=runs/tiny_fairseq_top2
"""

from samoe_jax.config.presets import tiny


def get_config():
  c = tiny('moe')
  c.moe.top_k = 2
  c.moe.second_policy = 'sampling'
  c.moe.capacity_formula = 'fairseq'
  return c
