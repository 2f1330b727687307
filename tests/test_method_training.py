"""Loss-falls training runs for the method configs whose own test files do not train them (issue 5: every method
trains on the tiny corpus). Each runs configs/<name>.py at test size through the real trainer (samoe_jax.training
.loop.train) and checks that the cross-entropy falls; method behaviour itself is tested in the method's file:
routing policies (test_routing_policies.py), PR-MoE and placement (test_pr_moe.py), sharing (test_sharing.py)."""

from __future__ import annotations

import pytest

from method_checks import assert_loss_falls, load_config_file, shrink_for_training

CONFIGS = [
    ('tiny_fairseq_top2', None),         # fairseq capacity 2 * ceil(T/E), top-2
    ('tiny_expert_choice', None),        # expert-choice routing (encoder-style, trains but not causal)
    ('tiny_widenet', None),              # one shared MoE + router in every block, attention per block
    ('tiny_manual_adjacent', None),      # fixed manual sharing: adjacent MoE layers share a pool entry
    ('tiny_samoe_expert_level', None),   # SaMoE ablation: alpha [E, P] per layer
    ('tiny_samoe_output_space', None),   # SaMoE ablation: outputs mixed instead of weights
    ('tiny_pyramid', None),              # Pyramid-MoE: 8 then 16 experts
    ('tiny_residual_moe', None),         # Residual-MoE: dense MLP + top-1 expert, summed
    ('tiny_second_half', None),          # MoE only in the second half of the blocks
]


@pytest.mark.parametrize('name,argument', CONFIGS, ids=[c[0] for c in CONFIGS])
def test_method_config_trains(name, argument, tmp_path):
  config = shrink_for_training(load_config_file(name, argument), steps=30)
  assert_loss_falls(config, tmp_path)
