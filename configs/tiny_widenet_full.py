"""Tiny full WideNet on the embedded Shakespeare corpus: every trainable block weight shared except LayerNorms.

Xue et al., "Go Wider Instead of Deeper", AAAI 2022, arXiv 2107.11817 (docs/methods/sharing.md).
tiny_widenet.py (MoE in every block, one expert set and one router for all of them) plus one set of attention
weights shared by all 4 blocks (model.share_attention). Each block keeps its own attention_norm and ffn_norm, which
is what lets the shared layers behave differently per depth (the paper's "individual LayerNorms"). Stored: one
attention, one MoE (8 experts + router), 2 x 4 LayerNorms, the embeddings. Compute per token is unchanged (every
block still runs attention and its MoE); KV-cache decoding keeps a cache per block.

Run:  python -m samoe_jax.describe --config=configs/tiny_widenet_full.py
      python -m samoe_jax.train --config=configs/tiny_widenet_full.py --workdir=runs/tiny_widenet_full
"""

from samoe_jax.config.presets import tiny


def get_config():
  c = tiny('tied')                 # pool.size 1, fixed mixing
  c.model.layer_plan = 'all'
  c.model.share_attention = True
  c.pool.share_router = True
  return c
