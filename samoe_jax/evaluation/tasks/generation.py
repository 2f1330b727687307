"""Generation task TriviaQA, scored as lm-evaluation-harness 0.4.13's `triviaqa` (`generate_until`).

Data: Hugging Face `mandarjoshi/trivia_qa`, config `rc.nocontext`; evaluated split `validation`, shots from
`train` (the document itself left out). Fields read: `question`, `answer.aliases`.
Prompt "Question: {question}?\\nAnswer:"; a shot's answer is the first alias. Greedy generation stops at the first
of "\\n", ".", "," (at most 256 tokens, the harness's default max_gen_toks). The output is stripped of
surrounding whitespace; exact_match is 1 when, lower-cased and with ASCII punctuation removed, it equals any
alias treated the same way.

WebQs is multiple-choice in the harness 0.4.13 (every answer scored by log-likelihood, exact_match = some answer
is entirely greedy): see multiple_choice.WebQs.
"""

from __future__ import annotations

from collections.abc import Sequence

from samoe_jax.evaluation.requests import GenerationRequest
from samoe_jax.evaluation.tasks import metrics
from samoe_jax.evaluation.tasks import readers
from samoe_jax.evaluation.tasks.base import Answer, Doc, Task


def exact_match_any(prediction: str, references: Sequence[str]) -> float:
  """1.0 when the normalised prediction equals any normalised reference (metrics.normalize_answer)."""
  predicted = metrics.normalize_answer(prediction)
  return float(any(metrics.normalize_answer(r) == predicted for r in references))


class TriviaQA(Task):
  name, output_type = 'triviaqa', 'generate_until'
  hf_dataset, hf_config = 'mandarjoshi/trivia_qa', 'rc.nocontext'
  eval_split, fewshot_split, exclude_eval_doc_from_shots = 'validation', 'train', True
  schema = {'question': readers.STR, 'answer.aliases': readers.STR_LIST}
  metric_aggregations = {'exact_match': 'mean'}
  higher_is_better = {'exact_match': True}
  until = ('\n', '.', ',')
  max_gen_toks = 256

  def doc_to_text(self, doc: Doc) -> str:
    return f'Question: {doc["question"]}?\nAnswer:'

  def doc_to_target(self, doc: Doc) -> list[str]:
    return list(doc['answer']['aliases'])

  def build_requests(self, doc: Doc, context: str | list[str]) -> list[GenerationRequest]:
    return [GenerationRequest(context, self.until, self.max_gen_toks)]

  def process_results(self, doc: Doc, answers: Sequence[Answer]) -> dict[str, float]:
    if len(answers) != 1 or not isinstance(answers[0], str):
      raise ValueError(f'triviaqa: expected 1 generated string per document, got {answers!r} for {doc}')
    return {'exact_match': exact_match_any(answers[0].strip(), self.doc_to_target(doc))}
