"""Tiny SaMoE with the mixing-entropy regulariser: loss += entropy_coef * mean_l H(softmax(alpha_l / tau)).

docs/methods/sharing.md regularisation ("an entropy penalty or bonus on w_l ... not known whether the paper uses one");
docs/methods/sharing.md. tiny_samoe.py (P = 2, blocks 1 and 3, 8 experts top-2) with pool.entropy_coef = 0.01 by
default: a positive coefficient penalises entropy and pushes each MoE layer towards one pool entry (specialisation,
towards manual sharing), a negative one rewards entropy and pushes towards uniform mixing (sharing). The entropy is
logged as pool/mixing_entropy (at most log P = 0.69 nats). The optional config argument sets the coefficient.

Run:  python -m samoe_jax.describe --config=configs/tiny_samoe_entropy.py
      python -m samoe_jax.train --config=configs/tiny_samoe_entropy.py --workdir=runs/tiny_samoe_entropy
      python -m samoe_jax.train --config=configs/tiny_samoe_entropy.py:-0.01 --workdir=runs/tiny_samoe_entropy_neg
"""

from samoe_jax.config.presets import tiny


def get_config(coef: str | None = None):
  c = tiny('samoe')
  try:
    c.pool.entropy_coef = 0.01 if coef in (None, '') else float(coef)
  except ValueError as err:
    raise ValueError(f'config argument {coef!r} must be a number (pool.entropy_coef, e.g. ":0.01" or ":-0.01")'
                     ) from err
  return c
