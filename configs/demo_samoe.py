"""The `make demo` run: tiny_samoe.py's model and data, cut to a few minutes on 2 CPU cores.

The model of configs/tiny_samoe.py (4 layers, d_model 128, 8 experts top-2 on blocks 1 and 3, a learned pool of
P = 2 global MoE layers, Shakespeare with the shipped 8k SentencePiece vocabulary, seq 128 x batch 16), trained for
400 steps (0.82M tokens) instead of 2000. At the default optimizer a run this short cannot move the mixing logits
(their reach, `describe` prints it, would be about 1), so the demo sets pool.target_reach = 10 and the mixing heat
map shows the layers choosing between the pool's entries (docs/model.md, "Mixing that learns"). The longer run is
configs/tiny_samoe.py (README, "Expected results").

Run:  make demo      (train, then evaluate on the shipped fixtures, then generate a sample)
      python -m samoe_jax.train --config=configs/demo_samoe.py --workdir=workdir/demo_samoe
"""

from samoe_jax.config.presets import tiny


def get_config():
  c = tiny('samoe')
  c.train.steps, c.train.warmup_steps = 400, 40
  c.train.eval_every = c.train.checkpoint_every = 200
  c.pool.target_reach = 10.0
  return c
