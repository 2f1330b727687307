"""The 'cpu' suite (issue 25, part 3): the SaMoE comparison in the best design the calibration found.

  python -m samoe_jax.experiments.reproduce --suite=cpu --out=DIR --corpus_dir=CORPUS

No 2-core design met all three calibration conditions (docs/results/calibration_every_other): in the
every-other-block design width pays (a), but more experts do not (b) and the standard MoE is level with the dense
model of equal active parameters, not ahead (c). This suite runs the comparison in that design anyway, so its
report is a comparison outside a calibrated regime and says so: 4 blocks of d_model 64 (FFN 256), SentencePiece
1k, the top-1 MoE on blocks 1 and 3 (GShard, Lepikhin et al. 2020; Switch, Fedus et al. 2022), 400 steps of
32 x 128 tokens (1.64M per run), routing groups of 1024 tokens (uniform routing drops < 1 %), 3 seeds.

With two MoE layers, SaMoE's pool spans P = 1 (tied experts, half the standard MoE's expert storage; manual
adjacent-pair sharing is the same model here) to P = 2 (the standard MoE's storage, learned mixing instead of the
one-hot assignment). The mixing ablation trains P = 2 at the paper's plain optimizer (reach ~1, where the probe
found the mixture stays uniform) beside the suites' reach of 10 (docs/model.md, "Mixing that learns").
"""

from __future__ import annotations

import dataclasses

from samoe_jax.experiments import calibration_design, suites
from samoe_jax.experiments.suites import ConfigSpec, Suite

DESIGN = calibration_design.DESIGN_EVERY_OTHER
DENSE_WIDTHS = (48, 96, 128)        # beside the base d_model 64: the compute-to-loss frontier (Artetxe et al. 2021)
SWEEP = (4, 8, 16)                  # the standard MoE's E sweep; E = 16 is the baseline
GRAD_STATS = 10                     # gradient-statistics records per run (the gradient-flow analysis)


def samoe(pool_size: int, num_moe: int, reach: float = suites.MIXING_REACH, name: str = '') -> ConfigSpec:
  """SaMoE with a learned pool of `pool_size` entries over `num_moe` MoE layers, mixing-logit reach `reach`
  (0: the plain optimizer, pool.lr_multiplier 1)."""
  label = f'SaMoE P={pool_size}'
  if pool_size == 1:
    label += ' (tied experts' + ('; = manual pair sharing)' if num_moe == 2 else ')')
  if not reach:
    label += ', mixing at the plain optimizer (ablation)'
  return ConfigSpec(name or f'samoe_p{pool_size}', label, 'samoe',
                    {'pool.size': pool_size, 'pool.mixing': 'learned', 'pool.target_reach': reach})


def configs(design: calibration_design.Design) -> tuple[ConfigSpec, ...]:
  """dense (base width) and DENSE_WIDTHS, the MoE sweep (E = max: role 'moe'), SaMoE P = 1 .. num_moe at the
  suites' reach, and P = num_moe at the plain optimizer."""
  d, num_moe, top = design.d_model, design.num_moe, max(SWEEP)
  out = [suites.dense(d, calibration_design.heads(d), name='dense')]
  out += [suites.dense(w, calibration_design.heads(w)) for w in DENSE_WIDTHS]
  out += [suites.standard_moe(e, num_moe, role='moe' if e == top else 'sweep') for e in SWEEP]
  out += [samoe(p, num_moe) for p in range(1, num_moe + 1)]
  out.append(samoe(num_moe, num_moe, reach=0.0, name=f'samoe_p{num_moe}_reach1'))
  return tuple(out)


def _base(corpus_dir: str, cache_dir: str):
  c = calibration_design.make_base(dataclasses.replace(DESIGN, experts=SWEEP))(corpus_dir, cache_dir)
  c.moe.num_experts = max(SWEEP)
  return c


CPU = Suite(
    'cpu', f'The SaMoE comparison outside a calibrated regime: d_model {DESIGN.d_model}, {DESIGN.num_layers} '
    f'blocks, top-1 MoE of 16 experts on every other block, vocab {DESIGN.vocab}, '
    f'{DESIGN.tokens / 1e6:.2f}M tokens per run (docs/results/cpu).', _base, configs(DESIGN), seeds=3,
    steps=DESIGN.steps, evals=DESIGN.evals, grad_stats=GRAD_STATS, needs_corpus=True,
    budget='about 75 minutes on 2 idle CPU cores')
