"""The experiment suites (samoe_jax/experiments): the smoke suite end to end, resume, the report's numbers, the CLI.

One module fixture trains the smoke suite (6 tiny byte-level runs, 24 steps) after leaving one run interrupted at
step 12, as a killed suite would: the suite resumes it, trains the others, and writes the report. The tests then
check the report's table against the runs' own metrics.jsonl and param_summary.json, the computed conclusions,
the figures, that a second invocation trains nothing, and the command line's errors and the paper suite's commands.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import ml_collections
import pytest

from samoe_jax.experiments import paper, reproduce, results, runner, suites
from samoe_jax.training import loop
from samoe_jax.training.metrics_writer import read_metrics

PNG = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('smoke'))
  runs = runner.plan(suites.SMOKE, out)
  interrupted = ml_collections.ConfigDict(runs[0].config.to_dict())
  interrupted.train.steps = 12            # as if the suite had been killed after this run's step-12 checkpoint
  loop.train(interrupted, runs[0].workdir)
  path = reproduce.run_suite('smoke', out)
  return out, runs, path


def test_every_run_finished_and_the_interrupted_one_resumed(smoke):
  out, runs, _ = smoke
  assert len(runs) == len(suites.SMOKE.configs) == 6
  assert all(runner.is_finished(r) for r in runs)
  log = runner.read_log(out)
  assert sorted(r['run'] for r in log) == sorted(r.name for r in runs)
  by_run = {r['run']: r for r in log}
  assert by_run[runs[0].name]['complete'] is False and all(by_run[r.name]['complete'] for r in runs[1:])
  with open(os.path.join(runs[0].workdir, 'final_metrics.json')) as f:
    assert json.load(f)['resumed_from_step'] == 12
  for run in runs:   # each run is an ordinary workdir with its own report and gradient statistics
    assert os.path.isfile(os.path.join(run.workdir, 'report.md'))
    assert [r['step'] for r in read_metrics(run.workdir, 'grad_stats')] == [8, 16, 24]


def test_report_table_equals_the_runs_numbers(smoke):
  _, runs, path = smoke
  text = open(path).read()
  for run in runs:
    ce = {r['step']: r['eval/cross_entropy'] for r in read_metrics(run.workdir, 'eval')}[24]
    with open(os.path.join(run.workdir, 'param_summary.json')) as f:
      stored = json.load(f)['total']
    row = next(line for line in text.splitlines() if f'(`{run.spec.name}`)' in line)
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells[1] == f'{stored / 1e6:.2f}M'
    assert cells[6] == f'{math.exp(ce):.2f}', (run.name, cells)
    train = next(r for r in read_metrics(run.workdir, 'train') if r['step'] == 24).get('moe/dropped_fraction')
    valid = next(r for r in read_metrics(run.workdir, 'eval') if r['step'] == 24).get('eval/moe/dropped_fraction')
    if run.spec.role == 'dense':
      assert train is None and valid is None and cells[8] == cells[9] == '—'
    else:   # one seed: the mean is the run's own last-step value
      assert (cells[8], cells[9]) == (f'{100 * train:.2f} %', f'{100 * valid:.2f} %'), (run.name, cells)
      assert f'- dropped assignments, final validation: {100 * valid:.2f} %' in open(
          os.path.join(run.workdir, 'report.md')).read()
  assert 'routing groups: 32 tokens (moe.group_size=0, data.seq_len=32)' in text
  assert 'command: `samoe_jax.experiments.reproduce --suite=smoke' in text
  assert re.search(r'commit \(report\): `[0-9a-f]{40}', text)
  assert re.search(r'runs trained at: `[0-9a-f]{40}', text)
  assert 'machine: ' in text and 'training wall time: ' in text


def test_conclusions_are_computed_from_the_numbers(smoke):
  out, runs, _ = smoke
  with open(os.path.join(out, 'report', 'results.json')) as f:
    data = json.load(f)
  assert data['runs_finished'] == data['runs_planned'] == 6
  configs = {c['name']: c for c in data['configs']}
  moe, tied = configs['moe_e4'], configs['samoe_p1']
  sentence = next(s for s in data['conclusions'] if s.startswith('SaMoE P=1'))
  assert f'{moe["params"]["total"] / tied["params"]["total"]:.2f}x fewer stored parameters' in sentence
  assert f'{tied["perplexity_mean"]:.2f} vs {moe["perplexity_mean"]:.2f}' in sentence
  assert 'no noise estimate' in sentence   # one seed: no std, said so
  assert any('expert gradient per parameter' in s for s in data['gradient_flow_sentences'])
  assert configs['moe_e4']['speedup']   # placed on the dense frontier (a value or an out-of-range bound)
  rows = results.collect(runs)
  assert [r.spec.name for r in rows] == [s.name for s in suites.SMOKE.configs]


def test_report_figures_are_written(smoke):
  out, _, _ = smoke
  report_dir = os.path.join(out, 'report')
  for name in ('loss_curves.png', 'params_vs_perplexity.png', 'expert_load.png', 'speedup/speedup.png',
               'gradient_flow/expert_grad_vs_num_experts.png', 'gradient_flow/pool_vs_layer_experts.png'):
    with open(os.path.join(report_dir, name), 'rb') as f:
      assert f.read(8) == PNG, name
  text = open(os.path.join(report_dir, 'report.md')).read()
  for link in re.findall(r'!\[[^]]*\]\(([^)]+)\)', text):
    assert os.path.isfile(os.path.join(report_dir, link)), link


def test_a_second_invocation_trains_nothing(smoke):
  out, runs, _ = smoke
  before = len(runner.read_log(out))
  assert runner.train_runs(runs, out) == []
  assert len(runner.read_log(out)) == before


def test_estimator_uses_finished_runs():
  spec = suites.SMOKE.configs[0]
  run = runner.Run(spec, 0, '/tmp/x/runs/dense_seed0', suites.SMOKE.config(spec, 0))
  other = runner.Run(suites.SMOKE.configs[1], 0, '/tmp/x', suites.SMOKE.config(suites.SMOKE.configs[1], 0))
  assert runner.Estimator([]).seconds_for(run) is None
  est = runner.Estimator([{'status': 'finished', 'complete': True, 'config': spec.name, 'seconds': 10.0,
                           'train_flops': run.train_flops()}])
  assert est.seconds_for(run) == 10.0
  assert est.seconds_for(other) == pytest.approx(10.0 * other.train_flops() / run.train_flops())


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'samoe_jax.experiments.reproduce', *args], capture_output=True,
                        text=True, timeout=300, check=False)


def test_cli_errors(tmp_path):
  bad = _cli('--suite=nope', f'--out={tmp_path}')
  assert bad.returncode == 1 and "--suite='nope' is not a trainable suite" in bad.stderr
  assert 'Traceback' not in bad.stderr
  missing = _cli('--suite=smoke')
  assert missing.returncode == 1 and '--out is required' in missing.stderr
  (tmp_path / 'file').write_text('x')
  notdir = _cli('--suite=smoke', f'--out={tmp_path / "file"}', '--report_only')
  assert notdir.returncode == 1 and 'exists and is not a directory' in notdir.stderr
  unknown = _cli('--suite=smoke', f'--out={tmp_path / "o"}', '--only=nosuch', '--report_only')
  assert unknown.returncode == 1 and "has no config 'nosuch'" in unknown.stderr
  no_flags = _cli('--suite=paper')
  assert no_flags.returncode == 1 and '--tpu_prefix is empty' in no_flags.stderr


def test_paper_suite_prints_the_launcher_commands():
  done = _cli('--suite=paper', '--tpu_prefix=samoe', '--zone=us-central2-b', '--bucket=gs://b',
              '--tfds_data_dir=gs://b/tfds')
  assert done.returncode == 0, done.stderr
  lines = done.stdout.strip().splitlines()
  assert len(lines) == 4 * len(paper.runs())
  runs_lines = [l for l in lines if ' run ' in l]
  assert any('--config=configs/gpt3_1p3b_samoe.py:4' in l and 'gs://b/samoe-paper/1p3b_samoe_p4_seed0' in l
             for l in runs_lines)
  assert all('--config.train.grad_stats_every=1000' in l for l in runs_lines)
  with pytest.raises(ValueError, match='gs://'):
    paper.commands('samoe', 'z', '/local', 'gs://b/tfds', 'v4-128')


def test_run_report_says_what_the_pool_saves():
  """The per-run report (make demo's) names the standard MoE's stored parameters and the pool-size sweep."""
  from samoe_jax.analysis import run_report  # pylint: disable=g-import-not-at-top
  from samoe_jax.config.presets import tiny  # pylint: disable=g-import-not-at-top
  from samoe_jax.models.model import LanguageModel  # pylint: disable=g-import-not-at-top
  config = tiny('samoe')
  config.model.layer_plan = 'all'   # 4 MoE layers on a pool of 2
  summary = LanguageModel(config).param_summary()
  text = '\n'.join(run_report.sharing_lines(summary, config.to_dict()))
  assert f'stores {summary["total"]:,} parameters' in text
  assert f'stores {summary["materialized"]:,}, {summary["materialized"] / summary["total"]:.2f}x as many' in text
  assert text.count('\n| ') == 1 + 4   # header + P = 1..4
  assert run_report.sharing_lines({'num_moe_layers': 0}, {}) == []


def test_corpus_tokens_follow_the_runs_vocabulary(tmp_path):
  """The report's tokens-per-run line: the vocabulary's own counts (spNk.json, data/corpus_vocab.py), else the
  manifest's sp4k counts (splits.train.tokens), else nothing."""
  from samoe_jax.experiments.suite_report import corpus_train_tokens  # pylint: disable=g-import-not-at-top
  (tmp_path / 'manifest.json').write_text(json.dumps({'splits': {'train': {'tokens': 22_386_918}}}))
  (tmp_path / 'sp1k.json').write_text(json.dumps({'tokens': {'train': 33_907_964, 'validation': 880_494}}))
  assert corpus_train_tokens(str(tmp_path), str(tmp_path / 'sp1k.model')) == 33_907_964
  assert corpus_train_tokens(str(tmp_path), str(tmp_path / 'sp4k.model')) == 22_386_918
  assert corpus_train_tokens(str(tmp_path), str(tmp_path / 'sp2k.model')) is None
