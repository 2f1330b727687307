"""LAMBADA (OpenAI version), scored as lm-evaluation-harness 0.4.13's `lambada_openai`.

Data: Hugging Face `EleutherAI/lambada_openai`, config `default`, split `test` (field `text`); shots, if any, come
from the same test split without leaving the document out (as in the harness).
Context = the text without its last space-separated word (`' '.join(text.split(' ')[:-1])`); target = ' ' + that
word. One log-likelihood request per document. Metrics:
  perplexity  exp(-mean over documents of the target's summed log-likelihood)
  acc         fraction of documents whose every target token is the greedy argmax
As a few-shot example a document reads context + ' ' + target, i.e. two spaces before the last word (harness).
"""

from __future__ import annotations

from collections.abc import Sequence

from samoe_jax.evaluation.requests import LoglikelihoodRequest
from samoe_jax.evaluation.tasks import readers
from samoe_jax.evaluation.tasks.base import Answer, Doc, Task


class LambadaOpenAI(Task):
  name, output_type = 'lambada_openai', 'loglikelihood'
  hf_dataset, hf_config = 'EleutherAI/lambada_openai', 'default'
  eval_split, fewshot_split, exclude_eval_doc_from_shots = 'test', 'test', False
  schema = {'text': readers.STR}
  metric_aggregations = {'perplexity': 'perplexity', 'acc': 'mean'}
  higher_is_better = {'perplexity': False, 'acc': True}

  def doc_to_text(self, doc: Doc) -> str:
    return ' '.join(doc['text'].split(' ')[:-1])

  def doc_to_target(self, doc: Doc) -> str:
    return ' ' + doc['text'].split(' ')[-1]

  def build_requests(self, doc: Doc, context: str | list[str]) -> list[LoglikelihoodRequest]:
    return [LoglikelihoodRequest(context, self.doc_to_target(doc))]

  def process_results(self, doc: Doc, answers: Sequence[Answer]) -> dict[str, float]:
    if len(answers) != 1:
      raise ValueError(f'lambada_openai: expected 1 answer per document, got {len(answers)} for {doc}')
    ll, is_greedy = answers[0]
    return {'perplexity': float(ll), 'acc': float(bool(is_greedy))}
