"""Tiny dense GPT on the embedded Shakespeare corpus: the dense base of the tiny MoE/SaMoE comparisons.

4 layers, d_model 128, 4 heads, d_ff 512, seq 128, batch 16, 8k SentencePiece vocabulary: tiny_samoe.py without
MoE layers (layer_plan 'none'; the moe and pool sections are ignored). With top-2 routing, the tiny MoE models
spend about twice this model's FFN FLOPs on their MoE blocks.

Run:  python -m samoe_jax.describe --config=configs/tiny_dense.py
      python -m samoe_jax.train --config=configs/tiny_dense.py --workdir=runs/tiny_dense
"""

from samoe_jax.config.presets import tiny


def get_config():
  return tiny('dense')
