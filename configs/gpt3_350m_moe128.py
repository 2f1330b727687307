"""GPT-3 350M + MoE-128: the DeepSpeed-MoE standard MoE baseline (docs/methods/pr_moe.md).

Reproduces: 24 layers, d_model 1024, 16 heads, 128 top-1 experts on every other FFN (12 MoE layers), "13B"
parameters (13.15B here with the 50304-row vocabulary), per-token compute of the dense 350M base. Recipe: seq 2048,
batch 256, 300B tokens, 375M warm-up tokens, LR 2.0e-4 -> 2e-6 cosine, AdamW b2 0.95, wd 0.1, clip 1.0,
init std 0.014, MoE loss 0.01, capacity factor 1.0 (train and eval), min capacity 4.
Standard MoE in SaMoE terms: pool.size = 12 (one entry per MoE layer), fixed mixing, 'modulo' (identity) assignment.

Run:  python -m samoe_jax.describe --config=configs/gpt3_350m_moe128.py
      python -m samoe_jax.train --config=configs/gpt3_350m_moe128.py --workdir=runs/gpt3_350m_moe128
      (with --config.data.tfds_data_dir=<prepared TFDS directory>)
"""

from samoe_jax.config.presets import gpt3


def get_config():
  return gpt3('350m', 'moe128')
