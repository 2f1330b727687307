"""After training: task fine-tuning (samoe_jax/finetune.py, evaluation/task_finetune.py) and compressed runs written by
`python -m samoe_jax.compress` that restore, evaluate, fine-tune and train. One tiny MoE run trained once."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samoe_jax.compress import methods, runs, stats, sweep
from samoe_jax.evaluation import task_finetune
from samoe_jax.data.vocabularies import get_vocabulary
from samoe_jax.evaluation.tasks import get_task
from samoe_jax.evaluation.tokenization import EvalTokenizer
from samoe_jax.models.model import EVAL, LanguageModel, token_cross_entropy
from samoe_jax.training import loop
from samoe_jax.training.finetune_config import finetune_config
from tests.config_files import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / 'tests' / 'fixtures' / 'eval'


def _python(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)


def piqa_data(**overrides):
  config = tiny_config({'model.max_len': 64, 'data.seq_len': 64, 'data.task': task_finetune.TASK,
                        'data.finetune_task': 'piqa', 'data.finetune_data_dir': str(FIXTURES), **overrides})
  return config


# --------------------------------------------------------------------------------------- fine-tuning examples
def test_examples_are_the_evaluators_gold_request_and_only_the_continuation_is_scored():
  task = get_task('piqa', str(FIXTURES))
  doc = task.docs('train')[0]
  context, continuation = task_finetune.formatted_example(task, doc)
  assert context == f'Question: {doc["goal"]}\nAnswer:'
  assert continuation == ' ' + [doc['sol1'], doc['sol2']][doc['label']]
  gold = task.build_requests(doc, task.eval_context(task.description, doc))[task.doc_to_target(doc)]
  assert (gold.context, gold.continuation) == (context, continuation)   # exactly what the evaluator scores
  tokenizer = EvalTokenizer(get_vocabulary('byte'))
  rows, weights, cut = task_finetune.example_rows(tokenizer, [(context, continuation)], 64)
  ctx_ids, cont_ids = tokenizer.split_context_continuation(context, continuation)
  full = [0] + ctx_ids + cont_ids
  assert cut == 0 and rows[0, :len(full)].tolist() == full and not rows[0, len(full):].any()
  scored = np.flatnonzero(weights[0])   # target t is row[t + 1]: exactly the continuation's ids
  assert scored.tolist() == list(range(len(ctx_ids), len(ctx_ids) + len(cont_ids)))
  assert rows[0, scored + 1].tolist() == cont_ids
  # the training loss is the mean cross-entropy of those targets only, by hand
  config = piqa_data()
  model = LanguageModel(config)
  params = model.init_params(jax.random.key(0))
  batch = {'decoder_input_tokens': jnp.asarray(rows[:, :-1]), 'decoder_target_tokens': jnp.asarray(rows[:, 1:]),
           'decoder_loss_weights': jnp.asarray(weights)}
  _, metrics = model.loss_fn(params, batch, None, EVAL)
  ce = token_cross_entropy(model.logits(params, batch['decoder_input_tokens']), batch['decoder_target_tokens'])
  np.testing.assert_allclose(metrics['cross_entropy'], np.mean(np.asarray(ce)[0, scored]), rtol=1e-5)
  long = task_finetune.example_rows(tokenizer, [('x' * 100, ' yes')], 16)
  assert long[2] == 1 and long[1][0].sum() == len(tokenizer.split_context_continuation('x' * 100, ' yes')[1])


def test_finetune_iterator_resumes_exactly_and_bad_tasks_are_named():
  from samoe_jax.data import pipeline
  config = piqa_data(**{'data.batch_size': 2})
  rows = task_finetune.train_rows(config.data)
  it = pipeline.make_train_iterator(config.data, examples=rows)
  first = [next(it) for _ in range(5)]   # 4 documents, batch 2: two batches per epoch
  again = pipeline.make_train_iterator(config.data, examples=rows)
  again.set_state(json.loads(json.dumps(pipeline.make_train_iterator(config.data, examples=rows).get_state())))
  for _ in range(2):
    next(again)
  state = again.get_state()
  resumed = pipeline.make_train_iterator(config.data, examples=rows)
  resumed.set_state(state)
  for want, got in zip(first[2:], [next(resumed) for _ in range(3)]):
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])
  assert state['corpus'].startswith('piqa:train:')
  evals = pipeline.make_eval_batches(config.data, 4, examples=task_finetune.eval_rows(config.data))
  assert len(evals) == 2 and not evals[-1]['decoder_loss_weights'][1].any()   # 3 validation docs, padded
  with pytest.raises(ValueError, match=r"data.finetune_task='lambada_openai'.*one of piqa"):
    task_finetune.get_finetune_task(piqa_data(**{'data.finetune_task': 'lambada_openai'}).data)
  with pytest.raises(ValueError, match=r"data.finetune_task='piqa'.*nowhere/piqa/train.jsonl does not exist"):
    task_finetune.load_split(piqa_data(**{'data.finetune_data_dir': '/nowhere'}).data, 'train')


# ------------------------------------------------------------------------------------- trained run and its use
@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A tiny standard MoE (block 1: 4 experts, top-2) trained 3 steps on the tiny corpus."""
  root = tmp_path_factory.mktemp('post_training')
  config = tiny_config({'pool.size': 1, 'pool.mixing': 'fixed', 'model.max_len': 64, 'data.seq_len': 64,
                        'train.steps': 3, 'train.checkpoint_every': 3, 'train.eval_every': 3})
  loop.train(config, str(root / 'source'))
  return root


def test_finetune_is_an_ordinary_run_that_evaluates_the_task_and_resumes(trained):
  source = str(trained / 'source')
  config = finetune_config(runs.run_config_checked(source), task='piqa', eval_data_dir=str(FIXTURES),
                           init_from=source, steps=2, batch_size=2, eval_every=1, eval_batches=1, eval_limit=2)
  assert (config.data.task, config.init.from_workdir, config.train.warmup_steps) == ('task_finetune', source, 2)
  workdir = str(trained / 'piqa_ft')
  final = loop.train(config, workdir)
  assert np.isfinite(final['eval/loss'])
  for step in (1, 2):   # the evaluator at the interval and at the end, on the first 2 documents
    results = json.loads(pathlib.Path(workdir, 'eval', f'step_{step}_0shot_limit2', 'results.json').read_text())
    assert set(results['scores']['piqa']) == {'acc', 'acc_norm'} and results['details']['piqa']['num_docs'] == 2
  assert loop.train(config, workdir)['already_finished']
  settings = sweep.FinetuneSettings(task='piqa', data_dir=str(FIXTURES), steps=2, batch_size=2, eval_limit=2)
  assert sweep.score(source, workdir, settings) == results['scores']['piqa']   # the finished run's final scores


def test_a_refused_finetune_writes_nothing(trained, tmp_path):
  """The task too small for one batch, and a --set that changes the model's shapes, are refused before the new
  workdir exists (README: nothing is written on bad input)."""
  source = str(trained / 'source')
  workdir = tmp_path / 'ft'
  result = _python('-m', 'samoe_jax.finetune', f'--workdir={workdir}', f'--init_from={source}', '--task=piqa',
                   f'--eval_data_dir={FIXTURES}', '--steps=1', '--batch_size=8')   # 4 training documents
  assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert ("data.finetune_task='piqa' has 4 training documents, fewer than one global batch (data.batch_size=8)"
          in result.stderr)
  assert not workdir.exists()
  config = finetune_config(runs.run_config_checked(source), task='piqa', eval_data_dir=str(FIXTURES),
                           init_from=source, steps=1, batch_size=2, overrides=['model.d_ff=96'])
  with pytest.raises(ValueError, match=r"init.mode='same': parameter .* has shape \(.*\) in the source but"):
    loop.train(config, str(workdir))
  assert not workdir.exists()


def test_bad_tasks_factors_and_workdirs_are_refused_before_any_work(trained, tmp_path):
  from samoe_jax.training.config_checks import validate_config
  source = str(trained / 'source')
  with pytest.raises(ValueError, match=r"data.finetune_task='lambada_openai': must be an evaluation task with a "
                     r'training split: one of piqa, boolq'):
    validate_config(finetune_config(runs.run_config_checked(source), task='lambada_openai',
                                    eval_data_dir=str(FIXTURES), init_from=source))
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'config.json').write_text((trained / 'source' / 'config.json').read_text())
  with pytest.raises(ValueError, match=r"--workdir='.*empty' holds no checkpoint: train it first"):
    runs.run_config_checked(str(tmp_path / 'empty'))
  result = _python('-m', 'samoe_jax.compress', 'uncurl', f'--workdir={trained / "source"}', '--task=piqa',
                   f'--eval_data_dir={FIXTURES}', '--factors=3', f'--out={trained / "u3"}')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert 'pruning factor 3 does not divide the expert count(s) [4]' in result.stderr
  assert not (trained / 'u3').exists()   # refused before any work


def test_compressed_run_restores_evaluates_and_trains(trained):
  source = runs.load_source(str(trained / 'source'))
  settings = sweep.FinetuneSettings(task='piqa', data_dir=str(FIXTURES), batch_size=4)
  batches = stats.task_batches(source.config, 'piqa', str(FIXTURES), 256, 4)
  layer_stats = stats.collect(source, batches)
  layers = methods.mcsmoe_layers(source, layer_stats, 2, 'sum')
  config = runs.compressed_config(source, layers)
  out = str(trained / 'merged')
  summary = runs.write_run(out, config, runs.compressed_params(source, layers, LanguageModel(config)),
                           {'method': 'mcsmoe'})
  assert summary['expert_pool'] * 2 == json.loads((trained / 'source' / 'param_summary.json').read_text())[
      'expert_pool']
  with pytest.raises(ValueError, match='already holds a checkpoint: nothing is overwritten'):
    runs.write_run(out, config, {}, {})
  scores = sweep.evaluate_latest(out, settings, str(trained / 'merged_scores'))
  assert 0.0 <= scores['acc'] <= 1.0
  restored = runs.load_source(str(trained / 'source'))   # the source run is untouched
  np.testing.assert_array_equal(restored.layers[0].w_in, source.layers[0].w_in)
  trained_config = sweep.run_config(out)
  trained_config.train.steps = 2
  final = loop.train(trained_config, out)
  assert final['resumed_from_step'] == 0 and final['step'] == 2 and np.isfinite(final['train/loss'])


def test_uncurl_command_writes_a_report(trained):
  out = trained / 'uncurl'
  result = _python('-m', 'samoe_jax.compress', 'uncurl', f'--workdir={trained / "source"}', '--task=piqa',
                   f'--eval_data_dir={FIXTURES}', '--factors=2', '--reduce=prune', '--router=map',
                   '--batch_size=4', '--train_scratch', f'--out={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((out / 'results.json').read_text())
  names = [r['name'] for r in report['rows']]
  assert names == ['uncompressed', 'r2_prune_map', 'from scratch: r2']
  scratch = report['rows'][2]   # E/2 experts trained from scratch with the source's recipe (3 steps)
  assert scratch['experts_per_layer'] == [2] and scratch['expert_params'] == report['rows'][1]['expert_params']
  assert json.loads((out / 'scratch_r2' / 'pretrained' / 'final_metrics.json').read_text())['step'] == 3
  assert report['rows'][1]['experts_per_layer'] == [2] and report['rows'][1]['expert_memory_reduction'] == 2.0
  assert 'threshold factor r* =' in report['conclusions'][0]
  assert (out / 'tradeoff.png').stat().st_size > 0 and (out / 'routing_stats' / 'usage.png').exists()
  assert (out / 'r2_prune_map' / 'compressed' / 'compression.json').exists()


def test_a_flag_of_another_command_is_refused():
  from samoe_jax.compress.__main__ import check_command_flags
  check_command_flags('mcsmoe', {'workdir', 'groups', 'compress', 'rank', 'task'})
  with pytest.raises(ValueError, match=r'--factors, --train_scratch: not a flag of `mcsmoe`'):
    check_command_flags('mcsmoe', {'workdir', 'factors', 'train_scratch'})
  with pytest.raises(ValueError, match=r'--compress: not a flag of `uncurl`'):
    check_command_flags('uncurl', {'compress', 'factors'})


def test_mcsmoe_compress_command_writes_merged_and_low_rank_runs(trained):
  out = trained / 'mcsmoe_lr'
  common = ['-m', 'samoe_jax.compress', 'mcsmoe', f'--workdir={trained / "source"}', '--task=piqa',
            f'--eval_data_dir={FIXTURES}', '--groups=2', '--batch_size=4', '--eval_limit=8', f'--out={out}']
  result = _python(*common, '--compress', '--rank=8', '--sparsity=0')
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((out / 'results.json').read_text())
  base, merged, compressed = report['rows']
  assert compressed['name'] == 'merged_g2_map_rank8_sparsity0' and compressed['sparse_density'] > 0.99
  # no pruning: U V + S is the merged model's function, so its score
  assert compressed['scores'] == merged['scores'] and base['experts_per_layer'] == [4]
  d, f, e = 32, 64, 2   # U, V and a dense S for 2 merged experts: more stored than merged, as accounting says
  assert compressed['expert_params'] == round(merged['expert_params'] + e * 2 * 8 * (d + f)
                                              - (1 - compressed['sparse_density']) * e * 2 * d * f)
  record = json.loads((out / compressed['name'] / 'compressed' / 'compression.json').read_text())
  assert (record['method'], record['rank'], record['sparsity']) == ('low_rank_sparse', 8, 0.0)
  assert 'merged + low-rank (rank 8)' in report['conclusions'][-1]


def test_next_line_task_is_readable_as_piqa_and_never_overwritten(tmp_path):
  from samoe_jax.data import continuation_task
  counts = continuation_task.write_task(str(tmp_path), corpus='shakespeare_tiny', train=20, validation=5,
                                        min_words=3)
  task = get_task('piqa', str(tmp_path))
  train, validation = task.docs('train'), task.docs('validation')
  assert (len(train), len(validation)) == (counts['train'], counts['validation']) and counts['train'] > 0
  assert {d['goal'] for d in train}.isdisjoint({d['goal'] for d in validation})   # different passages
  for doc in train:
    true = [doc['sol1'], doc['sol2']][doc['label']]
    assert true != [doc['sol1'], doc['sol2']][1 - doc['label']] and len(doc['goal'].split()) >= 3
  with pytest.raises(ValueError, match='exists: nothing is overwritten'):
    continuation_task.write_task(str(tmp_path), corpus='shakespeare_tiny')
