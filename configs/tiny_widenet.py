"""Tiny WideNet-style decoder (MoE sharing only) on the embedded Shakespeare corpus.

Xue et al., "Go Wider Instead of Deeper", AAAI 2022, arXiv 2107.11817 (docs/methods/sharing.md).
The tiny 4-layer GPT (d_model 128, 4 heads) with an MoE FFN in EVERY block (layer_plan 'all'; 8 experts top-2),
all four MoE layers sharing ONE MoE: one set of experts (pool.size = 1, fixed mixing) and one router W_r [D, E]
(pool.share_router). Each block keeps its own attention_norm / ffn_norm LayerNorms, so the shared router sees
LN_l(x) and routes differently at each depth. Attention stays per block, as docs/methods/sharing.md recommends for a
decoder LM; tiny_widenet_full.py shares it too (the paper's full WideNet).

Run:  python -m samoe_jax.describe --config=configs/tiny_widenet.py
      python -m samoe_jax.train --config=configs/tiny_widenet.py --workdir=runs/tiny_widenet
"""

from samoe_jax.config.presets import tiny


def get_config():
  c = tiny('tied')                 # pool.size 1, fixed mixing: one expert set for every MoE layer
  c.model.layer_plan = 'all'
  c.pool.share_router = True
  return c
