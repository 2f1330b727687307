"""Sharded training on 8 fake CPU devices equals one device; shardings, collectives and memory as intended.

With mesh.fsdp=True (meshes 8x1x1 and 2x4x1) the same step equals one device too, every device holds 1/8 of the
non-expert state, and checkpoints move between FSDP and replicated runs bit-exactly.

The checks run once, in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8
(tests/multidevice_checks.py), so this pytest process keeps its single device; the tests assert on its results.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = ROOT / 'tests' / 'golden' / 'shardings.json'
MESHES = ('8x1x1', '2x4x1', '1x4x2', '1x8x1')
KINDS = ('dense', 'moe', 'samoe')


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  out = tmp_path_factory.mktemp('multidevice') / 'results.json'
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8',
             PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  done = subprocess.run([sys.executable, str(ROOT / 'tests' / 'multidevice_checks.py'), str(out)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=1200, check=False)
  assert done.returncode == 0, done.stderr[-4000:]
  return json.loads(out.read_text())


@pytest.mark.parametrize('mesh', MESHES)
@pytest.mark.parametrize('kind', KINDS)
def test_loss_and_gradients_match_one_device(results, kind, mesh):
  r = results[f'{kind}/{mesh}']
  assert abs(r['loss'] - r['reference_loss']) < 1e-5
  assert abs(r['grad_norm'] - r['reference_grad_norm']) <= 1e-5 * r['reference_grad_norm']
  assert r['grads_max_rel_diff'] < 1e-4          # every gradient leaf, relative to its largest entry
  # After one AdamW step: Adam's first update is ~lr * sign(g), so entries whose gradient is ~0 amplify float
  # noise up to the learning rate; everything else agrees to float precision.
  assert r['params_max_rel_diff'] < 1e-2


@pytest.mark.parametrize('kind', KINDS)
def test_parameter_and_optimizer_shardings_match_golden(results, kind):
  golden = json.loads(GOLDEN.read_text())[kind]
  for mesh in MESHES:
    r = results[f'{kind}/{mesh}']
    assert r['param_specs'] == golden['param_specs'], f'{kind}/{mesh}: parameter shardings changed'
    assert r['opt_specs'] == golden['opt_specs'], f'{kind}/{mesh}: optimizer-state shardings changed'
  if kind != 'dense':
    pool = golden['param_specs']['expert_pool']
    assert pool['w_in'] == "P(None, 'expert', None, 'model')"
    assert pool['w_out'] == "P(None, 'expert', 'model', None)"
    # Adam's mu and nu of every pool array are sharded exactly like the array.
    for spec in pool.values():
      assert golden['opt_specs'].count(spec) >= 2 * list(pool.values()).count(spec)


@pytest.mark.parametrize('mesh', ['2x4x1', '1x4x2', '1x8x1'])
@pytest.mark.parametrize('kind', ['moe', 'samoe'])
def test_dispatch_is_all_to_all_and_expert_weights_are_never_gathered(results, kind, mesh):
  r = results[f'{kind}/{mesh}']
  assert r['collectives']['all-to-all'] > 0
  gathered = set(r['all_gather_shapes']) & set(r['expert_weight_shapes'])
  assert not gathered, f'{kind}/{mesh} all-gathers expert weights of shapes {gathered}'


@pytest.mark.parametrize('mesh', MESHES)
@pytest.mark.parametrize('kind', ['moe', 'samoe'])
def test_expert_pool_memory_per_device_falls_with_the_expert_axis(results, kind, mesh):
  r = results[f'{kind}/{mesh}']
  _, expert, model = (int(x) for x in mesh.split('x'))
  per_device = r['pool_bytes_per_device']
  assert len(per_device) == 8
  assert set(per_device.values()) == {r['reference_pool_bytes'] // (expert * model)}   # w_in: expert x model


def test_dense_model_has_no_all_to_all(results):
  for mesh in MESHES:
    assert results[f'dense/{mesh}']['collectives']['all-to-all'] == 0


def test_checkpoint_restores_onto_other_meshes_and_training_continues(results):
  """Saved on 2x4x1 (8 devices), restored onto 1x8x1 and onto 4 devices: same parameters, same next step."""
  r = results['restore']
  for target in ('1x8x1', '1x4x1'):
    assert r[f'{target}_restored_params_max_abs_diff'] == 0.0
    assert r[f'{target}_pool_spec'] == "P(None, 'expert', None, 'model')"
    assert abs(r[target] - r['2x4x1']) < 1e-5


# ------------------------------------------------------------------------------------------- FSDP (mesh.fsdp)
FSDP_MESHES = ('8x1x1', '2x4x1')
# The non-expert state leaves FSDP leaves replicated on 8 devices: Adam's step counts (int32 scalars) and SaMoE's
# mixing logits [moe_layers=2, P=2] with their two moments (no dimension divisible by data x expert = 8).
FSDP_REPLICATED = ('.count', "['mixing_logits']['alpha']")


def _is_expert(path: str) -> bool:
  return "['expert_pool']" in path


@pytest.mark.parametrize('mesh', FSDP_MESHES)
@pytest.mark.parametrize('kind', KINDS)
def test_fsdp_loss_and_gradients_match_one_device(results, kind, mesh):
  r = results[f'{kind}/fsdp/{mesh}']
  assert abs(r['loss'] - r['reference_loss']) <= 1e-5 * r['reference_loss']
  assert abs(r['grad_norm'] - r['reference_grad_norm']) <= 1e-5 * r['reference_grad_norm']
  # Adam's mu after the step is (1 - b1) x the clipped gradient: every gradient leaf, without a second compilation
  assert r['first_moment_max_rel_diff'] < 1e-4
  assert r['params_max_rel_diff'] < 1e-2


@pytest.mark.parametrize('mesh', FSDP_MESHES)
@pytest.mark.parametrize('kind', KINDS)
def test_fsdp_non_expert_state_per_device_is_one_over_data_shards(results, kind, mesh):
  """Measured from the arrays' addressable shards: with FSDP every device holds 1/8 of each non-expert leaf
  (params, mu, nu) but the FSDP_REPLICATED ones, which it holds whole as without FSDP; expert leaves unchanged."""
  data, expert, _ = (int(x) for x in mesh.split('x'))
  ways = data * expert
  fsdp, plain = results[f'{kind}/fsdp/{mesh}']['state_bytes'], results[f'{kind}/{mesh}']['state_bytes']
  replicated_total = per_device_total = kept_total = 0
  for part in ('params', 'opt_state'):
    for path, (full, *shards) in fsdp[part].items():
      assert len(shards) == 1, f'{path}: shards of unequal sizes {shards}'
      plain_full, *plain_shards = plain[part][path]
      if _is_expert(path):
        assert shards == plain_shards, f'{path}: expert leaf resharded'
        continue
      assert plain_shards == [plain_full == full and full], f'{path}: not replicated without FSDP'
      kept = any(p in path for p in FSDP_REPLICATED)
      assert shards[0] == (full if kept else full // ways), f'{path}: {shards[0]} of {full} bytes per device'
      replicated_total += full
      per_device_total += shards[0]
      kept_total += full if kept else 0
  # two int32 step counts (scale_by_adam's and the learning-rate schedule's); SaMoE: alpha, its mu and nu
  assert kept_total == 2 * 4 + (3 * 2 * 2 * 4 if kind == 'samoe' else 0)
  assert per_device_total == (replicated_total - kept_total) // ways + kept_total


@pytest.mark.parametrize('kind', KINDS)
def test_fsdp_shardings_match_golden_and_expert_weights_keep_theirs(results, kind):
  golden = json.loads(GOLDEN.read_text())
  for mesh in FSDP_MESHES:
    r = results[f'{kind}/fsdp/{mesh}']
    assert r['param_specs'] == golden['fsdp'][kind]['param_specs'], f'{kind}/fsdp/{mesh}: parameter shardings'
    assert r['opt_specs'] == golden['fsdp'][kind]['opt_specs'], f'{kind}/fsdp/{mesh}: optimizer-state shardings'
  specs = golden['fsdp'][kind]['param_specs']
  assert specs['token_embedding'] == "P('model', ('data', 'expert'))"
  if kind != 'dense':
    assert specs['expert_pool'] == golden[kind]['param_specs']['expert_pool']


@pytest.mark.parametrize('mesh', FSDP_MESHES)
@pytest.mark.parametrize('kind', KINDS)
def test_fsdp_gathers_weights_but_never_expert_weights(results, kind, mesh):
  r = results[f'{kind}/fsdp/{mesh}']
  assert r['collectives']['all-gather'] > results[f'{kind}/{mesh}']['collectives']['all-gather']
  assert not set(r['all_gather_shapes']) & set(r['expert_weight_shapes'])


def test_checkpoint_saved_with_fsdp_restores_without_it_and_vice_versa(results):
  r = results['restore_fsdp']
  for direction, embedding in (('fsdp_to_replicated', "P('model', None)"),
                               ('replicated_to_fsdp', "P('model', ('data', 'expert'))")):
    assert r[direction]['bit_equal'], direction
    assert r[direction]['target_shardings'], direction
    assert r[direction]['embedding_spec'] == embedding
    assert r[direction]['pool_spec'] == "P(None, 'expert', None, 'model')"
