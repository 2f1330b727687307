"""Evaluation plumbing without a model: outputs, checkpoint selection, settings, perplexity arithmetic, adapter."""

from __future__ import annotations

import json
import math
import os

import pytest

from samoe_jax.evaluation import checkpoints, outputs, perplexity
from samoe_jax.evaluation.harness import generation_request
from samoe_jax.evaluation.requests import GenerationRequest
from samoe_jax.evaluation.runner import DEEPSPEED_MOE_TASKS, EvalSettings, parse_seeds, parse_tasks

SCORES = {'piqa': {'acc': 0.625, 'acc_norm': 0.5}, 'lambada_openai': {'acc': 0.25, 'perplexity': 41.5}}


def test_markdown_table_uses_percent_for_accuracies():
  table = outputs.markdown_table(SCORES, 'step 7')
  assert '| piqa | acc (%) | 62.50 |' in table
  assert '| lambada_openai | perplexity | 41.5 |' in table
  assert table.startswith('## step 7')


def test_step_results_and_summary_files(tmp_path):
  workdir = str(tmp_path)
  out = outputs.write_step_results(workdir, 100, SCORES, {'piqa': {'num_docs': 8}})
  outputs.write_step_results(workdir, 200, {'piqa': {'acc': 0.75, 'acc_norm': 0.5}}, {})
  record = json.loads(open(os.path.join(out, 'results.json')).read())
  assert record['step'] == 100 and record['scores'] == SCORES and record['details']['piqa']['num_docs'] == 8
  assert os.path.getsize(os.path.join(out, 'results.png')) > 1000
  summary = outputs.write_summary(workdir)
  assert os.path.getsize(os.path.join(workdir, 'eval', 'metrics_vs_step.png')) > 1000
  by_step = json.loads(open(os.path.join(workdir, 'eval', 'summary.json')).read())
  assert by_step['200']['piqa']['acc'] == 0.75 and set(by_step) == {'100', '200'}
  assert 'step 100' in open(summary).read()


def test_other_settings_never_replace_earlier_results(tmp_path):
  """The same step evaluated 0-shot, then 5-shot with two seeds, then 0-shot on another task: three results, none
  replaced; the summary keeps them all and its tables name the shots and seeds."""
  workdir = str(tmp_path)
  five_shot = {'num_fewshot': 5, 'fewshot_seeds': [1234, 1235], 'limit': None}
  zero = outputs.write_step_results(workdir, 100, {'piqa': {'acc': 0.5}}, {'piqa': {'num_docs': 8}},
                                    {'num_fewshot': 0, 'fewshot_seeds': [1234], 'limit': None})
  few = outputs.write_step_results(workdir, 100, {'piqa': {'acc': 0.75}}, {}, five_shot)
  outputs.write_step_results(workdir, 100, {'boolq': {'acc': 0.25}}, {}, None)
  assert os.path.basename(zero) == 'step_100' and os.path.basename(few) == 'step_100_5shot_seeds1234-1235'
  zero_record = json.loads(open(os.path.join(zero, 'results.json')).read())
  assert zero_record['scores'] == {'piqa': {'acc': 0.5}, 'boolq': {'acc': 0.25}}
  assert zero_record['details']['piqa']['num_docs'] == 8
  few_record = json.loads(open(os.path.join(few, 'results.json')).read())
  assert few_record['scores'] == {'piqa': {'acc': 0.75}} and few_record['setting'] == five_shot
  assert few_record['setting_label'] == '5-shot, seeds 1234, 1235'
  assert '## Evaluation of step 100 (5-shot, seeds 1234, 1235)' in open(os.path.join(few, 'results.md')).read()
  summary_md = open(outputs.write_summary(workdir)).read()
  assert '## step 100 (0-shot)' in summary_md and '## step 100 (5-shot, seeds 1234, 1235)' in summary_md
  summary = json.loads(open(os.path.join(workdir, 'eval', 'summary.json')).read())
  assert summary == {'100': {'piqa': {'acc': 0.5}, 'boolq': {'acc': 0.25},
                             'piqa@5shot_seeds1234-1235': {'acc': 0.75}}}
  assert outputs.setting_key({'num_fewshot': 0, 'limit': 10}) == '0shot_limit10'


def test_no_plot_without_accuracy_metrics(tmp_path):
  assert not outputs.plot_bars({'ppl:x.txt': {'word_perplexity': 3.0}}, str(tmp_path / 'a.png'), 't')
  assert not (tmp_path / 'a.png').exists()


def test_tensorboard_scalars_drop_missing_values():
  scalars = outputs.tensorboard_scalars({'a': {'acc': 0.5, 'x': float('nan'), 'y': None}})
  assert scalars == {'tasks/a/acc': 0.5}


def _fake_checkpoint(workdir, step):
  os.makedirs(os.path.join(workdir, 'checkpoints', str(step), 'state'))


def test_select_steps(tmp_path):
  workdir = str(tmp_path)
  with pytest.raises(ValueError, match='holds no checkpoint'):
    checkpoints.select_steps(workdir, 'latest')
  for step in (500, 100, 1000):
    _fake_checkpoint(workdir, step)
  os.makedirs(os.path.join(workdir, 'checkpoints', '1500.orbax-checkpoint-tmp-1'))   # unfinished save
  assert checkpoints.select_steps(workdir, 'latest') == [1000]
  assert checkpoints.select_steps(workdir, 'all') == [100, 500, 1000]
  assert checkpoints.select_steps(workdir, '500,100') == [500, 100]
  with pytest.raises(ValueError, match=r'no checkpoint of step\(s\) \[700\].*available: \[100, 500, 1000\]'):
    checkpoints.select_steps(workdir, '700')
  with pytest.raises(ValueError, match='use latest, all, or step numbers'):
    checkpoints.select_steps(workdir, 'best')


def test_run_config_missing_is_clear(tmp_path):
  with pytest.raises(ValueError, match='config.json does not exist'):
    checkpoints.run_config(str(tmp_path))


def test_settings_parsing_and_checks():
  assert parse_tasks('deepspeed') == DEEPSPEED_MOE_TASKS
  assert parse_tasks(' piqa, boolq ,') == ('piqa', 'boolq')
  assert parse_seeds('3x') == (1234, 1235, 1236)
  assert parse_seeds('1234,5') == (1234, 5)
  with pytest.raises(ValueError, match="few-shot seeds 'a,b'"):
    parse_seeds('a,b')
  with pytest.raises(ValueError, match=r"unknown task\(s\) \['piqa2'\]"):
    EvalSettings(tasks=('piqa2',), data_dir='x').check()
  with pytest.raises(ValueError, match='--eval_data_dir'):
    EvalSettings(tasks=('piqa',)).check()
  with pytest.raises(ValueError, match='num_fewshot=-1'):
    EvalSettings(tasks=(), num_fewshot=-1).check()
  assert EvalSettings(fewshot_seeds=(1, 2)).seeds() == (1,)                     # zero-shot: one seed
  assert EvalSettings(num_fewshot=2, fewshot_seeds=(1, 2)).seeds() == (1, 2)


class RollingStub:
  """ll of a text = -(number of characters) / 2: hand-computable perplexities."""

  def loglikelihood_rolling(self, requests):
    return [-len(r.text) / 2 for r in requests]


class CharTokenizer:

  def encode(self, text):
    return list(range(len(text)))


def test_text_perplexity_by_hand(tmp_path):
  path = tmp_path / 'docs.jsonl'
  path.write_text(json.dumps({'text': 'ab cd'}) + '\n\n' + json.dumps({'text': 'éfg'}) + '\n')
  got = perplexity.text_perplexity(RollingStub(), CharTokenizer(), [str(path)])['ppl:docs.jsonl']
  total = 5 / 2 + 3 / 2                       # -sum ll over the two documents
  assert got['token_perplexity'] == pytest.approx(math.exp(total / 8))        # 5 + 3 characters as tokens
  assert got['word_perplexity'] == pytest.approx(math.exp(total / 3))         # 'ab', 'cd', 'éfg'
  assert got['byte_perplexity'] == pytest.approx(math.exp(total / 9))         # 'é' is two UTF-8 bytes
  assert got['bits_per_byte'] == pytest.approx(total / 9 / math.log(2))


def test_perplexity_file_errors_name_file_and_line(tmp_path):
  with pytest.raises(ValueError, match='does not exist'):
    perplexity.read_documents(str(tmp_path / 'missing.txt'))
  bad = tmp_path / 'bad.jsonl'
  bad.write_text('{"text": "ok"}\n{"txt": "no"}\n')
  with pytest.raises(ValueError, match=r'bad.jsonl:2: a JSON object with a string field "text"'):
    perplexity.read_documents(str(bad))
  bad.write_text('{"text": "ok"}\nnot json\n')
  with pytest.raises(ValueError, match=r'bad.jsonl:2: not valid JSON'):
    perplexity.read_documents(str(bad))
  plain = tmp_path / 'a.txt'
  plain.write_text('one\n\ntwo\n')
  assert perplexity.read_documents(str(plain)) == ['one\n\ntwo\n']


def test_harness_generation_arguments():
  assert generation_request('Q:', {'until': ['\n', '.'], 'max_gen_toks': 5}) == GenerationRequest('Q:', ('\n', '.'), 5)
  assert generation_request('Q:', {'until': '\n', 'do_sample': False}) == GenerationRequest('Q:', ('\n',), 256)
  with pytest.raises(ValueError, match='only greedy generation'):
    generation_request('Q:', {'do_sample': True, 'temperature': 0.7})
