"""Tiny AdamSMoE on the embedded Shakespeare corpus: tiny_moe.py with Adam-style moments across MoE layers.

Teo & Nguyen, "MomentumSMoE: Integrating Momentum into Sparse Mixture of Experts", NeurIPS 2024, arXiv 2410.14574
(docs/methods/momentum.md). The standard MoE of tiny_moe.py (4 layers, d_model 128, 8 experts
top-2 on blocks 1 and 3), where the MoE blocks' FFN outputs f_l drive an Adam update of the residual stream:
m_l = b1 m + (1 - b1) f_l, v_l = b2 v + (1 - b2) f_l^2, x_{l+1} = x_l + gamma m_l / sqrt(v_l + eps), with b1 0.9,
b2 0.999, eps 1e-8, gamma 1.0. moe.momentum_smoe.adam_layers='first' follows the official code: Adam in the first
MoE layer only, heavy-ball momentum (mu 0.7) in the later ones; --config.moe.momentum_smoe.adam_layers=all uses Adam
in every MoE layer (the paper's formula). No extra parameters.

Run:  python -m samoe_jax.describe --config=configs/tiny_adam_smoe.py
      python -m samoe_jax.train --config=configs/tiny_adam_smoe.py --workdir=runs/tiny_adam_smoe
      python -m samoe_jax.train --config=configs/tiny_adam_smoe.py --config.moe.momentum_smoe.adam_layers=all \
        --workdir=runs/tiny_adam_smoe_all
"""

from samoe_jax.config.presets import tiny


def get_config():
  c = tiny('moe')
  c.moe.momentum_smoe.kind = 'adam'
  c.moe.momentum_smoe.adam_layers = 'first'
  c.moe.momentum_smoe.mu = 0.7
  c.moe.momentum_smoe.gamma = 1.0
  c.moe.momentum_smoe.beta1, c.moe.momentum_smoe.beta2, c.moe.momentum_smoe.eps = 0.9, 0.999, 1e-8
  return c
