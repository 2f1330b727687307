"""GPT-3 1.3B + SaMoE-128: the 1.3B+MoE-128 model with its 12 MoE layers drawn from a pool of P global MoE layers.

SaMoE (docs/methods/sharing.md): every MoE layer mixes the P pool entries in weight space with learned softmax(alpha / tau)
(layer-level, alpha = 0 at init, tau = 1), so per-token compute equals the MoE-128 baseline's. Everything else is
the DeepSpeed 1.3B+MoE-128 recipe (configs/gpt3_1p3b_moe128.py). The paper claims "up to 5.2x" fewer parameters;
stored parameters and reduction over the 52.47B baseline (docs/methods/sharing.md arithmetic):
  P = 1: 5.21B (10.1x)   P = 2: 9.51B (5.5x)   P = 3: 13.81B (3.8x)   P = 4: 18.10B (2.9x)   P = 6: 26.69B (2.0x)

Run:  python -m samoe_jax.describe --config=configs/gpt3_1p3b_samoe.py          (P = 2, the default)
      python -m samoe_jax.describe --config=configs/gpt3_1p3b_samoe.py:4        (P = 4; or --config.pool.size=4)
      python -m samoe_jax.train --config=configs/gpt3_1p3b_samoe.py --workdir=runs/gpt3_1p3b_samoe
      (with --config.data.tfds_data_dir=<prepared TFDS directory>)
"""

from samoe_jax.config.presets import gpt3, parse_pool_size


def get_config(config_string=None):
  return gpt3('1p3b', 'samoe', pool_size=parse_pool_size(config_string))
