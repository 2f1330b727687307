"""samoe_jax.mesh_plan: the per-device memory model against the real sharding rules, and the mesh choice."""

from __future__ import annotations

import math
import subprocess
import sys

import jax
import pytest

from samoe_jax import mesh_plan
from samoe_jax.config.presets import bench_gpu, gpt3, tiny
from samoe_jax.models.model import LanguageModel
from samoe_jax.sharding.fsdp import fsdp_spec, sharded_fraction
from samoe_jax.sharding.rules import mesh_axes_of


def per_device_params(config, sizes: dict[str, int], fsdp: bool = False) -> float:
  """Parameters one device stores under the rules table (rewritten by sharding/fsdp.py when fsdp): each leaf's
  size over its sharded mesh axes."""
  model = LanguageModel(config)
  shapes = jax.tree.leaves(model.abstract_params())
  specs = jax.tree.leaves(model.param_logical_axes(), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  total = 0.0
  for shape, names in zip(shapes, specs):
    spec = jax.sharding.PartitionSpec(*mesh_axes_of(tuple(names)))
    if fsdp:
      spec = fsdp_spec(spec, shape.shape, sizes)
    total += math.prod(shape.shape) * sharded_fraction(spec, sizes)
  return total


@pytest.mark.parametrize('kind', ['dense', 'moe', 'samoe'])
@pytest.mark.parametrize('model_axis', [1, 2, 4])
def test_state_bytes_follow_the_rules_table(kind, model_axis):
  config = tiny(kind)
  plan = mesh_plan.plan_mesh(config, mesh_plan.HARDWARE['tpu-v5p'], 16, model_axis)
  expected_params = per_device_params(config, {'data': plan.data, 'expert': plan.expert, 'model': model_axis})
  assert plan.state_bytes == pytest.approx(16 * expected_params, rel=1e-9)   # float32 params + 2 Adam + grad
  assert plan.data * plan.expert * plan.model == 16
  assert plan.expert == (math.gcd(8, 16 // model_axis) if kind != 'dense' else 1)   # 8 experts


@pytest.mark.parametrize('kind', ['dense', 'moe', 'samoe'])
@pytest.mark.parametrize('model_axis', [1, 2])
@pytest.mark.parametrize('moment_dtype', ['float32', 'bfloat16'])
def test_fsdp_state_bytes_follow_the_fsdp_specs(kind, model_axis, moment_dtype):
  """mesh.fsdp divides the non-expert state by data x expert: the plan against the real FSDP rewrite of every
  leaf (the few leaves it leaves replicated, e.g. SaMoE's mixing logits, are the difference allowed)."""
  config = tiny(kind)
  config.mesh.fsdp, config.train.moment_dtype = True, moment_dtype
  plan = mesh_plan.plan_mesh(config, mesh_plan.HARDWARE['tpu-v5p'], 16, model_axis)
  sizes = {'data': plan.data, 'expert': plan.expert, 'model': model_axis}
  per_param = 8 + 2 * (2 if moment_dtype == 'bfloat16' else 4)    # float32 params and gradient + 2 moments
  assert plan.fsdp and plan.moment_dtype == moment_dtype
  assert plan.state_bytes == pytest.approx(per_param * per_device_params(config, sizes, fsdp=True), rel=1e-3)
  assert plan.state_bytes < per_param * per_device_params(config, sizes) / 2


def test_recommend_turns_on_fsdp_and_bfloat16_moments_only_when_nothing_fits_without():
  config = gpt3('1p3b', 'moe128')
  v5e = mesh_plan.recommend(config, mesh_plan.HARDWARE['tpu-v5e'], 64)
  assert v5e.fits and v5e.fsdp and v5e.moment_dtype == 'float32'      # replicated state does not fit
  assert not mesh_plan.recommend(config, mesh_plan.HARDWARE['tpu-v5p'], 64).fsdp
  assert [(c.mesh.fsdp, c.train.moment_dtype) for c in mesh_plan.state_savers(config)] == [
      (False, 'float32'), (True, 'float32'), (True, 'bfloat16')]


def test_expert_axis_and_rows():
  config = gpt3('350m', 'moe128')               # 128 experts, batch 256
  plan = mesh_plan.plan_mesh(config, mesh_plan.HARDWARE['tpu-v5p'], 64, 1)
  assert (plan.data, plan.expert, plan.model) == (1, 64, 1)
  assert plan.rows_per_device == 256 // 64
  assert mesh_plan.plan_mesh(config, mesh_plan.HARDWARE['tpu-v5p'], 64, 3) is None      # 3 does not divide 64


def test_routing_group_rows_are_one_for_any_all_dense_plan():
  from samoe_jax.config.layer_plan import group_rows
  config = tiny('moe')
  config.model.num_layers, config.data.seq_len, config.moe.group_size = 4, 16, 64   # a group spans 4 sequences
  for plan, rows in (('DMDM', 4), ('DDDD', 1), ('none', 1)):
    config.model.layer_plan = plan
    assert group_rows(config) == rows, plan


def test_activation_formula_by_hand():
  config = tiny('dense')                        # 4 layers, seq 128, d 128, 4 heads, float32
  per_layer_16bit = 128 * 128 * (10 + 24) + 5 * 4 * 128 * 128
  assert mesh_plan.activation_bytes_per_row(config, 1) == pytest.approx(4 * per_layer_16bit * 2)


def test_recommend_uses_tensor_parallelism_only_when_memory_needs_it():
  config = gpt3('1p3b', 'samoe')
  big = mesh_plan.recommend(config, mesh_plan.HARDWARE['tpu-v5p'], 64)
  small = mesh_plan.recommend(config, mesh_plan.HARDWARE['tpu-v5e'], 64)
  assert big.model == 1 and big.fits
  assert small.model > 1 and small.fits
  assert small.total_bytes <= mesh_plan.HEADROOM * mesh_plan.HARDWARE['tpu-v5e'].hbm_bytes


def test_no_mesh_divides_is_a_clear_error():
  config = tiny('moe')
  config.data.batch_size = 3
  with pytest.raises(ValueError, match='data.batch_size=3'):
    mesh_plan.recommend(config, mesh_plan.HARDWARE['h100'], 8)


def test_cli_prints_the_readme_table():
  out = subprocess.run([sys.executable, '-m', 'samoe_jax.mesh_plan', '--readme'], capture_output=True, text=True,
                       check=True).stdout
  rows = [line for line in out.splitlines() if line.startswith('| ') and not line.startswith('| config')]
  assert len(rows) == len(mesh_plan.README_CONFIGS) * len(mesh_plan.README_SLICES)


def _mesh_plan(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'samoe_jax.mesh_plan', *args], capture_output=True, text=True,
                        check=False, timeout=300)


def test_cli_prints_a_header_and_the_config_row_and_refuses_unknown_hardware():
  done = _mesh_plan('--config=configs/tiny_samoe.py', '--hardware=tpu-v6e', '--devices=8')
  assert done.returncode == 0, done.stderr[-3000:]
  lines = done.stdout.splitlines()
  assert lines[0] == mesh_plan.TABLE_HEADER.splitlines()[0] and lines[1].startswith('|---|')
  assert lines[2].split('|')[1].strip() == 'tiny_samoe' and '8 TPU v6e chips' in lines[2]
  assert 'TPU v6e: 918 TFLOP/s bf16 dense, 32 GB' in done.stdout and '1.64 TB/s' in done.stdout
  done = _mesh_plan('--config=configs/tiny_samoe.py', '--hardware=tpu-v9', '--devices=8')
  assert done.returncode == 1 and 'FATAL' not in done.stderr and 'Traceback' not in done.stderr
  assert done.stderr.strip().splitlines() == [
      "samoe_jax.mesh_plan: error: --hardware='tpu-v9': not a known device kind; allowed: a100, h100, h200, tpu-v4, "
      'tpu-v5e, tpu-v5p, tpu-v6e']


@pytest.mark.parametrize('key, flops, hbm, bandwidth', [
    ('a100', 312e12, 80e9, 2.039e12), ('h200', 989e12, 141e9, 4.8e12), ('tpu-v6e', 918e12, 32e9, 1.638e12)])
def test_added_devices_plan_with_their_published_figures(key, flops, hbm, bandwidth):
  hw = mesh_plan.get_hardware(key)
  assert (hw.peak_flops, hw.hbm_bytes, hw.hbm_bandwidth) == pytest.approx((flops, hbm, bandwidth))
  config = gpt3('1p3b', 'samoe')
  devices = 64 if key.startswith('tpu') else 8
  plan = mesh_plan.recommend(config, hw, devices)
  assert plan.total_bytes <= mesh_plan.HEADROOM * hbm or not plan.fits
  h100 = mesh_plan.recommend(config, mesh_plan.get_hardware('h100'), 8)
  if key == 'h200':   # the same compute as H100, more memory: never more model parallelism
    assert plan.fits and plan.model <= h100.model
  assert mesh_plan.plan_row('1.3B', config, key, devices).startswith(f'| 1.3B | {devices} {hw.name} ')


def test_flash_attention_on_gpus_stores_no_scores():
  """model.attention='auto' resolves to cuDNN flash attention for a bfloat16 model without dropout on the GPUs
  (layers/attention_kernel.py): the planner drops the 5*a*s^2 bytes of stored scores per layer there only."""
  config = bench_gpu('dense')                   # 24 layers, 16 heads, seq 2048, bfloat16, no dropout
  full = mesh_plan.activation_bytes_per_row(config, 1)
  fused = mesh_plan.activation_bytes_per_row(config, 1, fused_attention=True)
  assert full - fused == pytest.approx(24 * 5 * 16 * 2048 ** 2)
  per_row = lambda p: p.activation_bytes * p.microbatches / p.rows_per_device
  assert per_row(mesh_plan.plan_mesh(config, mesh_plan.HARDWARE['h100'], 1, 1)) == pytest.approx(fused)
  assert per_row(mesh_plan.plan_mesh(config, mesh_plan.HARDWARE['tpu-v5p'], 1, 1)) == pytest.approx(full)
  config.model.dropout_rate = 0.1               # attention dropout needs the probabilities: einsums on GPUs too
  assert per_row(mesh_plan.plan_mesh(config, mesh_plan.HARDWARE['h100'], 1, 1)) == pytest.approx(full)
