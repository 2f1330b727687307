"""Analytic parameter counts and FLOPs (samoe_jax.models.accounting), describe, and the cross-check with the model."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import ml_collections
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from samoe_jax.models import accounting  # noqa: E402
from samoe_jax import describe as describe_lib  # noqa: E402
from samoe_jax.config import defaults  # noqa: E402

CONFIG_FILES = sorted((ROOT / 'configs').glob('*.py'))


def load_config(name: str) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location(f'configs_{name}', ROOT / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


# ---------------------------------------------------------------------------------------- hand-computed counts
def test_test_tiny_counts_by_hand():
  # configs/test_tiny.py: V 264, D 32, 2 layers, 2 heads, F 64, max_len 16; block 1 is MoE with E 4 experts,
  # top-2, from a learned (layer-level) pool of P 2.
  p = accounting.param_counts(load_config('test_tiny'))
  embedding = 264 * 32 + 16 * 32                  # token table (tied output) + positions = 8960
  attention = 4 * 32 * 32 + 4 * 32                # q, k, v, o kernels + biases = 4224
  norms = 2 * (2 * 32)                            # two LNs per block = 128
  dense_ffn = 32 * 64 + 64 + 64 * 32 + 32         # block 0 = 4192
  final_norm = 2 * 32
  non_expert = embedding + 2 * (attention + norms) + dense_ffn + final_norm
  assert non_expert == 21920
  expert = 32 * 64 + 64 + 64 * 32 + 32            # 4192
  pool = 2 * 4 * expert                           # P * E experts = 33536
  routers = 1 * 32 * 4                            # one MoE layer, [D, E]
  mixing = 1 * 2                                  # alpha [P] for the one MoE layer
  assert p['non_expert'] == non_expert
  assert p['params_per_expert'] == expert
  assert p['expert_pool'] == pool
  assert p['routers'] == routers
  assert p['mixing_logits'] == mixing
  assert p['total'] == non_expert + pool + routers + mixing == 55586
  assert p['materialized'] == non_expert + routers + 1 * 4 * expert == 38816
  assert p['active_per_token'] == non_expert + routers + 2 * expert == 30432
  assert p['active_non_embedding'] == 30432 - 8960
  assert p['reduction_factor'] == pytest.approx(38816 / 55586)


def test_test_tiny_flops_by_hand():
  config = load_config('test_tiny')
  f = accounting.flops_per_token(config)
  attention_proj = 2 * (2 * 4 * 32 * 32)          # 2 layers x 2 FLOPs x (q, k, v, o) D^2
  attention_scores = 2 * (2 * 16 * 32)            # 2 layers x causal half of 4 * seq_len * D
  dense_ffn = 1 * (2 * 2 * 32 * 64)
  moe = 1 * 2 * (2 * 2 * 32 * 64)                 # top-2 experts in the one MoE layer
  router = 1 * 2 * 32 * 4
  logits = 2 * 32 * 264
  forward = attention_proj + attention_scores + dense_ffn + moe + router + logits
  assert forward == 60160
  assert f['forward'] == forward and f['train'] == 3 * forward
  assert (f['attention_proj'], f['attention_scores'], f['dense_ffn'], f['moe_experts'], f['router'],
          f['logits']) == (attention_proj, attention_scores, dense_ffn, moe, router, logits)
  mixing = 1 * 2 * 2 * 4 * (32 * 64 + 64 + 64 * 32 + 32)   # L_moe * 2 * P * E * params per expert
  assert f['mixing_per_step'] == mixing == 67072
  assert f['mixing_per_token'] == mixing / (4 * 16)
  step = accounting.flops_per_step(config)
  assert step['tokens'] == 64
  assert step['forward'] == forward * 64 + mixing
  assert step['train'] == 3 * forward * 64 + 3 * mixing


def test_granularity_space_and_untied_variants():
  c = load_config('test_tiny')
  c.pool.granularity = 'expert'
  assert accounting.param_counts(c)['mixing_logits'] == 1 * 4 * 2       # alpha [E, P]
  c.pool.mixing = 'fixed'
  c.pool.size = 1
  p = accounting.param_counts(c)
  assert p['mixing_logits'] == 0 and p['expert_pool'] == 4 * 4192
  assert accounting.flops_per_token(c)['mixing_per_step'] == 0
  c = load_config('test_tiny')
  c.pool.space = 'output'                         # P expert sets per slot plus the P-way sum
  f = accounting.flops_per_token(c)
  assert f['moe_experts'] == 1 * 2 * 2 * (2 * 2 * 32 * 64 + 2 * 32) and f['mixing_per_step'] == 0
  c = load_config('test_tiny')
  c.model.tie_embeddings = False
  assert accounting.param_counts(c)['embedding'] == 2 * 264 * 32 + 16 * 32


# -------------------------------------------------------------------------------------------- paper scale
def test_350m_moe128_is_13b():
  p = accounting.param_counts(load_config('gpt3_350m_moe128'))
  assert p['total'] == pytest.approx(13e9, rel=0.03)
  assert p['non_expert'] == pytest.approx(0.255e9, rel=0.01)              # docs/model.md
  assert p['params_per_expert'] == 2 * 1024 * 4096 + 4096 + 1024        # 8.39M
  assert p['reduction_factor'] == 1.0 and p['materialized'] == p['total']


def test_1p3b_moe128_is_52b():
  p = accounting.param_counts(load_config('gpt3_1p3b_moe128'))
  assert p['total'] == pytest.approx(52e9, rel=0.03)
  assert p['non_expert'] == pytest.approx(0.914e9, rel=0.01)
  assert p['params_per_expert'] == 2 * 2048 * 8192 + 8192 + 2048        # 33.56M


def test_moe128_compute_equals_dense_base_plus_router():
  # Top-1 experts of the dense FFN's size: a token costs the dense base plus the routers (DeepSpeed-MoE).
  for size in ('350m', '1p3b'):
    moe = accounting.flops_per_token(load_config(f'gpt3_{size}_moe128'))
    dense = accounting.flops_per_token(load_config(f'gpt3_{size}_dense'))
    assert moe['forward'] == dense['forward'] + moe['router']


@pytest.mark.parametrize('size,baseline', [('350m', 13.15e9), ('1p3b', 52.47e9)])
def test_samoe_reduction_factors(size, baseline):
  config = load_config(f'gpt3_{size}_samoe')
  p = accounting.param_counts(config)
  assert p['materialized'] == pytest.approx(baseline, rel=1e-3)
  assert p['reduction_factor'] == pytest.approx(5.5, abs=0.1)           # docs/model.md: P = 2 gives 5.5x
  sweep = {r['pool_size']: r['reduction_factor'] for r in accounting.pool_size_sweep(config)}
  assert sorted(sweep) == [1, 2, 3, 4, 6]
  assert [round(sweep[q], 1) for q in (1, 2, 3, 4, 6)] == (
      [9.9, 5.5, 3.8, 2.9, 2.0] if size == '350m' else [10.1, 5.5, 3.8, 2.9, 2.0])
  # Compute per token is the standard MoE's; mixing is a per-step cost that is tiny per token.
  samoe = accounting.flops_per_token(config)
  moe = accounting.flops_per_token(load_config(f'gpt3_{size}_moe128'))
  assert samoe['forward'] == moe['forward']
  assert 0 < samoe['mixing_per_token'] < 1e-3 * samoe['forward']


# ------------------------------------------------------------------------------------------------- dense
@pytest.mark.parametrize('name', ['tiny_dense', 'bench_dense', 'gpt3_350m_dense', 'gpt3_1p3b_dense'])
def test_dense_total_is_active(name):
  config = load_config(name)
  p = accounting.param_counts(config)
  assert p['total'] == p['active_per_token'] == p['materialized'] == p['non_expert']
  assert p['expert_pool'] == p['routers'] == p['mixing_logits'] == 0
  # Forward FLOPs ~ 2 * non-embedding params + attention scores + logits (biases and norms are the difference).
  f = accounting.flops_per_token(config)
  approx = 2 * p['active_non_embedding'] + f['attention_scores'] + f['logits']
  assert f['forward'] == pytest.approx(approx, rel=0.01)
  assert f['forward'] < approx


def test_capacity_matches_routing():
  from samoe_jax.layers import token_choice  # pylint: disable=g-import-not-at-top
  for name in ('test_tiny', 'tiny_samoe', 'bench_moe', 'gpt3_350m_moe128'):
    c = load_config(name)
    cap = accounting.capacity(c)
    t = c.moe.group_size or c.data.seq_len
    assert cap['train'] == token_choice.expert_capacity(t, c.moe.num_experts, c.moe.top_k, c.moe.capacity_factor_train,
                                                   c.moe.min_capacity)
  cap = accounting.capacity(load_config('gpt3_350m_moe128'))
  assert cap == {'group_tokens': 2048, 'groups_per_batch': 256, 'train': 16, 'eval': 16}
  cap = accounting.capacity(load_config('bench_moe'))
  assert cap['train'] == 80                       # ceil(2 * 256 * 1.25 / 8)


def test_dropless_experts_report_no_capacity():
  """moe.dispatch='ragged' routes with C = T (layers/ragged.py): describe says so instead of the unused C."""
  c = load_config('bench_moe')
  c.moe.dispatch = 'ragged'
  assert accounting.capacity(c) == {'group_tokens': 256, 'groups_per_batch': 8, 'train': 256, 'eval': 256,
                                    'dropless': True}
  text = describe_lib.format_text(describe_lib.describe(c))
  assert "capacity: none, dropless experts (moe.dispatch='ragged'): 256 tokens per routing group" in text
  assert 'slots per expert' not in text


# ------------------------------------------------------------------------------------ model cross-check
MODEL_CHECK_VARIANTS = [
    {'model.layer_plan': 'all', 'pool.size': 4, 'pool.mixing': 'fixed'},
    {'model.layer_plan': 'MDDM', 'pool.size': 3, 'pool.granularity': 'expert'},
    {'model.layer_plan': 'second_half', 'pool.size': 1, 'pool.mixing': 'fixed', 'moe.expert_d_ff': 256},
    {'model.layer_plan': 'none'},
]


def model_summary(config: ml_collections.ConfigDict) -> dict[str, int]:
  from samoe_jax.models.model import LanguageModel  # pylint: disable=g-import-not-at-top
  return LanguageModel(config).param_summary()


@pytest.mark.parametrize('path', CONFIG_FILES, ids=lambda p: p.stem)
def test_counts_match_model_eval_shape(path):
  config = load_config(path.stem)
  analytic = accounting.param_counts(config)
  summary = model_summary(config)
  for key, value in summary.items():
    assert analytic[key] == value, (key, analytic[key], value)


@pytest.mark.parametrize('overrides', MODEL_CHECK_VARIANTS, ids=lambda o: ','.join(f'{k}={v}' for k, v in o.items()))
def test_counts_match_model_eval_shape_variants(overrides):
  config = defaults.get_base_config()
  for key, value in overrides.items():
    section, name = key.split('.')
    config[section][name] = value
  analytic = accounting.param_counts(config)
  for key, value in model_summary(config).items():
    assert analytic[key] == value, (key, analytic[key], value)


# ------------------------------------------------------------------------------------------------- describe
def test_describe_report():
  report = describe_lib.describe(load_config('gpt3_350m_samoe'))
  json.dumps(report)
  text = describe_lib.format_text(report)
  assert '13.15B' in text and '2.41B' in text and '5.47x' in text
  assert 'learned mix over P=2' in text and 'C = 16 (train)' in text
  assert len(report['layer_plan']) == 24 and sum(r['ffn'] == 'moe' for r in report['layer_plan']) == 12
  moe = describe_lib.format_text(describe_lib.describe(load_config('gpt3_350m_moe128')))
  assert 'standard MoE' in moe and 'pool entry 11 (fixed)' in moe
  assert describe_lib.human(12_980_000_000) == '12.98B'


def test_describe_cli_json():
  out = subprocess.run([sys.executable, '-m', 'samoe_jax.describe', '--config=configs/gpt3_1p3b_moe128.py',
                        '--config.pool.size=12', '--json'], cwd=ROOT, capture_output=True, text=True, check=True)
  report = json.loads(out.stdout)
  assert report['params']['total'] == pytest.approx(52e9, rel=0.03)
  bad = subprocess.run([sys.executable, '-m', 'samoe_jax.describe', '--config=configs/tiny_moe.py',
                        '--config.moe.top_k=9'], cwd=ROOT, capture_output=True, text=True)
  assert bad.returncode == 1 and 'moe.top_k=9' in bad.stderr
