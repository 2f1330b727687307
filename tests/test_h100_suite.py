"""The budgeted one-GPU suite (samoe_jax/experiments/h100.py): the step plan on synthetic timings, the configs,
and the whole one-process pipeline (data, timing pass, plan, training, report) on a tiny model and a fake corpus."""

from __future__ import annotations

import gzip
import json
import math
import os

import pytest

from samoe_jax.models import accounting
from samoe_jax.analysis.drop_floor import config_drop_floors
from samoe_jax.training.config_checks import validate_config
from samoe_jax.experiments import h100, registry, reproduce, suites

STEP = {'a': 0.01, 'b': 0.02, 'c': 0.03}
COMPILE = {'a': 5.0, 'b': 6.0, 'c': 7.0}
EVAL = {'a': 0.5, 'b': 0.5, 'c': 1.0}


def test_plan_steps_exact():
  # usable 400 * 0.9 = 360; fixed 20 + 10 + (18 + 3 * 2 + 2 * 2) = 58; 302 / 0.06 = 5033.3 -> 5030
  steps = h100.plan_steps(STEP, COMPILE, EVAL, 400, evals=2, spent_s=20, per_run_s=2, final_s=10, margin=0.1,
                          min_steps=100, multiple=10)
  assert steps == 5030
  assert h100.plan_steps(STEP, COMPILE, EVAL, 400, evals=2, spent_s=20, per_run_s=2, final_s=10, margin=0.1,
                         multiple=100) == 5000
  assert h100.plan_steps(STEP, COMPILE, EVAL, 400, evals=2, spent_s=20, per_run_s=2, final_s=10, margin=0.1,
                         max_steps=1234) == 1230
  # exactly on the line: (360 - 58) / 0.06 is 5033.33, so 5040 steps would need 360.4 s
  total = 58 + 5030 * 0.06
  assert total <= 360 < 58 + 5040 * 0.06
  assert h100.plan_steps({'x': 0.5}, {'x': 0.0}, {'x': 0.0}, 100, margin=0, min_steps=10, multiple=10) == 200


def test_plan_steps_refuses_a_small_budget_naming_what_it_needs():
  with pytest.raises(ValueError, match=r'budget_s=60 is too small: 100 steps of each of the 3 configs need about '
                                       r'(\d+) s') as err:
    h100.plan_steps(STEP, COMPILE, EVAL, 60, evals=2, spent_s=20, per_run_s=2, final_s=10, margin=0.1)
  needed = math.ceil((58 + 100 * 0.06) / 0.9)
  assert f'need about {needed} s' in str(err.value) and f'--budget_s to at least {needed}' in str(err.value)
  with pytest.raises(ValueError, match='same configs'):
    h100.plan_steps(STEP, {'a': 1.0}, EVAL, 400)
  with pytest.raises(ValueError, match='margin'):
    h100.plan_steps(STEP, COMPILE, EVAL, 400, margin=1.0)


def _configs(design=h100.DESIGN, corpus='/corpus'):
  suite = h100.H100 if design == h100.DESIGN else h100.make_suite(design)
  return {s.name: suite.config(s, 0, corpus, '/cache', steps=1000) for s in suite.configs}, suite


def test_configs_equal_active_params_bf16_drop_floor_tokens():
  configs, suite = _configs()
  assert registry.get_suite('h100') is suite and 'h100' in suites.SUITES
  assert list(configs) == ['dense', 'dense_d384', 'moe_e16', 'samoe_p1', 'samoe_p2']
  active = {n: accounting.param_counts(c)['active_non_embedding'] for n, c in configs.items()}
  router = active['moe_e16'] - active['dense']   # the routers: 6 x d_model x E
  assert router == 6 * 256 * 16
  assert active['samoe_p1'] == active['samoe_p2'] == active['moe_e16']
  assert active['dense_d384'] > 2 * active['dense']
  for name, c in configs.items():
    validate_config(c)
    assert c.model.dtype == 'bfloat16' and c.model.attention == 'auto' and c.model.dropout_rate == 0.0
    assert (c.data.seq_len, c.data.batch_size, c.train.steps) == (256, 128, 1000)
    assert c.train.grad_stats_every == 0 and c.train.eval_every == 500
    assert c.data.vocabulary == '/corpus/sp4k.model' and c.data.cache_dir == '/cache'
    for floor in list(config_drop_floors(c).values()) + list(config_drop_floors(c, train=False).values()):
      assert floor < 0.01, (name, floor)
  assert configs['samoe_p2'].pool.mixing == 'learned' and configs['samoe_p2'].pool.size == 2
  assert configs['samoe_p1'].pool.size == 1 and configs['moe_e16'].pool.mixing == 'fixed'
  est = h100.estimate(configs['moe_e16'], 1000)
  assert est['tokens'] == 32768 * 1000 and 30e6 < est['flops_per_token'] < 45e6


def test_missing_corpus_is_one_clear_error(tmp_path):
  with pytest.raises(ValueError, match='lacks .*manifest.json.*sp4k.model.*train.jsonl.gz.*validation.jsonl.gz.*'
                                       'experiment_corpus --out=DIR.*corpus_vocab'):
    h100.run(str(tmp_path / 'out'), str(tmp_path / 'nothing'), 420, run_suite=reproduce.run_suite)
  assert not (tmp_path / 'out').exists()


TINY = h100.Design(d_model=32, wide=48, num_layers=2, head_dim=16, experts=4, seq_len=32, batch=8, eval_tokens=256,
                   extra=(('data.vocabulary', 'byte'), ('model.vocab_size', 264), ('moe.group_size', 0),
                          ('data.shuffle_buffer', 100), ('model.dtype', 'float32')))   # float32: faster on CPU


def _fake_corpus(path):
  path.mkdir()
  words = 'the quick brown fox jumps over a lazy dog while seven wise owls count the silver stars'.split()
  for split, docs in (('train', 60), ('validation', 6)):
    with gzip.open(path / f'{split}.jsonl.gz', 'wt') as f:
      for i in range(docs):
        text = ' '.join(words[(i * 7 + j) % len(words)] for j in range(120))
        f.write(json.dumps({'text': text}) + '\n')
  (path / 'manifest.json').write_text('{}\n')


def test_tiny_cpu_run_times_plans_trains_and_reports(tmp_path):
  corpus, out = tmp_path / 'corpus', tmp_path / 'out'
  _fake_corpus(corpus)
  plan = h100.run(str(out), str(corpus), 5000, design=TINY, timed_steps=1, min_steps=10, max_steps=10,
                  run_suite=reproduce.run_suite)
  on_disk = json.loads((out / 'plan.json').read_text())
  assert on_disk == json.loads(json.dumps(plan))
  names = ['dense', 'dense_d48', 'moe_e4', 'samoe_p1', 'samoe_p2']
  assert plan['configs'] == names and plan['steps'] == 10 and plan['budget_s'] == 5000
  assert plan['device_kind'] and set(plan['timing']) == set(names)
  for t in plan['timing'].values():
    assert t['compile_s'] > 0 and t['step_s'] > 0 and t['eval_s'] > 0 and math.isfinite(t['loss'])
  assert plan['data']['first_s'] > 0 and plan['timing_pass_s'] > 0 and plan['planned_s'] > plan['timing_pass_s']
  assert plan['per_config']['dense']['tokens'] == 10 * 8 * 32
  for name in names:
    final = json.loads((out / 'runs' / f'{name}_seed0' / 'final_metrics.json').read_text())
    assert final['step'] == 10 and math.isfinite(final['eval/perplexity'])
  report = (out / 'report' / 'report.md').read_text()
  assert 'suite `h100`' in report and 'samoe_p2' in report
  assert plan['sessions'][-1]['report'] == str(out / 'report' / 'report.md')
  assert os.path.isdir(out / 'jax_cache')
  again = h100.run(str(out), str(corpus), 5000, design=TINY, timed_steps=1, min_steps=10, max_steps=10,
                   run_suite=reproduce.run_suite)
  assert again['steps'] == 10 and again['timing'] == plan['timing'] and len(again['sessions']) == 2
  assert len((out / 'suite_log.jsonl').read_text().splitlines()) == 5   # nothing trained again
  with pytest.raises(ValueError, match='holds a plan for --budget_s=5000'):
    h100.run(str(out), str(corpus), 400, design=TINY, run_suite=reproduce.run_suite)


def test_a_budget_spent_before_the_plan_stops_at_once(tmp_path):
  corpus = tmp_path / 'corpus'
  _fake_corpus(corpus)
  with pytest.raises(ValueError, match=r'budget_s=0.001 is too small: \d+ s were spent by the data alone'):
    h100.run(str(tmp_path / 'out'), str(corpus), 0.001, design=TINY, run_suite=reproduce.run_suite)
  assert not (tmp_path / 'out' / 'plan.json').exists()
