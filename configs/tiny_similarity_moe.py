"""Tiny Similarity-Aware (S)MoE on the embedded Shakespeare corpus (docs/methods/graph_routing.md; Nguyen, Tran, Nguyen, Baraniuk,
"Improving Routing in Sparse Mixture of Experts with Graph of Tokens", arXiv 2505.00792, 2025).

The standard MoE of tiny_moe.py (8 experts top-2 on blocks 1 and 3, one pool entry per MoE layer), but each token
routes on p~_i = sum_{j <= i} S_ij p_j with S_ij = softmax_j(x_i^T x_j / sqrt(D)) over the earlier tokens of its
sequence (parameter-free metric M = I, lambda = 1): a token's expert selection follows those of similar tokens.
Variants: --config.moe.graph.metric=learned --config.moe.graph.dim=32 (M = W_s W_s^T),
--config.moe.graph.lam=0.5 --config.moe.graph.lam_learned=True. docs/methods/graph_routing.md.

Run:  python -m samoe_jax.describe --config=configs/tiny_similarity_moe.py
      python -m samoe_jax.train --config=configs/tiny_similarity_moe.py --workdir=runs/tiny_similarity_moe
      python -m samoe_jax.analysis.routing_fluctuation --workdir=runs/tiny_similarity_moe --steps=all
"""

from samoe_jax.config.presets import tiny


def get_config():
  c = tiny('moe')
  c.moe.graph.kind = 'similarity'
  c.moe.graph.metric = 'identity'
  c.moe.graph.lam = 1.0
  return c
