"""GPT-3 1.3B dense base of the DeepSpeed-MoE comparisons (docs/methods/pr_moe.md).

Reproduces: 24 layers, d_model 2048, 16 heads, d_ff 8192 (~1.32B parameters with the 50304-row vocabulary).
Recipe: seq 2048, batch 512, 300B tokens, 375M warm-up tokens, LR 2.0e-4 -> 2.0e-5 cosine, AdamW b2 0.95,
wd 0.1, clip 1.0, init std 0.014. The moe and pool sections are ignored (layer_plan 'none').

Run:  python -m samoe_jax.describe --config=configs/gpt3_1p3b_dense.py
      python -m samoe_jax.train --config=configs/gpt3_1p3b_dense.py --workdir=runs/gpt3_1p3b_dense
      (with --config.data.tfds_data_dir=<prepared TFDS directory>)
"""

from samoe_jax.config.presets import gpt3


def get_config():
  return gpt3('1p3b', 'dense')
