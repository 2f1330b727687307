"""Multiple-choice tasks, scored as lm-evaluation-harness 0.4.13 scores `output_type: multiple_choice`.

One log-likelihood request per choice, `(context, target_delimiter + choice)`; WinoGrande instead has one
context per choice and one shared continuation. From the answers:
  acc       1 if argmax_i ll_i is the gold index
  acc_norm  1 if argmax_i ll_i / len(choice_i) is the gold index, len in characters of the choice text WITHOUT
            the leading delimiter space (the scored continuation has it; the divisor does not)
  exact_match (WebQs, several golds) 1 if any gold choice's continuation is entirely the greedy argmax
argmax takes the first index on ties. Only the metrics listed in each harness YAML are reported.

Datasets (Hugging Face id / config; evaluated split; few-shot split) and templates, from the harness's YAMLs:
  piqa          baber/piqa; validation; train.        "Question: {goal}\\nAnswer:"  choices [sol1, sol2], gold label
  arc_easy      allenai/ai2_arc ARC-Easy; test; train. "Question: {question}\\nAnswer:"  choices choices.text,
  arc_challenge allenai/ai2_arc ARC-Challenge.         gold choices.label.index(answerKey)
  boolq         aps/super_glue boolq; validation; train. "{passage}\\nQuestion: {question}?\\nAnswer:"  ["no", "yes"]
  hellaswag     Rowan/hellaswag; validation; train.   preprocess(activity_label + ": " + ctx_a + " " +
                ctx_b.capitalize()), choices preprocess(endings), gold int(label)
  winogrande    allenai/winogrande winogrande_xl; validation; train. contexts sentence[:i] + option_j (i = index of
                "_"), continuation " " + sentence[i+1:].strip(), gold {"1": 0, "2": 1}[answer]
  race          EleutherAI/race high; test; test.     "Article: {article}\\n\\n" + earlier questions with answers
                + last question; choices its four options (field `problems` is a Python-literal string)
  storycloze    LSDSem/story_cloze 2016; test; validation. the four input sentences joined by " ",
                choices [sentence_quiz1, sentence_quiz2], gold answer_right_ending - 1
  openbookqa    allenai/openbookqa main; test; train.  question_stem, choices choices.text,
                gold choices.label.index(answerKey.lstrip())
  copa          aps/super_glue copa; validation; train. premise.strip()[:-1] + " because"/" therefore",
                choices " " + choice with a lower-case first letter (so the continuation starts with two spaces)
  webqs         stanfordnlp/web_questions; test; train. "Question: {question}\\nAnswer:", choices the sorted answers
                without any that extend an earlier kept one, every choice gold; metric exact_match
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from samoe_jax.evaluation.requests import LoglikelihoodRequest
from samoe_jax.evaluation.tasks import metrics
from samoe_jax.evaluation.tasks import readers
from samoe_jax.evaluation.tasks.base import Answer, Doc, Task

STR, INT, STR_LIST = readers.STR, readers.INT, readers.STR_LIST
ACC = {'acc': 'mean'}
ACC_NORM = {'acc': 'mean', 'acc_norm': 'mean'}


def template_int(value: Any) -> int | str:
  """A target rendered through the harness's Jinja template: an int when its text is all digits, else the text."""
  text = str(value)
  return int(text) if text.isdigit() else text


def index_of(labels: Sequence[str], key: str, doc: Doc) -> int:
  if key not in labels:
    raise ValueError(f'answer key {key!r} is not one of the choice labels {list(labels)} in {doc}')
  return list(labels).index(key)


class MultipleChoiceTask(Task):
  """Scores choices by log-likelihood; subclasses give the templates."""

  output_type = 'multiple_choice'
  metric_aggregations = ACC
  higher_is_better = {'acc': True, 'acc_norm': True, 'exact_match': True}

  def gold(self, doc: Doc) -> Any:
    return self.doc_to_target(doc)

  def target_problem(self, doc: Doc) -> str | None:
    """A gold index outside the choices, or a gold text that is none of them, would be counted as a miss (the
    harness maps it to -100); here it is an error naming the row."""
    try:
      choices, gold = self.doc_to_choice(doc), self.gold(doc)
    except ValueError as err:   # e.g. an answer key that is none of the choice labels
      return str(err).split(' in {')[0]
    for g in gold if isinstance(gold, list) else [gold]:
      if isinstance(g, str) and g not in choices:
        return f'the gold answer {g!r} is none of the {len(choices)} choices {choices}'
      if not isinstance(g, str) and not 0 <= g < len(choices):
        return f'the gold label {g} is outside the {len(choices)} choices (allowed: 0..{len(choices) - 1})'
    return None

  def build_requests(self, doc: Doc, context: str | list[str]) -> list[LoglikelihoodRequest]:
    if isinstance(context, list):  # multiple inputs: one context per choice, one continuation
      continuation = self.target_delimiter + self.doc_to_target(doc)
      return [LoglikelihoodRequest(c, continuation) for c in context]
    return [LoglikelihoodRequest(context, self.target_delimiter + c) for c in self.doc_to_choice(doc)]

  def process_results(self, doc: Doc, answers: Sequence[Answer]) -> dict[str, float]:
    choices = self.doc_to_choice(doc)
    if len(answers) != len(choices):
      raise ValueError(f'task {self.name!r}: {len(answers)} answers for {len(choices)} choices of {doc}')
    lls = np.array([float(a[0]) for a in answers], dtype=np.float64)
    greedy = [bool(a[1]) for a in answers]
    lengths = np.array([float(len(c)) for c in choices])
    with np.errstate(divide='ignore', invalid='ignore'):  # an empty choice divides by 0, as in the harness
      pred, pred_norm = metrics.argmax(lls), metrics.argmax(lls / lengths)
    gold = self.gold(doc)
    if isinstance(gold, list):  # several golds: any of them counts
      gold = [g if g < len(choices) else -100 for g in gold]
      acc, acc_norm = float(pred in gold), float(pred_norm in gold)
      exact = float(any(greedy[g] if g != -100 else False for g in gold))
    else:
      if isinstance(gold, str):
        gold = choices.index(gold) if gold in choices else -100
      elif gold >= len(choices):
        gold = -100
      acc, acc_norm = float(pred == gold), float(pred_norm == gold)
      exact = float(greedy[gold]) if gold != -100 else 0.0
    values = {'acc': acc, 'acc_norm': acc_norm, 'exact_match': exact}
    return {name: values[name] for name in self.metric_aggregations}


# ---------------------------------------------------------------------------------------------- question + choices


class Piqa(MultipleChoiceTask):
  name, hf_dataset = 'piqa', 'baber/piqa'
  eval_split, fewshot_split, exclude_eval_doc_from_shots = 'validation', 'train', True
  schema = {'goal': STR, 'sol1': STR, 'sol2': STR, 'label': INT}
  metric_aggregations = ACC_NORM

  def doc_to_text(self, doc: Doc) -> str:
    return f'Question: {doc["goal"]}\nAnswer:'

  def doc_to_target(self, doc: Doc) -> int:
    return doc['label']

  def doc_to_choice(self, doc: Doc) -> list[str]:
    return [doc['sol1'], doc['sol2']]


class ArcEasy(MultipleChoiceTask):
  name, hf_dataset, hf_config = 'arc_easy', 'allenai/ai2_arc', 'ARC-Easy'
  eval_split, fewshot_split, exclude_eval_doc_from_shots = 'test', 'train', False
  schema = {'question': STR, 'choices.text': STR_LIST, 'choices.label': STR_LIST, 'answerKey': STR}
  metric_aggregations = ACC_NORM

  def doc_to_text(self, doc: Doc) -> str:
    return f'Question: {doc["question"]}\nAnswer:'

  def doc_to_target(self, doc: Doc) -> int:
    return index_of(doc['choices']['label'], doc['answerKey'], doc)

  def doc_to_choice(self, doc: Doc) -> list[str]:
    return list(doc['choices']['text'])


class ArcChallenge(ArcEasy):
  name, hf_config = 'arc_challenge', 'ARC-Challenge'


class BoolQ(MultipleChoiceTask):
  name, hf_dataset, hf_config = 'boolq', 'aps/super_glue', 'boolq'
  eval_split, fewshot_split, exclude_eval_doc_from_shots = 'validation', 'train', True
  schema = {'passage': STR, 'question': STR, 'label': INT}

  def doc_to_text(self, doc: Doc) -> str:
    return f'{doc["passage"]}\nQuestion: {doc["question"]}?\nAnswer:'

  def doc_to_target(self, doc: Doc) -> int:
    return doc['label']

  def doc_to_choice(self, doc: Doc) -> list[str]:
    return ['no', 'yes']


class OpenBookQA(MultipleChoiceTask):
  name, hf_dataset, hf_config = 'openbookqa', 'allenai/openbookqa', 'main'
  eval_split, fewshot_split, exclude_eval_doc_from_shots = 'test', 'train', False
  schema = {'question_stem': STR, 'choices.text': STR_LIST, 'choices.label': STR_LIST, 'answerKey': STR}
  metric_aggregations = ACC_NORM

  def doc_to_text(self, doc: Doc) -> str:
    return doc['question_stem']

  def doc_to_target(self, doc: Doc) -> int:
    return index_of(doc['choices']['label'], doc['answerKey'].lstrip(), doc)

  def doc_to_choice(self, doc: Doc) -> list[str]:
    return list(doc['choices']['text'])


class StoryCloze(MultipleChoiceTask):
  name, hf_dataset, hf_config = 'storycloze', 'LSDSem/story_cloze', '2016'
  eval_split, fewshot_split, exclude_eval_doc_from_shots = 'test', 'validation', False
  schema = {**{f'input_sentence_{i}': STR for i in range(1, 5)},
            'sentence_quiz1': STR, 'sentence_quiz2': STR, 'answer_right_ending': INT}

  def how_to_get(self, split: str) -> str:
    return ('StoryCloze 2016 is not downloadable: request it from the authors '
            f'(https://cs.rochester.edu/nlp/rocstories/) and write its {split!r} CSV file there as JSON lines '
            '(see samoe_jax/evaluation/tasks/registry.py).')

  def doc_to_text(self, doc: Doc) -> str:
    return ' '.join(doc[f'input_sentence_{i}'] for i in range(1, 5))

  def doc_to_target(self, doc: Doc) -> int | str:
    return template_int(doc['answer_right_ending'] - 1)

  def doc_to_choice(self, doc: Doc) -> list[str]:
    return [doc['sentence_quiz1'], doc['sentence_quiz2']]


# ---------------------------------------------------------------------------------------------- preprocessed


def hellaswag_preprocess(text: str) -> str:
  """The harness's HellaSwag cleanup: strip, " [title]" -> ". ", drop [...] tags, one pass of "  " -> " "."""
  text = text.strip().replace(' [title]', '. ')
  return re.sub(r'\[.*?\]', '', text).replace('  ', ' ')


class HellaSwag(MultipleChoiceTask):
  name, hf_dataset = 'hellaswag', 'Rowan/hellaswag'
  eval_split, fewshot_split, exclude_eval_doc_from_shots = 'validation', 'train', True
  schema = {'activity_label': STR, 'ctx_a': STR, 'ctx_b': STR, 'endings': STR_LIST, 'label': STR}
  metric_aggregations = ACC_NORM

  def process_doc(self, doc: Doc) -> Doc:
    """The row plus `query`, `choices` and `gold` (the harness's process_docs keeps the original fields)."""
    if not doc['label'].strip().lstrip('+-').isdigit():
      raise ValueError(f'hellaswag: label {doc["label"]!r} is not an integer (unlabelled split?) in {doc}')
    context = doc['ctx_a'] + ' ' + doc['ctx_b'].capitalize()
    return {**doc, 'query': hellaswag_preprocess(doc['activity_label'] + ': ' + context),
            'choices': [hellaswag_preprocess(e) for e in doc['endings']], 'gold': int(doc['label'])}

  def doc_to_text(self, doc: Doc) -> str:
    return doc['query']

  def doc_to_target(self, doc: Doc) -> int | str:
    return template_int(doc['label'])

  def doc_to_choice(self, doc: Doc) -> list[str]:
    return list(doc['choices'])


class WinoGrande(MultipleChoiceTask):
  """Partial evaluation: the option fills the blank in the context; the rest of the sentence is scored."""

  name, hf_dataset, hf_config = 'winogrande', 'allenai/winogrande', 'winogrande_xl'
  eval_split, fewshot_split, exclude_eval_doc_from_shots = 'validation', 'train', True
  schema = {'sentence': STR, 'option1': STR, 'option2': STR, 'answer': STR}

  @staticmethod
  def blank(doc: Doc) -> int:
    if '_' not in doc['sentence']:
      raise ValueError(f'winogrande: sentence {doc["sentence"]!r} has no blank "_"')
    return doc['sentence'].index('_')

  def doc_to_text(self, doc: Doc) -> int:
    """The gold option index (the harness's doc_to_text for this task)."""
    if doc['answer'] not in ('1', '2'):
      raise ValueError(f'winogrande: answer {doc["answer"]!r} must be "1" or "2" in {doc}')
    return int(doc['answer']) - 1

  def doc_to_target(self, doc: Doc) -> str:
    return doc['sentence'][self.blank(doc) + 1:].strip()

  def doc_to_choice(self, doc: Doc) -> list[str]:
    start = doc['sentence'][:self.blank(doc)]
    return [start + doc['option1'], start + doc['option2']]

  def gold(self, doc: Doc) -> int:
    return self.doc_to_text(doc)

  def shot_text(self, doc: Doc) -> str:
    return self.doc_to_choice(doc)[self.doc_to_text(doc)]

  def shot_answer(self, doc: Doc) -> str | None:
    return self.doc_to_target(doc) or None

  def eval_context(self, prefix: str, doc: Doc) -> list[str]:
    return [prefix + c for c in self.doc_to_choice(doc)]


class Race(MultipleChoiceTask):
  name, hf_dataset, hf_config = 'race', 'EleutherAI/race', 'high'
  eval_split, fewshot_split, exclude_eval_doc_from_shots = 'test', 'test', False
  schema = {'article': STR, 'problems': STR}
  LETTERS = {'A': 0, 'B': 1, 'C': 2, 'D': 3}

  def problems(self, doc: Doc) -> list[dict[str, Any]]:
    """The parsed `problems` field: a non-empty list of {question, options (4+), answer in A-D}."""
    try:
      problems = ast.literal_eval(doc['problems'])
    except (ValueError, SyntaxError) as e:
      raise ValueError(f'race: field "problems" is not a Python literal ({e}) in {doc}') from None
    ok = isinstance(problems, list) and problems and all(
        isinstance(p, dict) and isinstance(p.get('question'), str) and p.get('answer') in self.LETTERS
        and isinstance(p.get('options'), list) and len(p['options']) >= 4 for p in problems)
    if not ok:
      raise ValueError('race: field "problems" must be a list of {"question", "options" (4), "answer" in A-D}; '
                       f'got {doc["problems"]!r}')
    return problems

  def answer_option(self, problem: dict[str, Any]) -> str:
    return problem['options'][self.LETTERS[problem['answer']]]

  def doc_to_text(self, doc: Doc) -> str:
    problems = self.problems(doc)
    text = 'Article: ' + doc['article'] + '\n\n'
    for problem in problems[:-1]:
      if problem['question'][-6:] == '  _  .':  # cloze question: fill in the answer
        text += problem['question'][:-5] + self.answer_option(problem) + '\n'
      else:
        text += 'Question: ' + problem['question'] + '\n' + 'Answer: ' + self.answer_option(problem) + '\n'
    return text + problems[-1]['question']

  def doc_to_target(self, doc: Doc) -> int:
    return self.LETTERS[self.problems(doc)[-1]['answer']]

  def doc_to_choice(self, doc: Doc) -> list[str]:
    return list(self.problems(doc)[-1]['options'][:4])


def copa_choice(choice: str) -> str:
  """The harness's convert_choice: first letter lower-cased."""
  return choice[0].lower() + choice[1:]


class Copa(MultipleChoiceTask):
  name, hf_dataset, hf_config = 'copa', 'aps/super_glue', 'copa'
  eval_split, fewshot_split, exclude_eval_doc_from_shots = 'validation', 'train', True
  schema = {'premise': STR, 'choice1': STR, 'choice2': STR, 'question': STR, 'label': INT}
  CONNECTORS = {'cause': 'because', 'effect': 'therefore'}

  def doc_to_text(self, doc: Doc) -> str:
    if doc['question'] not in self.CONNECTORS:
      raise ValueError(f'copa: question {doc["question"]!r} must be one of {sorted(self.CONNECTORS)} in {doc}')
    return doc['premise'].strip()[:-1] + f' {self.CONNECTORS[doc["question"]]}'

  def doc_to_target(self, doc: Doc) -> str:
    return ' ' + copa_choice(doc['choice1'] if doc['label'] == 0 else doc['choice2'])

  def doc_to_choice(self, doc: Doc) -> list[str]:
    return [' ' + copa_choice(doc['choice1']), ' ' + copa_choice(doc['choice2'])]


def webqs_choices(answers: Sequence[str]) -> list[str]:
  """The sorted answers, dropping each that starts with the last kept one (the harness's _remove_prefixes)."""
  if not answers:
    raise ValueError('webqs: a question without answers')
  ordered = sorted(answers)
  kept = [ordered[0]]
  for answer in ordered[1:]:
    if not answer.startswith(kept[-1]):
      kept.append(answer)
  return kept


class WebQs(MultipleChoiceTask):
  name, hf_dataset = 'webqs', 'stanfordnlp/web_questions'
  eval_split, fewshot_split, exclude_eval_doc_from_shots = 'test', 'train', False
  schema = {'question': STR, 'answers': STR_LIST}
  metric_aggregations = {'exact_match': 'mean'}

  def doc_to_text(self, doc: Doc) -> str:
    return f'Question: {doc["question"]}\nAnswer:'

  def doc_to_target(self, doc: Doc) -> list[int]:
    return list(range(len(webqs_choices(doc['answers']))))

  def doc_to_choice(self, doc: Doc) -> list[str]:
    return webqs_choices(doc['answers'])

  def shot_answer(self, doc: Doc) -> str:
    raise ValueError('webqs has no few-shot form in lm-evaluation-harness 0.4.13: its target is a list of choice '
                     'indices, which the harness cannot write after a shot (it fails with "Answer is not a '
                     'string"). Evaluate webqs with num_fewshot=0.')
