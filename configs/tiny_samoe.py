"""Tiny SaMoE on the embedded Shakespeare corpus: the default CPU run (about 10 minutes or less on 2 cores).

A 4-layer GPT (d_model 128, 4 heads, d_ff 512) with MoE FFNs on blocks 1 and 3 (8 experts, top-2); both MoE
layers are learned softmax(alpha / tau) weight-space mixtures of a pool of P = 2 global MoE layers (methods.md §2,
§12 row 7). Shakespeare with the shipped 8k SentencePiece vocabulary, seq 128, batch 16. Same sizes as
tiny_moe.py (standard MoE), tiny_tied.py (P = 1) and tiny_dense.py, so their losses compare at matched compute.

Run:  python -m samoe_jax.describe --config=configs/tiny_samoe.py
      python -m samoe_jax.train --config=configs/tiny_samoe.py --workdir=runs/tiny_samoe
"""

from samoe_jax.config.defaults import get_base_config


def get_config():
  c = get_base_config()
  c.model.d_model = 128
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.d_ff = 512
  c.model.layer_plan = 'every_other'
  c.moe.num_experts = 8
  c.moe.top_k = 2
  c.pool.size = 2
  c.pool.mixing = 'learned'
  c.pool.granularity = 'layer'
  c.pool.init = 'uniform'
  c.data.task = 'shakespeare'
  c.data.vocabulary = 'sentencepiece'
  c.train.steps = 2000               # 4.1M tokens, about 3 epochs of the training split
  c.train.warmup_steps = 100
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  return c
