"""GPT-3 1.3B + PR-MoE-64/128 (DeepSpeed-MoE, Rajbhandari et al. 2022, docs/methods/pr_moe.md): "31B" parameters.

PR-MoE on the 1.3B+MoE-128 recipe (gpt3_1p3b_moe128.py: 24 layers, d_model 2048, 16 heads, 12 MoE layers on
every other FFN, top-1): the first 10 MoE layers have 64 experts, the last 2 have 128
(moe.experts_per_layer='64x10,128x2'; the 10 x 64 + 2 x 128 split is our inference (docs/methods/pr_moe.md), the paper gives only
"64/128" and the 31B total), each with a Residual-MoE dense MLP combined as in DeepSpeed's `use_residual`
(moe.residual='learned_softmax'; the paper's plain sum: --config.moe.residual=sum).
Total 31.39B stored parameters with the 50304-row vocabulary (DeepSpeed: "31B"). mesh.expert = 64 divides both
groups' expert counts.

Run:  python -m samoe_jax.describe --config=configs/gpt3_1p3b_prmoe.py
      python -m samoe_jax.train --config=configs/gpt3_1p3b_prmoe.py --workdir=runs/gpt3_1p3b_prmoe
      (with --config.data.tfds_data_dir=<prepared TFDS directory>)
"""

from samoe_jax.config.presets import gpt3
from samoe_jax.config.pyramid import set_pr_moe


def get_config():
  c = gpt3('1p3b', 'moe128')
  set_pr_moe(c, '64x10,128x2', residual='learned_softmax')
  c.mesh.expert = 64
  return c
