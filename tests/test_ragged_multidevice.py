"""Dropless experts (moe.dispatch='ragged') on 8 fake CPU devices: tests/ragged_multidevice_checks.py in its own
process (data, model and expert parallelism against one device); see docs/dropless.md."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_data_model_and_expert_parallel_equal_one_device_on_8_fake_devices():
  """tests/ragged_multidevice_checks.py in a subprocess with 8 fake CPU devices: the layer's outputs and gradients
  on a data=2 x model=4 mesh equal one device, each data shard sorting only its own rows (no collective carries
  the whole call's rows; the global sort of an earlier version had 5), and a single group (not divisible over
  data) falls back to the global sort; a SaMoE train step on data=4 x model=2 and on data=2 x expert=4 equals one
  device; on data=2 x expert=4 (all-gather / reduce-scatter) weight- and output-space mixing equal one device,
  and one group, not divisible over the expert axis, is refused."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8',
             PYTHONPATH=str(ROOT) + os.pathsep + str(ROOT / 'tests') + os.pathsep + os.environ.get('PYTHONPATH', ''))
  done = subprocess.run([sys.executable, str(ROOT / 'tests' / 'ragged_multidevice_checks.py')], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-4000:]
  lines = dict(line.split(' ', 1) for line in done.stdout.strip().splitlines())
  assert float(lines['max_abs_diff']) < 1e-5 and float(lines['grad_max_abs_diff']) < 1e-5
  assert int(lines['collectives']) > 0 and int(lines['global_row_collectives']) == 0
  assert float(lines['one_group_max_abs_diff']) < 1e-5
  for mesh in ('4x1x2', '2x4x1'):   # a whole SaMoE train step, data x model and expert parallel
    assert float(lines[f'train_step_{mesh}_loss_diff']) < 1e-5
    assert float(lines[f'train_step_{mesh}_param_max_abs_diff']) < 1e-5
  for space in ('weight', 'output'):
    assert float(lines[f'ep_{space}_2x4x1_max_abs_diff']) < 1e-4
    assert lines[f'ep_{space}_2x4x1_collectives'].split(',') == ['all-gather', 'all-reduce', 'reduce-scatter']
  assert lines['ep_one_group'].startswith("MoeFFN: moe.dispatch='ragged' with the experts split over mesh axes")
