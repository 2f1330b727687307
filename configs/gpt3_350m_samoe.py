"""GPT-3 350M + SaMoE-128: the 350M+MoE-128 model with its 12 MoE layers drawn from a pool of P global MoE layers.

SaMoE (docs/methods/sharing.md): every MoE layer mixes the P pool entries in weight space with learned softmax(alpha / tau)
(layer-level, alpha = 0 at init, tau = 1), so per-token compute equals the MoE-128 baseline's. Everything else is
the DeepSpeed 350M+MoE-128 recipe (configs/gpt3_350m_moe128.py). The paper claims "up to 5.2x" fewer parameters;
stored parameters and reduction over the 13.15B baseline (docs/methods/sharing.md arithmetic):
  P = 1: 1.33B (9.9x)   P = 2: 2.41B (5.5x)   P = 3: 3.48B (3.8x)   P = 4: 4.55B (2.9x)   P = 6: 6.70B (2.0x)

Run:  python -m samoe_jax.describe --config=configs/gpt3_350m_samoe.py          (P = 2, the default)
      python -m samoe_jax.describe --config=configs/gpt3_350m_samoe.py:4        (P = 4; or --config.pool.size=4)
      python -m samoe_jax.train --config=configs/gpt3_350m_samoe.py --workdir=runs/gpt3_350m_samoe
      (with --config.data.tfds_data_dir=<prepared TFDS directory>)
"""

from samoe_jax.config.presets import gpt3, parse_pool_size


def get_config(config_string=None):
  return gpt3('350m', 'samoe', pool_size=parse_pool_size(config_string))
