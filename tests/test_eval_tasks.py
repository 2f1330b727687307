"""Tests of samoe_jax.evaluation.tasks: prompts, requests and scores equal lm-evaluation-harness 0.4.13's.

The harness's own tasks are built from its own YAMLs (`include:` of the installed files) with the dataset swapped
for our fixtures (`dataset_path: json`), offline. We compare, per task, the requests both build for every fixture
document (zero-shot and 2-shot for two seeds), the scores of lm_eval.simple_evaluate and of evaluate_task with the
same stub model, and hand-computed scores under a stub whose log-likelihood is minus the continuation's length.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zlib

import pytest

from samoe_jax.evaluation.requests import GenerationRequest, LoglikelihoodRequest
from samoe_jax.evaluation.tasks import TASK_NAMES, ShotSampler, evaluate_task, get_task
from samoe_jax.evaluation.tasks import metrics
from samoe_jax.evaluation.tasks.task_scoring import build_prompts

# The harness (imported lazily, with `datasets`) runs offline; its bootstrap runs in-process (no fork of a
# process holding TensorFlow or JAX).
os.environ['HF_DATASETS_OFFLINE'] = '1'
os.environ['HF_HUB_OFFLINE'] = '1'
os.environ['DISABLE_MULTIPROC'] = '1'

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'eval')
# Tasks whose harness sampler leaves the evaluated document out; their "self" variants draw shots from the
# evaluated split itself (train.jsonl = the evaluated file), so that the leaving out really happens.
SELF_POOL = ('piqa', 'hellaswag', 'winogrande', 'triviaqa')
# Generated answers of the stub, by TriviaQA question (the backend has already cut at "\n", "." and ",").
GENERATIONS = {'Which band recorded Abbey Road': ' the Beatles', 'What is the capital of France': ' Lyon',
               'Who wrote Hamlet': ' SHAKESPEARE!'}


def generation(context: str) -> str:
  question = context.rsplit('Question: ', 1)[1][:-len('?\nAnswer:')]
  return GENERATIONS.get(question, ' no idea')


def length_ll(context: str, continuation: str, context_weight: float = 0.0) -> tuple[float, bool]:
  """The hand-computable stub: ll = -len(continuation) - context_weight * len(context); greedy iff len even."""
  return -float(len(continuation)) - context_weight * len(context), len(continuation) % 2 == 0


def scrambled_ll(context: str, continuation: str) -> tuple[float, bool]:
  """A stub that depends on the whole request, to catch any answer reaching the wrong request."""
  h = zlib.crc32(f'{context}|{continuation}'.encode())
  return -(len(continuation) + (h % 1000) / 100.0), h % 3 == 0


class StubBackend:
  """samoe Backend with known answers; records every call as (method, number of requests)."""

  def __init__(self, ll=length_ll):
    self.ll, self.calls = ll, []

  def loglikelihood(self, requests):
    self.calls.append(('loglikelihood', len(requests)))
    return [self.ll(r.context, r.continuation) for r in requests]

  def loglikelihood_rolling(self, requests):
    raise AssertionError('no task here scores whole texts')

  def generate_until(self, requests):
    self.calls.append(('generate_until', len(requests)))
    return [generation(r.context) for r in requests]


# ---------------------------------------------------------------------------------------------- the harness


@pytest.fixture(scope='module')
def harness(tmp_path_factory):
  """(TaskManager, {our name: harness task}, {name: harness self-pool task}) over the fixtures, offline."""
  from lm_eval.tasks import TaskManager  # pylint: disable=g-import-not-at-top
  from samoe_jax.evaluation import lm_eval_offline  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('harness')
  yamls, cache = root / 'yamls', str(root / 'hf_cache')
  yamls.mkdir()

  def write(task_name, name, files):   # the shipped recipe (evaluation/lm_eval_offline.py), renamed
    config = lm_eval_offline.task_config(name, files, task_name=task_name, cache_dir=cache)
    lm_eval_offline.write_yaml(config, str(yamls / f'{task_name}.yaml'))

  for name in TASK_NAMES:
    write(f'fx_{name}', name, lm_eval_offline.local_files(FIXTURES, name))
  for name in SELF_POOL:
    task = get_task(name, FIXTURES)
    write(f'fxself_{name}', name, {task.eval_split: task.path(task.eval_split), 'train': task.path(task.eval_split)})
  manager = TaskManager(include_path=str(yamls), include_defaults=False)
  names = [f'fx_{n}' for n in TASK_NAMES] + [f'fxself_{n}' for n in SELF_POOL]
  built = manager.load(names)['tasks']
  return (manager, {n: built[f'fx_{n}'] for n in TASK_NAMES}, {n: built[f'fxself_{n}'] for n in SELF_POOL})


@pytest.fixture(scope='module')
def self_pool_dir(tmp_path_factory):
  """A data dir where each SELF_POOL task draws its shots from its evaluated file (train.jsonl = a copy)."""
  root = tmp_path_factory.mktemp('self_pool')
  for name in SELF_POOL:
    task = get_task(name, FIXTURES)
    (root / name).mkdir()
    shutil.copy(task.path(task.eval_split), root / name / f'{task.eval_split}.jsonl')
    shutil.copy(task.path(task.eval_split), root / name / 'train.jsonl')
  return str(root)


def harness_requests(task, num_fewshot, seed):
  """Per document, the harness's request arguments, built as its evaluator builds them."""
  task.set_config(key='num_fewshot', value=num_fewshot)
  task.set_fewshot_seed(seed=seed)
  task.build_all_requests()
  per_doc = {}
  for inst in sorted(task.instances, key=lambda i: (i.doc_id, i.idx)):
    args = inst.arguments
    if inst.request_type == 'generate_until':
      context, kwargs = args
      assert kwargs['do_sample'] is False and 'max_gen_toks' not in kwargs  # so the model default 256 applies
      args = (context, tuple(kwargs['until']), 256)
    per_doc.setdefault(inst.doc_id, []).append(tuple(args))
  return [per_doc[i] for i in sorted(per_doc)]


def our_requests(task, num_fewshot, seed):
  prompts = build_prompts(task, task.docs(), num_fewshot, seed)
  as_tuple = {LoglikelihoodRequest: lambda r: (r.context, r.continuation),
              GenerationRequest: lambda r: (r.context, r.until, r.max_gen_toks)}
  return [[as_tuple[type(r)](r) for r in task.build_requests(d, p)] for d, p in zip(task.docs(), prompts)]


@pytest.mark.parametrize('num_fewshot,seed', [(0, 1234), (2, 1234), (2, 5)])
@pytest.mark.parametrize('name', TASK_NAMES)
def test_requests_equal_the_harness(harness, name, num_fewshot, seed):
  task = get_task(name, FIXTURES)
  if name == 'webqs' and num_fewshot:  # the harness cannot write a webqs shot (its target is a list of indices)
    with pytest.raises(AssertionError, match='Answer is not a string'):
      harness_requests(harness[1][name], num_fewshot, seed)
    with pytest.raises(ValueError, match='num_fewshot=0'):
      our_requests(task, num_fewshot, seed)
    return
  ours = our_requests(task, num_fewshot, seed)
  assert ours == harness_requests(harness[1][name], num_fewshot, seed)
  assert len(ours) == len(task.docs())
  if num_fewshot:  # the shots are really there, before the zero-shot prompt
    zero_shot = our_requests(task, 0, seed)
    assert all(r[0] != r0[0] and r[0].endswith(r0[0]) for doc, doc0 in zip(ours, zero_shot) for r, r0 in zip(doc, doc0))


@pytest.mark.parametrize('name', SELF_POOL)
def test_shots_from_the_evaluated_split_equal_the_harness_and_leave_the_doc_out(harness, self_pool_dir, name):
  task = get_task(name, self_pool_dir)
  for seed in range(6):
    ours = our_requests(task, 2, seed)
    assert ours == harness_requests(harness[2][name], 2, seed)
    for doc, requests in zip(task.docs(), ours):
      shot = task.shot_text(doc) + task.target_delimiter + task.shot_answer(doc) + task.fewshot_delimiter
      assert all(shot not in context for context, *_ in requests)


def test_test_split_tasks_can_draw_the_doc_itself_like_the_harness():
  """LAMBADA's shots come from its test split with no leaving out (harness 0.4.13): some document meets itself."""
  task = get_task('lambada_openai', FIXTURES)
  own = lambda doc: task.doc_to_text(doc) + ' ' + task.doc_to_target(doc) + '\n\n'
  found = any(own(doc) in prompt for seed in range(20)
              for doc, prompt in zip(task.docs(), build_prompts(task, task.docs(), 2, seed)))
  assert found


# ---------------------------------------------------------------------------------------------- scores


def harness_scores(manager, name, num_fewshot, seed, ll):
  import lm_eval  # pylint: disable=g-import-not-at-top
  from lm_eval.api.model import LM  # pylint: disable=g-import-not-at-top

  class HarnessStub(LM):

    def loglikelihood(self, requests):
      return [ll(*r.args) for r in requests]

    def loglikelihood_rolling(self, requests):
      raise AssertionError('unused')

    def generate_until(self, requests):
      return [generation(r.args[0]) for r in requests]

  out = lm_eval.simple_evaluate(model=HarnessStub(), tasks=[f'fx_{name}'], task_manager=manager,
                                num_fewshot=num_fewshot, fewshot_random_seed=seed, bootstrap_iters=1000)
  return {key.split(',')[0]: value for key, value in out['results'][f'fx_{name}'].items() if ',' in key}


SCORED_RUNS = [(n, k, s) for n in TASK_NAMES for k, s in [(0, 1234), (2, 1234), (2, 77)]
               if not (n == 'webqs' and k)]  # webqs: zero-shot only


@pytest.mark.parametrize('name,num_fewshot,seed', SCORED_RUNS)
def test_scores_equal_the_harness(harness, name, num_fewshot, seed):
  theirs = harness_scores(harness[0], name, num_fewshot, seed, scrambled_ll)
  ours = evaluate_task(get_task(name, FIXTURES), StubBackend(scrambled_ll), num_fewshot=num_fewshot,
                       fewshot_seeds=(seed,), bootstrap_iters=1000)
  assert set(theirs) == set(ours['metrics']) | {f'{m}_stderr' for m in ours['metrics']}
  for metric, value in ours['metrics'].items():
    assert value == pytest.approx(theirs[metric], rel=1e-12, abs=0), metric
    assert ours['stderr'][metric] == pytest.approx(theirs[f'{metric}_stderr'], rel=1e-12, abs=0), metric


# Hand computations under length_ll: each continuation is " " + choice, so ll_i = -(len_i + 1). acc picks the
# shortest choice (the first on ties); acc_norm = argmax -(len_i + 1) / len_i = argmax -(1 + 1 / len_i) picks the
# longest. The context does not enter, so the 2-shot scores equal the 0-shot ones.
HAND = {
    # lls -4 (" mat"), -8 (" brother"), -5 (" home"), -4 (" yes"): mean -21/4 = -5.25, perplexity e^5.25;
    # greedy iff even length: 1, 1, 0, 1.
    'lambada_openai': {'perplexity': 190.56626845863, 'acc': 3 / 4},
    # choice lengths (gold): [14, 32] (0), [26, 21] (0), [25, 14] (1); shortest 0, 1, 1 -> 1, 0, 1; longest 1, 0, 0
    'piqa': {'acc': 2 / 3, 'acc_norm': 1 / 3},
    # "no" (2) is always shortest -> 0; golds 1, 0, 1
    'boolq': {'acc': 1 / 3},
    # [9, 10, 8, 8] gold 0 -> 2 wrong; [6, 5, 5, 7] gold 1 -> 1 right; [5, 4, 4, 3] gold 1 -> 3 wrong
    'race': {'acc': 1 / 3},
    # " the Beatles" -> "the beatles" = alias; " Lyon" no; " SHAKESPEARE!" -> "shakespeare" = alias
    'triviaqa': {'exact_match': 2 / 3},
    # choices [English, Jamaican] ("Jamaican English", "Jamaican Creole ..." dropped): " English" has 8 chars,
    # greedy -> 1; [Mars]: 5 chars -> 0; [Japan]: 6 chars -> 1
    'webqs': {'exact_match': 2 / 3},
    # [37, 29, 25, 49] gold 3: acc 2 wrong, norm 3 right; [44, 31, 24, 28] gold 0: 2 wrong, 0 right;
    # [9, 22, 20, 38] gold 0: 0 right, 3 wrong
    'hellaswag': {'acc': 1 / 3, 'acc_norm': 2 / 3},
    # one continuation per document, so every ll ties and the first option wins; golds 0, 1, 1
    'winogrande': {'acc': 1 / 3},
    # [7, 6, 7, 4] gold 0: acc 3 wrong, norm 0 right; [8, 5, 13] gold 1: 1 right, 2 wrong;
    # [3, 6, 5, 6] gold 2: 0 wrong, 1 (first longest) wrong
    'arc_easy': {'acc': 1 / 3, 'acc_norm': 1 / 3},
    # [14, 11, 13, 12] gold 1: 1 right, 0 wrong; [18, 21, 15] gold 0: 2 wrong, 1 wrong;
    # [5, 6, 10, 10, 4] gold 2: 4 wrong, 2 right (first of the tied longest)
    'arc_challenge': {'acc': 1 / 3, 'acc_norm': 1 / 3},
    # [22, 15] gold 0 -> 1 wrong; [21, 34] gold 1 -> 0 wrong; [17, 19] gold 0 -> 0 right
    'storycloze': {'acc': 1 / 3},
    # [4, 12, 5, 5] gold 1: 0 wrong, 1 right; [5, 10, 8, 11] gold 0: 0 right, 3 wrong;
    # [6, 7, 13, 5] gold 2: 3 wrong, 2 right
    'openbookqa': {'acc': 1 / 3, 'acc_norm': 2 / 3},
    # choices keep their leading space: [30, 29] gold 1 right; [20, 19] gold 0 wrong; [29, 23] gold 1 right
    'copa': {'acc': 2 / 3},
}


@pytest.mark.parametrize('name,num_fewshot', [(n, k) for n in TASK_NAMES for k in (0, 2) if not (n == 'webqs' and k)])
def test_scores_by_hand(name, num_fewshot):
  backend = StubBackend()
  result = evaluate_task(get_task(name, FIXTURES), backend, num_fewshot=num_fewshot, fewshot_seeds=(1234, 99))
  assert result['metrics'] == pytest.approx(HAND[name], rel=1e-12)
  assert result['num_docs'] == (4 if name == 'lambada_openai' else 3)
  kind = 'generate_until' if name == 'triviaqa' else 'loglikelihood'
  assert [c[0] for c in backend.calls] == [kind]  # one batched call for the whole task, both seeds


def test_winogrande_scores_each_context_by_hand():
  """ll = -len(continuation) - len(context): the shorter filled-in option wins. Options (gold): trophy/suitcase
  (1) -> trophy right; Sarah/Jo (2) -> Jo right; cup/floor (2) -> cup wrong: acc 2/3."""
  backend = StubBackend(lambda c, x: length_ll(c, x, context_weight=1.0))
  for k in (0, 2):
    assert evaluate_task(get_task('winogrande', FIXTURES), backend, num_fewshot=k)['metrics'] == {'acc': 2 / 3}


def test_stderr_and_seed_averaging_by_hand():
  task = get_task('piqa', FIXTURES)
  result = evaluate_task(task, StubBackend(), fewshot_seeds=(1, 2, 3))
  # acc per doc 1, 0, 1: mean 2/3, sample variance ((1/3)^2 * 2 + (2/3)^2) / 2 = 1/3, stderr sqrt(1/3) / sqrt(3)
  assert result['stderr']['acc'] == pytest.approx(1 / 3)
  assert [s['seed'] for s in result['per_seed']] == [1, 2, 3] and result['seed_stddev']['acc'] == 0.0
  # LAMBADA acc 1, 1, 0, 1: variance (3 * 0.25^2 + 0.75^2) / 3 = 0.25, stderr 0.5 / 2
  assert evaluate_task(get_task('lambada_openai', FIXTURES), StubBackend())['stderr']['acc'] == pytest.approx(0.25)
  # limit: the first two piqa documents, acc 1, 0
  limited = evaluate_task(task, StubBackend(), limit=2, bootstrap_iters=0)
  assert limited['num_docs'] == 2 and limited['metrics']['acc'] == 0.5 and limited['stderr']['acc'] is None
  # several seeds with shots: the reported value is the mean of the per-seed values
  shots = evaluate_task(task, StubBackend(scrambled_ll), num_fewshot=2, fewshot_seeds=(1, 2, 3))
  assert shots['metrics']['acc'] == pytest.approx(sum(s['metrics']['acc'] for s in shots['per_seed']) / 3)


def test_zero_shot_requests_are_shared_by_all_seeds():
  backend = StubBackend()
  evaluate_task(get_task('arc_easy', FIXTURES), backend, fewshot_seeds=tuple(range(25)))
  assert backend.calls == [('loglikelihood', 4 + 3 + 4)]  # each choice of each document once


def test_perplexity_bootstrap_equals_the_harness():
  from lm_eval.api import metrics as harness_metrics  # pylint: disable=g-import-not-at-top
  lls = [-float(i % 7) - 0.5 * i for i in range(23)]
  for iters in (50, 2000):
    assert metrics.perplexity_stderr(lls, iters) == harness_metrics.bootstrap_stderr(
        harness_metrics.perplexity, lls, iters)
  assert metrics.mean_stderr(lls) == harness_metrics.mean_stderr(lls)


# ---------------------------------------------------------------------------------------------- sampling


def test_shot_sampler_equals_the_harness_sampler():
  from lm_eval.api.samplers import ContextSampler  # pylint: disable=g-import-not-at-top
  pool = [{'i': i} for i in range(7)] + [{'i': 3}, {'i': 3}]  # copies of the evaluated doc force the resampling
  for seed in range(30):
    ours, theirs = ShotSampler(pool, seed), ContextSampler(list(pool), rnd=seed)
    for k, eval_doc in [(3, {'i': 3}), (2, None), (4, {'i': 5}), (3, {'i': 3})]:
      drawn = ours.sample(k, eval_doc=eval_doc)
      assert drawn == list(theirs.sample(n=k, eval_doc=eval_doc))
      assert len(drawn) == k and eval_doc not in drawn


def test_shot_sampling_is_deterministic_per_seed():
  task = get_task('openbookqa', FIXTURES)
  docs = task.docs()
  assert build_prompts(task, docs, 2, 1234) == build_prompts(task, docs, 2, 1234)
  assert build_prompts(task, docs, 2, 1234) != build_prompts(task, docs, 2, 1235)
  assert build_prompts(task, docs, 0, 1) == build_prompts(task, docs, 0, 2) == [task.doc_to_text(d) for d in docs]
  with pytest.raises(ValueError, match='few-shot pool of 4'):
    build_prompts(task, docs, 5, 0)


# ---------------------------------------------------------------------------------------------- data errors


def test_missing_file_names_path_and_source(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"piqa/validation\.jsonl.*'baber/piqa'"):
    get_task('piqa', str(tmp_path)).docs()
  (tmp_path / 'arc_challenge').mkdir()
  shutil.copy(os.path.join(FIXTURES, 'arc_challenge', 'test.jsonl'), tmp_path / 'arc_challenge')
  task = get_task('arc_challenge', str(tmp_path))
  assert evaluate_task(task, StubBackend())['num_docs'] == 3  # zero-shot needs no few-shot file
  with pytest.raises(FileNotFoundError, match=r"arc_challenge/train\.jsonl.*'train'.*'allenai/ai2_arc', config 'ARC-C"):
    evaluate_task(task, StubBackend(), num_fewshot=1)
  with pytest.raises(ValueError, match='unknown evaluation task .*arc_easy'):
    get_task('arc', FIXTURES)


@pytest.mark.parametrize('line,message', [
    ('{"goal": "g", "sol1": "a", "sol2": "b"', r'validation\.jsonl:2: not valid JSON'),
    ('{"goal": "g", "sol1": "a", "label": 0}', r"validation\.jsonl:2: missing field 'sol2'"),
    ('{"goal": "g", "sol1": "a", "sol2": "b", "label": "0"}', r"validation\.jsonl:2: field 'label' is \"0\".*integer"),
    ('["goal"]', r'validation\.jsonl:2: expected a JSON object'),
])
def test_malformed_line_names_file_line_and_field(tmp_path, line, message):
  (tmp_path / 'piqa').mkdir()
  good = json.dumps({'goal': 'g', 'sol1': 'a', 'sol2': 'b', 'label': 0})
  (tmp_path / 'piqa' / 'validation.jsonl').write_text(f'{good}\n{line}\n')
  with pytest.raises(ValueError, match=message):
    get_task('piqa', str(tmp_path)).docs()


def test_nested_field_and_empty_file_errors(tmp_path):
  (tmp_path / 'arc_easy').mkdir()
  row = {'question': 'q', 'choices': {'text': ['a', 'b']}, 'answerKey': 'A'}
  (tmp_path / 'arc_easy' / 'test.jsonl').write_text('\n' + json.dumps(row) + '\n')
  with pytest.raises(ValueError, match=r"test\.jsonl:2: missing field 'choices\.label'"):
    get_task('arc_easy', str(tmp_path)).docs()
  (tmp_path / 'arc_easy' / 'test.jsonl').write_text('\n')
  with pytest.raises(ValueError, match='holds no rows'):
    get_task('arc_easy', str(tmp_path)).docs()


def test_gold_outside_the_choices_names_file_and_line(tmp_path):
  """The harness counts such a row as a miss (gold -100), which silently lowers accuracy: here it is an error."""
  (tmp_path / 'piqa').mkdir()
  good = json.dumps({'goal': 'g', 'sol1': 'a', 'sol2': 'b', 'label': 1})
  bad = json.dumps({'goal': 'g', 'sol1': 'a', 'sol2': 'b', 'label': 5})
  (tmp_path / 'piqa' / 'validation.jsonl').write_text(f'{good}\n\n{bad}\n')
  with pytest.raises(ValueError, match=r"validation\.jsonl:3: the gold label 5 is outside the 2 choices "
                                       r"\(allowed: 0\.\.1\) \(task 'piqa'\)"):
    get_task('piqa', str(tmp_path)).docs()
  (tmp_path / 'arc_easy').mkdir()
  row = {'question': 'q', 'choices': {'text': ['a', 'b'], 'label': ['A', 'B']}, 'answerKey': 'E'}
  (tmp_path / 'arc_easy' / 'test.jsonl').write_text(json.dumps(row) + '\n')
  with pytest.raises(ValueError, match=r"test\.jsonl:1: answer key 'E' is not one of the choice labels \['A', 'B'\]"):
    get_task('arc_easy', str(tmp_path)).docs()
  for name in TASK_NAMES:   # every shipped fixture row has a scorable gold answer
    if os.path.isdir(os.path.join(FIXTURES, name)):
      task = get_task(name, FIXTURES)
      for split in task.splits:
        if os.path.isfile(task.path(split)):
          task.docs(split)


def test_bytes_that_are_not_utf8_name_file_line_and_offset(tmp_path):
  (tmp_path / 'piqa').mkdir()
  good = json.dumps({'goal': 'g', 'sol1': 'a', 'sol2': 'b', 'label': 1}).encode()
  (tmp_path / 'piqa' / 'validation.jsonl').write_bytes(good + b'\n' + good[:10] + b'\xff\xfe' + good[10:] + b'\n')
  with pytest.raises(ValueError, match=rf"validation\.jsonl:2: not UTF-8 text \(byte offset {len(good) + 11}"):
    get_task('piqa', str(tmp_path)).docs()


def test_perplexity_files_empty_or_not_utf8_are_errors(tmp_path):
  from samoe_jax.evaluation.perplexity import read_documents  # pylint: disable=g-import-not-at-top
  (tmp_path / 'empty.txt').write_text('  \n\n')
  with pytest.raises(ValueError, match=r"empty\.txt' holds no text: there is nothing to score"):
    read_documents(str(tmp_path / 'empty.txt'))
  (tmp_path / 'empty.jsonl').write_text('{"text": ""}\n')
  with pytest.raises(ValueError, match='holds no text'):
    read_documents(str(tmp_path / 'empty.jsonl'))
  (tmp_path / 'latin1.txt').write_bytes('line one\ncaf\u00e9\n'.encode('latin-1'))
  with pytest.raises(ValueError, match=r'latin1\.txt:2: not UTF-8 text \(byte offset 12'):
    read_documents(str(tmp_path / 'latin1.txt'))
  (tmp_path / 'ok.jsonl').write_text('{"text": "a b"}\n\n{"text": "c"}\n')
  assert read_documents(str(tmp_path / 'ok.jsonl')) == ['a b', 'c']


# ---------------------------------------------------------------------------------------------- seqio


def test_seqio_tasks_yield_the_plain_readers_docs():
  from samoe_jax.evaluation.tasks import seqio_tasks  # pylint: disable=g-import-not-at-top
  for name in TASK_NAMES:
    task = get_task(name, FIXTURES)
    seqio_task = seqio_tasks.register_seqio_task(name, FIXTURES)
    assert seqio_tasks.register_seqio_task(name, FIXTURES) is seqio_task  # idempotent
    for split in task.splits:
      docs = seqio_tasks.seqio_docs(name, FIXTURES, split)
      assert docs == [seqio_tasks.schema_fields(task, d) for d in task.raw_docs(split)], (name, split)
      # the fields yielded are all the task needs: same prompts and requests as from the full rows
      processed = [task.process_doc(d) for d in docs]
      assert ([task.build_requests(d, build_prompts(task, [d], 0, 0)[0]) for d in processed]
              == [task.build_requests(d, build_prompts(task, [d], 0, 0)[0]) for d in task.docs(split)])


def test_plain_task_path_does_not_import_seqio():
  code = ('import sys; from samoe_jax.evaluation.tasks import get_task, evaluate_task; '
          f'get_task("piqa", {FIXTURES!r}).docs(); '
          'assert not {"seqio", "tensorflow", "jax"} & set(sys.modules), sorted(sys.modules)')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, '-c', code], check=True, cwd=root, env={**os.environ, 'PYTHONPATH': root})
