"""Dropped assignments: the uniform-routing drop floor (samoe_jax/analysis/drop_floor.py) and the suites' routing
groups chosen by it (experiments/suites.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from samoe_jax.analysis import drop_floor
from samoe_jax.experiments import suites
from samoe_jax.layers.capacity import expert_capacity


# ---------------------------------------------------------------------------------------------- the floor
@pytest.mark.parametrize('num_experts, slots, expected', [(8, 20, 0.019), (16, 10, 0.049), (32, 5, 0.099)])
def test_floor_of_one_sequence_matches_the_review(num_experts, slots, expected):
  """One sequence of 128 tokens, top-1, capacity factor 1.25, 'deepspeed' capacity: the review's 1.9 / 4.9 / 9.9 %."""
  assert expert_capacity(128, num_experts, 1, 1.25, 4, 'deepspeed') == slots
  assert drop_floor.uniform_drop_fraction(128, num_experts, 1, slots) == pytest.approx(expected, abs=0.0005)


def test_floor_equals_exhaustive_enumeration():
  """T = 5 tokens, E = 3 experts, top-2, C = 3: the mean over all 3^5 equally likely choice sets, exactly."""
  t, e, k, c = 5, 3, 2, 3
  pairs = list(itertools.combinations(range(e), k))
  dropped = []
  for choice in itertools.product(pairs, repeat=t):
    load = np.bincount(np.array(choice).reshape(-1), minlength=e)
    dropped.append(np.maximum(load - c, 0).sum() / (t * k))
  assert drop_floor.uniform_drop_fraction(t, e, k, c) == pytest.approx(np.mean(dropped), rel=1e-12)


@pytest.mark.parametrize('tokens, num_experts, top_k, capacity', [(128, 16, 1, 10), (128, 32, 1, 5), (64, 8, 2, 20)])
def test_floor_matches_monte_carlo(tokens, num_experts, top_k, capacity):
  """20000 simulated groups (seed 0): the estimate is a mean of iid group fractions, so it lies within 4 standard
  errors of the exact floor (a 6e-5 chance of failing for a random seed; the seed is fixed)."""
  rng = np.random.default_rng(0)
  groups = 20000
  if top_k == 1:
    expert = rng.integers(num_experts, size=(groups, tokens, 1))
  else:   # k distinct experts per token, every k-set equally likely
    expert = np.argsort(rng.random((groups, tokens, num_experts)), axis=-1)[..., :top_k]
  flat = (np.arange(groups)[:, None, None] * num_experts + expert).reshape(-1)
  load = np.bincount(flat, minlength=groups * num_experts).reshape(groups, num_experts)
  fraction = np.maximum(load - capacity, 0).sum(-1) / (tokens * top_k)
  stderr = fraction.std(ddof=1) / np.sqrt(groups)
  exact = drop_floor.uniform_drop_fraction(tokens, num_experts, top_k, capacity)
  assert abs(fraction.mean() - exact) < 4 * stderr, (fraction.mean(), exact, stderr)


def test_floor_edge_cases():
  assert drop_floor.uniform_drop_fraction(16, 4, 1, 16) == 0.0      # every load fits
  assert drop_floor.uniform_drop_fraction(8, 1, 1, 3) == pytest.approx(5 / 8)   # one expert takes all 8
  with pytest.raises(ValueError, match='top_k'):
    drop_floor.uniform_drop_fraction(8, 2, 3, 4)


def test_config_floors_dense_dropless_and_pyramid():
  base = suites.CPU.config(suites.CPU.spec('prmoe'), 0)
  floors = drop_floor.config_drop_floors(base)
  assert sorted(floors) == [8, 16]
  assert floors[16] == pytest.approx(drop_floor.uniform_drop_fraction(1024, 16, 1, 80))
  ragged = base.copy_and_resolve_references()
  ragged.moe.dispatch = 'ragged'
  assert drop_floor.config_drop_floors(ragged) == {8: 0.0, 16: 0.0}
  assert drop_floor.config_drop_floors(suites.CPU.config(suites.CPU.spec('dense'), 0)) == {}


# -------------------------------------------------------------------------------------- the suites' groups
@pytest.mark.parametrize('suite', [suites.CPU, suites.GPU], ids=lambda s: s.name)
def test_every_suite_config_has_a_floor_below_one_percent(suite):
  """Every MoE config, at its own E, top-k, capacity factors, formula and group size, training and validation."""
  from samoe_jax.config.validate import config_errors  # pylint: disable=g-import-not-at-top
  configs = [suite.config(spec, 0) for spec in suite.configs]
  moe = [c for c in configs if drop_floor.config_drop_floors(c)]
  assert len(moe) == len(configs) - 4   # all but the 4 dense widths
  for spec, config in zip(suite.configs, configs):
    assert config_errors(config) == [], spec.name
    assert drop_floor.max_floor(config) < 0.01, spec.name
  assert max(max(drop_floor.config_drop_floors(c).values()) for c in moe) > 0.005   # E = 32 is near the bound
  assert {c.moe.group_size for c in configs} == {suites.GROUP_SIZE}
  assert drop_floor.smallest_group_size(moe) == suites.GROUP_SIZE   # and no smaller group would do
  smaller = drop_floor.whole_sequence_group_sizes(configs[0].data.seq_len, configs[0].data.batch_size)
  smaller = [g for g in smaller if g < suites.GROUP_SIZE]
  assert smaller and all(max(drop_floor.max_floor(c, g) for c in moe) >= 0.01 for g in smaller)
