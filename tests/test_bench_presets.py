"""The benchmark's GPU preset and MFU bookkeeping (samoe_jax/bench.py, config/presets.bench_gpu): pure Python,
no compilation (the preset is sized for an 80+ GB GPU and runs only there)."""

from __future__ import annotations

import pytest

from samoe_jax import accounting
from samoe_jax import bench_configs as bench
from samoe_jax.config.presets import bench_gpu
from samoe_jax.config.validate import validate_config


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
  with pytest.raises(ValueError, match=r"--preset='tpu' is not one of \('cpu', 'gpu'\)"):
    bench.preset_configs('tpu', [])


def test_mfu_row_and_the_samoe_ratio_of_the_gpu_preset():
  rows = [{'config': 'gpu:moe', 'step_s': 2.0}, {'config': 'gpu:samoe', 'step_s': 2.1}]
  assert bench.samoe_vs_moe(rows) == pytest.approx(1.05)
  row = {'config': 'gpu:dense', 'step_s': 0.5, 'tokens_per_s': 1.0, 'model_flops_per_step': 2e14,
         'achieved_flops_per_s': 4e14, 'matmul_flops_per_s': 5e14, 'ratio_to_matmul': 0.8, 'compile_s': 1.0,
         'mfu': 4e14 / 989e12}
  assert 'MFU 40.4 %' in bench.format_row(row)
