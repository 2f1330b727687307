"""Tiny Expert-Choice MoE (Zhou et al. 2022, arXiv 2202.09368): each expert takes its top-C tokens of the routing
group by router probability, C = ceil(k T CF / E) with k = 2, CF = 1 (Switch formula); no balancing loss.

ENCODER-STYLE, NOT CAUSAL: an expert's choice of token t depends on later tokens. Training and validation run;
evaluation routing (scoring, the harness) and decoding refuse it. docs/methods/routing.md.

Run:  python -m samoe_jax.describe --config=configs/tiny_expert_choice.py
      python -m samoe_jax.train --config=configs/tiny_expert_choice.py --workdir=runs/tiny_expert_choice
"""

from samoe_jax.config.presets import tiny


def get_config():
  c = tiny('moe')
  c.moe.routing = 'expert_choice'
  c.moe.top_k = 2
  c.moe.capacity_formula = 'switch'
  c.moe.capacity_factor_train = c.moe.capacity_factor_eval = 1.0
  return c
