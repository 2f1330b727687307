"""Tiny Attention-Aware (S)MoE on the embedded Shakespeare corpus (docs/methods/graph_routing.md; Nguyen, Tran, Nguyen, Baraniuk,
"Improving Routing in Sparse Mixture of Experts with Graph of Tokens", arXiv 2505.00792, 2025).

The standard MoE of tiny_moe.py (8 experts top-2 on blocks 1 and 3, one pool entry per MoE layer), but each token
routes on p~_i = sum_{j <= i} A_ij p_j, A the same block's causal self-attention probabilities averaged over the
heads (lambda = 1): the attention graph guides the expert selection. Variant: --config.moe.graph.lam=0.5
--config.moe.graph.lam_learned=True (a learned per-layer lambda). docs/methods/graph_routing.md.

Run:  python -m samoe_jax.describe --config=configs/tiny_attention_moe.py
      python -m samoe_jax.train --config=configs/tiny_attention_moe.py --workdir=runs/tiny_attention_moe
      python -m samoe_jax.analysis.routing_fluctuation --workdir=runs/tiny_attention_moe --steps=all
"""

from samoe_jax.config.presets import tiny


def get_config():
  c = tiny('moe')
  c.moe.graph.kind = 'attention'
  c.moe.graph.lam = 1.0
  return c
