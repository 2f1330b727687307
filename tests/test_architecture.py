"""The redesign's interfaces (docs/architecture.md): routing strategies built from config keys, typed config sections
that take their defaults from config/defaults.py only, the one validation pass, and causality refusals that name
the setting. Pure Python or one tiny forward pass: seconds."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from method_checks import tiny_model_config
from samoe_jax.config.defaults import get_base_config
from samoe_jax.config.sections import LowRankSparseSection, ModelSection, MoeSection, PoolSection, complete_config
from samoe_jax.training.config_checks import config_errors, validate_config
from samoe_jax.evaluation.checkpoints import run_config
from samoe_jax.evaluation.scorer import LoglikelihoodScorer
from samoe_jax.layers import routing_strategies
from samoe_jax.layers.moe_call import MoeCall
from samoe_jax.models.decoding import greedy_generate
from samoe_jax.models.model import LanguageModel
from samoe_jax.models.spec import ModelSpec


def test_every_section_field_is_a_default_key_and_every_default_key_a_field():
  base = get_base_config()
  for cls in (ModelSection, MoeSection, PoolSection, LowRankSparseSection):
    assert {f.name for f in dataclasses.fields(cls)} == set(base[cls.name].keys()), cls.name
    assert cls.defaults() == cls(**base[cls.name].to_dict())


def test_a_section_fills_missing_keys_from_the_defaults_and_refuses_unknown_ones():
  config = get_base_config()
  del config.moe['graph']                    # an older run's config.json, written before the key existed
  config.moe.top_k = 1
  moe = MoeSection.of(config)
  assert moe.graph.kind == get_base_config().moe.graph.kind and moe.top_k == 1
  config.moe.not_a_key = 3
  with pytest.raises(ValueError, match=r"config.moe has unknown key\(s\) \['not_a_key'\]"):
    MoeSection.of(config)


def test_validate_names_an_unknown_key_among_the_other_problems():
  config = tiny_model_config(**{'moe.top_k': 0})
  config.pool.sise = 4
  lines = config_errors(config)
  assert any(line.startswith('pool.sise=4: unknown key; config.pool has: ') and 'size' in line for line in lines)
  assert any(line.startswith('moe.top_k=0') for line in lines)   # the other checks still ran


def test_a_run_config_json_without_newer_keys_loads_complete(tmp_path):
  old = tiny_model_config().to_dict()
  del old['low_rank_sparse']
  del old['moe']['graph']['dim']
  with open(os.path.join(tmp_path, 'config.json'), 'w') as f:
    json.dump(old, f)
  config = run_config(str(tmp_path))
  assert config.low_rank_sparse.rank == 0 and config.moe.graph.dim == 0
  assert config.model.d_model == old['model']['d_model']
  assert complete_config(old).to_dict() == config.to_dict()
  validate_config(config)


@pytest.mark.parametrize('routing, cls, causal', [('token_choice', routing_strategies.TokenChoice, True),
                                                  ('expert_choice', routing_strategies.ExpertChoice, False),
                                                  ('hash', routing_strategies.HashRouting, True)])
def test_the_strategy_is_named_by_moe_routing_and_reads_its_keys_by_name(routing, cls, causal):
  config = tiny_model_config(**{'moe.routing': routing, 'moe.top_k': 1, 'moe.noise_eps': 0.05})
  strategy = ModelSpec.from_config(config).routing
  assert type(strategy) is cls and routing_strategies.STRATEGIES[routing] is cls
  assert strategy.num_experts == config.moe.num_experts and strategy.top_k == 1 and strategy.noise_eps == 0.05
  for field in dataclasses.fields(strategy):   # every field is a moe key with the config's value
    assert getattr(strategy, field.name) == config.moe[field.name]
  assert strategy.causal is causal and (strategy.noncausal_setting is None) is causal
  assert strategy.has_router is (routing != 'hash') and strategy.needs_tokens is (routing == 'hash')


def test_which_strategies_draw_from_the_routing_rng():
  tc = lambda **kw: routing_strategies.TokenChoice.with_defaults(4, 2, **kw)  # noqa: E731
  assert not tc().draws_rng(True)
  assert tc(second_policy='sampling').draws_rng(True) and not tc(second_policy='sampling').draws_rng(False)
  assert tc(slot_priority='random').draws_rng(True) and tc(noise='jitter').draws_rng(True)
  assert routing_strategies.ExpertChoice.with_defaults(4, 2, noise='jitter').draws_rng(True)
  assert not routing_strategies.ExpertChoice.with_defaults(4, 2).draws_rng(True)
  assert not routing_strategies.HashRouting.with_defaults(4, 1).draws_rng(True)
  ev = tc(gate='softmax').for_evaluation(4, 'uniform')
  assert (ev.top_k, ev.gate) == (4, 'uniform') and tc().for_evaluation(0, '') == tc()


def test_expert_choice_with_selection_noise_is_refused():
  config = tiny_model_config(**{'moe.routing': 'expert_choice', 'moe.noise': 'gumbel'})
  with pytest.raises(ValueError, match=r"moe.noise='gumbel': 'none' or 'jitter' with moe.routing='expert_choice'"):
    validate_config(config)


def test_scoring_and_decoding_refuse_expert_choice_naming_the_setting():
  model = LanguageModel(tiny_model_config(**{'moe.routing': 'expert_choice'}))
  with pytest.raises(ValueError, match=r"LoglikelihoodScorer: moe.routing='expert_choice' is not causal"):
    LoglikelihoodScorer(model, None)
  with pytest.raises(ValueError, match=r"greedy_generate: moe.routing='expert_choice' is not causal"):
    greedy_generate(model, None, [[1, 2]], max_new_tokens=1)


def test_a_dense_spec_ignores_the_moe_and_pool_sections():
  config = tiny_model_config(**{'model.layer_plan': 'none', 'moe.residual': 'sum', 'pool.share_router': True})
  spec = ModelSpec.from_config(config)
  assert spec.moe_layers == () and spec.moe == MoeSection.defaults() and spec.pool == PoolSection.defaults()


def test_the_moe_call_is_a_pytree_that_carries_the_options_through_jit():
  call = MoeCall(active_k=jnp.int32(2), tokens_BL=jnp.ones((1, 3), jnp.int32))
  leaves = jax.tree.leaves(call)
  assert len(leaves) == 2
  doubled = jax.jit(lambda c: c.replace(active_k=c.active_k * 2))(call)
  assert int(doubled.active_k) == 4 and doubled.inference is None
  np.testing.assert_array_equal(np.asarray(doubled.tokens_BL), np.ones((1, 3)))
