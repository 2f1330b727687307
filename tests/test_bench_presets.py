"""The benchmark's presets (GPU; MoE on all blocks with SaMoE pool sizes), MFU and ratio bookkeeping
(samoe_jax/bench.py, samoe_jax/bench_configs.py, samoe_jax/training/throughput_bench.py): pure Python, no
compilation (the GPU preset is sized for an 80+ GB GPU and runs only there)."""

from __future__ import annotations

import pytest

from samoe_jax.models import accounting
from samoe_jax import bench_configs as bench
from samoe_jax.config.presets import bench_all_blocks, bench_gpu
from samoe_jax.training.config_checks import validate_config
from samoe_jax.training.throughput_bench import format_row


@pytest.mark.parametrize('kind, peak', [('NVIDIA H100 80GB HBM3', 989e12), ('NVIDIA H200', 989e12),
                                        ('NVIDIA A100-SXM4-80GB', 312e12), ('TPU v4', 275e12),
                                        ('TPU v5 lite', 197e12), ('TPU v5p', 459e12), ('cpu', None)])
def test_peak_flops_by_device_kind(kind, peak):
  assert bench.peak_flops(kind) == peak


def test_the_gpu_preset_is_a_350m_dense_model_and_its_moe_16_and_samoe_variants():
  named = bench.preset_configs('gpu', [])
  assert [name for name, _ in named] == ['gpu:dense', 'gpu:moe', 'gpu:samoe']
  counts = {}
  for name, config in named:
    validate_config(config)
    assert config.model.dtype == 'bfloat16' and config.data.seq_len == 2048
    counts[name] = accounting.param_counts(config)
  dense, moe, samoe = counts['gpu:dense'], counts['gpu:moe'], counts['gpu:samoe']
  assert 340e6 < dense['total'] < 370e6 and dense['total'] == dense['active_per_token']
  assert moe['active_per_token'] == samoe['active_per_token'] > dense['total']   # same active configuration
  # 12 MoE layers x 16 experts stored by the MoE; P = 2 pool entries of 16 by SaMoE
  expert = 2 * 1024 * 4096 + 4096 + 1024
  assert moe['total'] - samoe['total'] == (12 - 2) * 16 * expert - samoe['mixing_logits']
  assert bench_gpu('moe').pool.mixing == 'fixed' and bench_gpu('samoe').pool.size == 2


def test_bad_presets_are_named():
  with pytest.raises(ValueError, match=r"kind='moe128' is not one of \('dense', 'moe', 'samoe'\)"):
    bench_gpu('moe128')
  with pytest.raises(ValueError, match=r"--preset='tpu' is not one of \('cpu', 'gpu', 'pool'\)"):
    bench.preset_configs('tpu', [])


def test_mfu_row_and_the_samoe_ratio_of_the_gpu_preset():
  rows = [{'config': 'gpu:moe', 'step_s': 2.0}, {'config': 'gpu:samoe', 'step_s': 2.1}]
  assert bench.samoe_vs_moe(rows) == pytest.approx(1.05)
  row = {'config': 'gpu:dense', 'step_s': 0.5, 'tokens_per_s': 1.0, 'model_flops_per_step': 2e14,
         'achieved_flops_per_s': 4e14, 'matmul_flops_per_s': 5e14, 'ratio_to_matmul': 0.8, 'compile_s': 1.0,
         'mfu': 4e14 / 989e12}
  assert 'MFU 40.4 %' in format_row(row)


def test_the_pool_preset_has_moe_on_every_block_and_equal_active_sizes():
  named = dict(bench.preset_configs('pool', []))
  assert list(named) == ['all:moe:E8', 'all:samoe:E8:P1', 'all:samoe:E8:P2', 'all:samoe:E8:P4', 'all:moe:E32',
                         'all:samoe:E32:P4', 'all:moe:E8:ragged']
  counts = {}
  for name, config in named.items():
    validate_config(config)
    assert config.model.layer_plan == 'all' and config.model.num_layers == 4 and config.data.seq_len == 256
    counts[name] = accounting.param_counts(config)
  assert named['all:moe:E8:ragged'].moe.dispatch == 'ragged' and named['all:moe:E8'].moe.dispatch == 'gather'
  for e, pools in ((8, (1, 2, 4)), (32, (4,))):
    moe = counts[f'all:moe:E{e}']
    assert named[f'all:moe:E{e}'].pool.mixing == 'fixed' and named[f'all:moe:E{e}'].pool.size == 4
    for p in pools:
      samoe = counts[f'all:samoe:E{e}:P{p}']
      assert named[f'all:samoe:E{e}:P{p}'].pool.size == p and named[f'all:samoe:E{e}:P{p}'].moe.num_experts == e
      assert samoe['active_per_token'] == moe['active_per_token']   # the same active configuration
      assert samoe['mixing_logits'] == 4 * p                         # layer-level logits, 4 MoE layers
      expert = 2 * 256 * 1024 + 1024 + 256
      assert moe['total'] - samoe['total'] == (4 - p) * e * expert - 4 * p


def test_pool_ratios_divide_by_the_standard_moe_with_as_many_experts():
  rows = [{'config': 'all:moe:E8', 'step_s': 2.0, 'round_step_s': [2.0, 2.2, 2.4]},
          {'config': 'all:samoe:E8:P2', 'step_s': 2.1, 'round_step_s': [2.1, 2.2, 2.4 * 1.01]},
          {'config': 'all:moe:E32', 'step_s': 3.0},
          {'config': 'all:samoe:E32:P4', 'step_s': 3.3},
          {'config': 'all:moe:E8:ragged', 'step_s': 2.5, 'round_step_s': [2.5, 2.2, 2.4]}]
  ratios = bench.pool_ratios(rows)
  assert set(ratios) == {'all:samoe:E8:P2', 'all:samoe:E32:P4', 'all:moe:E8:ragged'}
  assert ratios['all:samoe:E8:P2'] == pytest.approx(1.01)        # median of 1.05, 1.0, 1.01
  assert ratios['all:samoe:E32:P4'] == pytest.approx(1.1)        # best rounds when there are no rounds
  assert ratios['all:moe:E8:ragged'] == pytest.approx(1.0)       # median of 1.25, 1.0, 1.0
  with pytest.raises(ValueError, match=r"kind='dense' is not one of \('moe', 'samoe'\)"):
    bench_all_blocks('dense')


def test_only_selects_configs_by_name_and_refuses_unknown_names():
  named = bench.preset_configs('gpu', [])
  assert [n for n, _ in bench.select_configs(named, ['gpu:samoe', 'gpu:moe'])] == ['gpu:moe', 'gpu:samoe']
  assert bench.select_configs(named, []) == named
  with pytest.raises(ValueError, match=r'--only=gpu:moe128: no config named gpu:moe128 in this preset; it has '
                                       r'gpu:dense, gpu:moe, gpu:samoe'):
    bench.select_configs(named, ['gpu:moe128'])
