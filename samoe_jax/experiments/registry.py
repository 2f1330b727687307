"""Every trainable suite by name: suites.py's smoke and gpu, calibration_design.py's two designs,
cpu_comparison.py's cpu, h100.py's h100 and mixing_probe.py's mixing ('paper' has commands only:
samoe_jax.experiments.paper)."""

from __future__ import annotations

from samoe_jax.experiments import calibration_design, cpu_comparison, h100, mixing_probe
from samoe_jax.experiments.suites import GPU, SMOKE, SUITES, Suite

REGISTRY = {s.name: s for s in (SMOKE, GPU, calibration_design.CALIBRATION,
                                calibration_design.CALIBRATION_EVERY_OTHER,
                                cpu_comparison.CPU, h100.H100, mixing_probe.MIXING_PROBE)}


def get_suite(name: str) -> Suite:
  """A trainable suite by name ('paper' has commands only: samoe_jax.experiments.paper)."""
  if name not in REGISTRY:
    raise ValueError(f'--suite={name!r} is not a trainable suite: use one of {", ".join(map(repr, SUITES))}')
  return REGISTRY[name]
