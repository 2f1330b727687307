"""Tiny SaMoE on the embedded Shakespeare corpus: the default CPU run (about 10 minutes or less on 2 cores).

A 4-layer GPT (d_model 128, 4 heads, d_ff 512) with MoE FFNs on blocks 1 and 3 (8 experts, top-2); both MoE
layers are learned softmax(alpha / tau) weight-space mixtures of a pool of P = 2 global MoE layers (docs/methods/sharing.md).
Shakespeare with the shipped 8k SentencePiece vocabulary, seq 128, batch 16. Same sizes as
tiny_moe.py (standard MoE), tiny_tied.py (P = 1) and tiny_dense.py, so their losses compare at matched compute.

Run:  python -m samoe_jax.describe --config=configs/tiny_samoe.py
      python -m samoe_jax.train --config=configs/tiny_samoe.py --workdir=runs/tiny_samoe
"""

from samoe_jax.config.presets import tiny


def get_config():
  return tiny('samoe')
