"""The one way to check a config (config/checks.py): every method module registers its rules, and the pass
(training/config_checks.py) reports the problems of several methods in one ValueError."""

from __future__ import annotations

import pathlib
import re

import pytest

from samoe_jax.config import checks, defaults
from samoe_jax.training import config_checks


def test_the_pass_imports_a_check_of_every_method_module():
  registered = {check.__module__ for _, check, _ in checks.registered()}
  for module in config_checks.CHECK_MODULES:
    assert module.__name__ in registered, module.__name__


def test_every_module_that_registers_a_check_is_one_the_pass_imports():
  """A module with a registered check that the pass does not import would have its rules silently skipped."""
  root = pathlib.Path(__file__).resolve().parents[1]
  registering = sorted('.'.join(p.relative_to(root).with_suffix('').parts)
                       for p in (root / 'samoe_jax').rglob('*.py')
                       if p.name != 'checks.py' and re.search(r'^@(checks\.)?register\(', p.read_text(), re.M))
  imported = {m.__name__ for m in config_checks.CHECK_MODULES}
  assert registering and not set(registering) - imported, sorted(set(registering) - imported)


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
