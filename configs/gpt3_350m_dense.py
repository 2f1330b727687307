"""GPT-3 350M dense base of the DeepSpeed-MoE comparisons (docs/methods/pr_moe.md).

Reproduces: 24 layers, d_model 1024, 16 heads, d_ff 4096 (~0.36B parameters with the 50304-row vocabulary).
Recipe: seq 2048, batch 256, 300B tokens, 375M warm-up tokens, LR 3.0e-4 -> 3.0e-5 cosine, AdamW b2 0.95,
wd 0.1, clip 1.0, init std 0.014. The moe and pool sections are ignored (layer_plan 'none').

Run:  python -m samoe_jax.describe --config=configs/gpt3_350m_dense.py
      python -m samoe_jax.train --config=configs/gpt3_350m_dense.py --workdir=runs/gpt3_350m_dense
      (with --config.data.tfds_data_dir=<prepared TFDS directory>)
"""

from samoe_jax.config.presets import gpt3


def get_config():
  return gpt3('350m', 'dense')
