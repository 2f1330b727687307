"""End to end: a trained run evaluated by `python -m samoe_jax.evaluate`, by the trainer's periodic task
evaluation, and by lm-evaluation-harness through the 'samoe' adapter: identical numbers for identical requests."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from config_files import write_tiny_config

os.environ['HF_DATASETS_OFFLINE'] = '1'
os.environ['HF_HUB_OFFLINE'] = '1'
os.environ['DISABLE_MULTIPROC'] = '1'

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / 'tests' / 'fixtures' / 'eval'
# One task of each kind: multiple choice, LAMBADA (greedy + perplexity), generation, partial evaluation.
TASKS = ('piqa', 'lambada_openai', 'triviaqa', 'winogrande')
STEPS = 8


def _env() -> dict[str, str]:
  return dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')


def _python(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=900)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A tiny SaMoE trained for 8 steps with checkpoints at 4 and 8, the trainer scoring piqa at both."""
  root = tmp_path_factory.mktemp('evaluate')
  config = write_tiny_config(root / 'config.py', {
      'train.steps': STEPS, 'train.warmup_steps': 2, 'train.checkpoint_every': 4, 'train.keep_checkpoints': 3,
      'train.eval_every': 4, 'model.max_len': 64, 'data.seq_len': 64, 'eval.tasks': 'piqa',
      'eval.data_dir': str(FIXTURES), 'eval.every': 4, 'eval.batch_size': 4})
  workdir = root / 'run'
  result = _python('-m', 'samoe_jax.train', f'--config={config}', f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-4000:]
  return workdir


def _results(workdir: pathlib.Path, step: int) -> dict:
  return json.loads((workdir / 'eval' / f'step_{step}' / 'results.json').read_text())


def test_trainer_scores_configured_tasks_periodically(run):
  records = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines() if line.strip()]
  tasks = {r['step']: r for r in records if r['kind'] == 'tasks'}
  assert sorted(tasks) == [4, STEPS]
  for step, record in tasks.items():
    assert 0.0 <= record['tasks/piqa/acc'] <= 1.0
    assert _results(run, step)['scores']['piqa']['acc'] == pytest.approx(record['tasks/piqa/acc'])
    assert _results(run, step)['commands'] == {'piqa': "samoe_jax.train periodic evaluation (eval.tasks='piqa')"}


@pytest.fixture(scope='module')
def evaluated(run, tmp_path_factory):
  text = tmp_path_factory.mktemp('ppl') / 'held_out.txt'
  text.write_text('To be, or not to be, that is the question:\nWhether tis nobler in the mind to suffer\n' * 3)
  result = _python('-m', 'samoe_jax.evaluate', f'--workdir={run}', f'--eval_data_dir={FIXTURES}',
                   f'--tasks={",".join(TASKS)}', '--checkpoint=all', f'--perplexity_files={text}',
                   '--validation_batches=config', '--bootstrap_iters=0', '--batch_size=4')
  assert result.returncode == 0, result.stderr[-4000:]
  return result


def test_cli_writes_tables_json_plots_and_tensorboard(run, evaluated):
  assert '| piqa | acc (%) |' in evaluated.stdout and f'step {STEPS}' in evaluated.stdout
  for step in (4, STEPS):
    scores = _results(run, step)['scores']
    assert set(TASKS) <= set(scores)
    assert 0.0 <= scores['winogrande']['acc'] <= 1.0 and 0.0 <= scores['triviaqa']['exact_match'] <= 1.0
    assert scores['lambada_openai']['perplexity'] > 1.0
    assert scores['ppl:held_out.txt']['byte_perplexity'] > 1.0
    validation = scores['ppl:shakespeare_tiny/validation']
    assert validation['perplexity'] == pytest.approx(2.718281828 ** validation['cross_entropy'], rel=1e-6)
    assert (run / 'eval' / f'step_{step}' / 'results.png').stat().st_size > 1000
    command = _results(run, step)['commands']['piqa']   # report.md names it (evaluation/report_table.py)
    assert command.startswith(f'python -m samoe_jax.evaluate --workdir={run} --eval_data_dir={FIXTURES} '
                              f'--tasks={",".join(TASKS)} --checkpoint=all') and '--bootstrap_iters=0' in command
  assert (run / 'eval' / 'metrics_vs_step.png').stat().st_size > 1000
  summary = json.loads((run / 'eval' / 'summary.json').read_text())
  assert set(summary) == {'4', str(STEPS)}
  events = list((run / 'tensorboard').glob('events.out.tfevents.*'))
  assert len(events) >= 2                                            # the trainer's and the evaluator's


def test_cli_console_is_short(evaluated):
  """Two checkpoints restored and scored: no orbax restore chatter, no CUDA probe, our lines with the short prefix
  (samoe_jax/console.py)."""
  lines = evaluated.stderr.splitlines()
  assert not [line for line in lines if 'orbax' in line or 'Restoring checkpoint' in line or 'cuInit' in line]
  ours = [line for line in lines if re.match(r'[IWE] \d\d:\d\d:\d\d ', line)]
  assert sum('piqa (3 docs, 0-shot): acc' in line for line in ours) == 2   # one per checkpoint
  assert max(map(len, ours)) <= 160, max(ours, key=len)


def test_validation_perplexity_equals_the_trainers(run, evaluated):
  records = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines() if line.strip()]
  trainer = {r['step']: r for r in records if r['kind'] == 'eval'}
  for step in (4, STEPS):     # the trainer validated on train.eval_batches = 2 batches too
    ours = _results(run, step)['scores']['ppl:shakespeare_tiny/validation']
    assert ours['cross_entropy'] == pytest.approx(trainer[step]['eval/cross_entropy'], rel=1e-5)


def _harness_task_dir(root: pathlib.Path) -> pathlib.Path:
  """Harness task files written by the shipped recipe (evaluation/lm_eval_offline.py): the harness's own YAML for
  each task under its own name, its dataset swapped for our fixture files."""
  from samoe_jax.evaluation import lm_eval_offline  # pylint: disable=g-import-not-at-top
  out = root / 'yamls'
  lm_eval_offline.write_task_files(str(FIXTURES), str(out), TASKS, cache_dir=str(root / 'hf_cache'))
  return out


def test_harness_and_evaluate_give_identical_numbers(run, evaluated, tmp_path):
  """lm_eval.simple_evaluate with the 'samoe' model on the same checkpoint and the same examples."""
  import lm_eval  # pylint: disable=g-import-not-at-top
  from lm_eval.tasks import TaskManager  # pylint: disable=g-import-not-at-top
  import samoe_jax.evaluation.harness  # pylint: disable=g-import-not-at-top,unused-import  # registers 'samoe'
  manager = TaskManager(include_path=str(_harness_task_dir(tmp_path)), include_defaults=False)
  out = lm_eval.simple_evaluate(model='samoe', model_args=f'workdir={run},checkpoint={STEPS},batch_size=4',
                                tasks=list(TASKS), task_manager=manager, bootstrap_iters=0)
  ours = _results(run, STEPS)['scores']
  compared = 0
  for name in TASKS:
    theirs = {k.split(',')[0]: v for k, v in out['results'][name].items() if ',' in k and 'stderr' not in k}
    for metric, value in theirs.items():
      assert ours[name][metric] == pytest.approx(value, rel=1e-6, abs=1e-9), (name, metric)
      compared += 1
  assert compared >= 6


def test_cli_errors_are_messages_not_tracebacks(run, tmp_path):
  cases = [
      ([f'--workdir={tmp_path}'], 'config.json does not exist'),
      ([f'--workdir={run}', '--tasks=piqa'], '--eval_data_dir'),
      ([f'--workdir={run}', f'--eval_data_dir={FIXTURES}', '--tasks=piqa2'], "unknown task(s) ['piqa2']"),
      ([f'--workdir={run}', f'--eval_data_dir={FIXTURES}', '--tasks=piqa', '--checkpoint=3'],
       'no checkpoint of step(s) [3]'),
      ([f'--workdir={run}', f'--eval_data_dir={tmp_path}', '--tasks=piqa'], 'piqa'),
      ([f'--workdir={run}', f'--eval_data_dir={FIXTURES}', '--tasks=piqa,arc_challenge', '--num_fewshot=500'],
       'evaluation data (2 problems):\n  piqa: 500 shots need 500 documents, but the few-shot pool'),
  ]
  for args, message in cases:
    result = _python('-m', 'samoe_jax.evaluate', *args)
    assert result.returncode == 1, (args, result.stderr[-2000:])
    assert message in result.stderr and 'Traceback' not in result.stderr, (args, result.stderr[-2000:])


def test_harness_command_line_with_the_samoe_model(run, evaluated, tmp_path):
  """The harness's own CLI (python -m samoe_jax.evaluation.harness run ...) with its --batch_size default; the
  shipped task files replace the built-in piqa (--include_path), as docs/evaluation.md documents."""
  yamls = _harness_task_dir(tmp_path)
  result = _python('-m', 'samoe_jax.evaluation.harness', 'run', '--model', 'samoe', '--model_args',
                   f'workdir={run},checkpoint={STEPS},batch_size=4', '--tasks', 'piqa', '--include_path',
                   str(yamls), '--output_path', str(tmp_path / 'out'))
  assert result.returncode == 0, result.stderr[-4000:]
  [path] = list((tmp_path / 'out').rglob('results_*.json'))
  written = json.loads(path.read_text())
  assert written['n-samples']['piqa']['effective'] == 3     # the fixture's documents, not the hub's piqa
  theirs = written['results']['piqa']
  ours = _results(run, STEPS)['scores']['piqa']
  assert theirs['acc,none'] == pytest.approx(ours['acc']) and theirs['acc_norm,none'] == pytest.approx(ours['acc_norm'])
