"""GPT-3 350M + PR-MoE-32/64 (DeepSpeed-MoE, Rajbhandari et al. 2022, docs/methods/pr_moe.md): "4B" parameters.

PR-MoE = Pyramid-MoE + Residual-MoE on the 350M+MoE-128 recipe (gpt3_350m_moe128.py: 24 layers, d_model 1024,
16 heads, MoE on every other FFN = 12 MoE layers, top-1, capacity factor 1.0, same training recipe):
  Pyramid   the first 10 MoE layers have 32 experts, the last 2 have 64 (moe.experts_per_layer='32x10,64x2';
            two pool groups: `expert_pool` [10, 32, ...] and `expert_pool_e64` [2, 64, ...], fixed mixing).
  Residual  every MoE layer adds one expert-shaped dense MLP; DeepSpeed's `use_residual` combination
            y = c0 MoE(x) + c1 MLP(x), c = softmax(W_c x + b_c) (moe.residual='learned_softmax'; the paper's plain
            sum: --config.moe.residual=sum).
Total 4.12B stored parameters with the 50304-row vocabulary (DeepSpeed: "4B"); per-token compute = the dense
350M plus one dense MLP per MoE layer. mesh.expert = 32 divides both groups' expert counts.

Run:  python -m samoe_jax.describe --config=configs/gpt3_350m_prmoe.py
      python -m samoe_jax.train --config=configs/gpt3_350m_prmoe.py --workdir=runs/gpt3_350m_prmoe
      (with --config.data.tfds_data_dir=<prepared TFDS directory>)
"""

from samoe_jax.config.presets import gpt3
from samoe_jax.config.pyramid import set_pr_moe


def get_config():
  c = gpt3('350m', 'moe128')
  set_pr_moe(c, '32x10,64x2', residual='learned_softmax')
  c.mesh.expert = 32
  return c
