"""Tiny MomentumSMoE on the embedded Shakespeare corpus: tiny_moe.py with heavy-ball momentum across MoE layers.

Teo & Nguyen, "MomentumSMoE: Integrating Momentum into Sparse Mixture of Experts", NeurIPS 2024, arXiv 2410.14574
(docs/methods/momentum.md). The standard MoE of tiny_moe.py (4 layers, d_model 128, 8 experts
top-2 on blocks 1 and 3, each MoE layer its own experts), where an MoE block adds the momentum p_l instead of its
FFN output f_l:  p_l = mu p_{l-1} + gamma f_l (p_0 = 0),  x_{l+1} = x_l + p_l;  mu 0.7, gamma 1.0 (the official
code's layer defaults). No extra parameters. Dense blocks 0 and 2 are unchanged (the MomentumGLaM layout); the
paper's SMoE layout has an MoE FFN in every block: add --config.model.layer_plan=all --config.pool.size=4.

Run:  python -m samoe_jax.describe --config=configs/tiny_momentum_smoe.py
      python -m samoe_jax.train --config=configs/tiny_momentum_smoe.py --workdir=runs/tiny_momentum_smoe
      mu sweep (docs/methods/momentum.md): for mu in 0.3 0.5 0.7 0.9; do python -m samoe_jax.train \
        --config=configs/tiny_momentum_smoe.py --config.moe.momentum_smoe.mu=$mu \
        --workdir=runs/tiny_momentum_mu$mu; done
"""

from samoe_jax.config.presets import tiny


def get_config():
  c = tiny('moe')
  c.moe.momentum_smoe.kind = 'heavy_ball'
  c.moe.momentum_smoe.mu = 0.7
  c.moe.momentum_smoe.gamma = 1.0
  return c
