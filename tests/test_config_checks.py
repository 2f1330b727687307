"""The one way to check a config (config/checks.py): every method module registers its rules, and the pass
(training/config_checks.py) reports the problems of several methods in one ValueError."""

from __future__ import annotations

import pytest

from samoe_jax.config import checks, defaults
from samoe_jax.training import config_checks


def test_the_pass_imports_a_check_of_every_method_module():
  registered = {check.__module__ for _, check, _ in checks.registered()}
  for module in config_checks.CHECK_MODULES:
    assert module.__name__ in registered, module.__name__


def test_problems_of_three_methods_in_one_error():
  c = defaults.get_base_config()
  c.moe.momentum = 'nesterov'               # layers/momentum.py
  c.moe.k_schedule = 'sawtooth'             # layers/k_schedule.py
  c.train.moment_dtype = 'float16'          # training/optimizer.py
  with pytest.raises(ValueError) as info:
    config_checks.validate_config(c)
  message = str(info.value)
  assert message.startswith('invalid config (3 problems):'), message
  for key in ("moe.momentum='nesterov'", "moe.k_schedule='sawtooth'", "train.moment_dtype='float16'"):
    assert key in message, message


def test_register_refuses_an_unknown_section():
  with pytest.raises(ValueError, match="unknown section 'optimiser'"):
    checks.register('optimiser')
