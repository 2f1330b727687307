"""The task contract: documents from local JSONL, prompts, requests, per-document metrics, aggregations.

A task mirrors one lm-evaluation-harness 0.4.13 task (its YAML and utils): the same text, target, choices,
delimiters and metrics, so that for the same document and the same few-shot seed both build the same requests
and turn the same answers into the same numbers.

Splits, as the harness picks them from its YAML:
  eval_split     the split evaluated: `test_split` when the YAML has one, else `validation_split`.
  fewshot_split  where shots come from: `training_split` if any, else `validation_split`, else `test_split`.
  exclude_eval_doc_from_shots
                 the harness passes the evaluated document to its sampler (which then draws k + 1 shots and drops
                 that document) only when its YAML has no `test_split`; tasks evaluated on a test split draw k shots
                 with no exclusion, so for LAMBADA and RACE (shots from the test split itself) a document can be
                 among its own shots. Reproduced as is.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from samoe_jax.evaluation.requests import GenerationRequest, LoglikelihoodRequest
from samoe_jax.evaluation.tasks import metrics
from samoe_jax.evaluation.tasks import readers

OutputType = Literal['multiple_choice', 'loglikelihood', 'generate_until']
Request = LoglikelihoodRequest | GenerationRequest
# What a backend answers per request: (log-likelihood, is greedy) for log-likelihood requests, text for generation.
Answer = tuple[float, bool] | str
Doc = dict[str, Any]


class Task(abc.ABC):
  """One evaluation task over the files `<data_dir>/<name>/<split>.jsonl`."""

  name: ClassVar[str]
  output_type: ClassVar[OutputType]
  hf_dataset: ClassVar[str]  # the Hugging Face hub dataset id the harness loads
  hf_config: ClassVar[str | None] = None
  eval_split: ClassVar[str]
  fewshot_split: ClassVar[str]
  exclude_eval_doc_from_shots: ClassVar[bool]
  schema: ClassVar[readers.Schema]  # fields read from each row (dotted paths) and their kinds
  metric_aggregations: ClassVar[Mapping[str, str]]  # metric -> aggregation name in metrics.AGGREGATIONS
  higher_is_better: ClassVar[Mapping[str, bool]]
  target_delimiter: ClassVar[str] = ' '
  fewshot_delimiter: ClassVar[str] = '\n\n'
  description: ClassVar[str] = ''  # prepended verbatim to every prompt (the harness adds no delimiter after it)

  def __init__(self, data_dir: str):
    self.data_dir = data_dir
    self._docs: dict[str, list[Doc]] = {}
    self._lines: dict[str, list[int]] = {}
    self._processed: dict[str, list[Doc]] = {}

  def __repr__(self) -> str:
    return f'{type(self).__name__}(name={self.name!r}, data_dir={self.data_dir!r})'

  # ------------------------------------------------------------------------------------------------ documents
  @property
  def splits(self) -> tuple[str, ...]:
    """The splits this task reads: the evaluated one, then the few-shot one (when different)."""
    return tuple(dict.fromkeys((self.eval_split, self.fewshot_split)))

  def path(self, split: str) -> str:
    return os.path.join(self.data_dir, self.name, f'{split}.jsonl')

  def how_to_get(self, split: str) -> str:
    config = f', config {self.hf_config!r}' if self.hf_config else ''
    return (f'Download it with `python -m samoe_jax.evaluation.fetch_data --out={self.data_dir} --tasks={self.name}`, '
            f'or export split {split!r} of the Hugging Face dataset {self.hf_dataset!r}{config} there as JSON lines '
            f'(see samoe_jax/evaluation/tasks/registry.py).')

  def raw_docs(self, split: str) -> list[Doc]:
    """The rows of `split` as stored (checked against the schema), cached."""
    if split not in self._docs:
      path = self.path(split)
      if not os.path.isfile(path):
        raise FileNotFoundError(f'evaluation data file {path!r} does not exist. {self.how_to_get(split)}')
      rows = readers.read_jsonl_with_lines(path, self.schema)
      self._docs[split], self._lines[split] = [d for d, _ in rows], [n for _, n in rows]
    return self._docs[split]

  def docs(self, split: str | None = None) -> list[Doc]:
    """The documents of `split` (default: the evaluated split) after the task's `process_doc`, in file order.

    Cached per split (a new list each call, the same document objects): treat the documents as read-only.
    """
    split = self.eval_split if split is None else split
    if split not in self._processed:
      processed = [self.process_doc(doc) for doc in self.raw_docs(split)]
      for doc, line in zip(processed, self._lines[split]):
        problem = self.target_problem(doc)
        if problem:
          raise ValueError(f'{self.path(split)}:{line}: {problem} (task {self.name!r})')
      self._processed[split] = processed
    return list(self._processed[split])

  def process_doc(self, doc: Doc) -> Doc:
    """The harness's `process_docs` applied to one row (identity unless the task preprocesses)."""
    return doc

  def target_problem(self, doc: Doc) -> str | None:
    """Why a row's gold answer cannot be scored (for example a label outside the choices), or None."""
    del doc
    return None

  # ------------------------------------------------------------------------------------------------- prompting
  @abc.abstractmethod
  def doc_to_text(self, doc: Doc) -> Any:
    """The question part of the prompt (WinoGrande: the gold index, as in the harness)."""

  @abc.abstractmethod
  def doc_to_target(self, doc: Doc) -> Any:
    """The gold answer: a choice index, a continuation string, or a list (several golds)."""

  def doc_to_choice(self, doc: Doc) -> list[str] | None:
    """The answer choices, or None for tasks without choices."""
    del doc
    return None

  def shot_text(self, doc: Doc) -> str:
    """The question part of `doc` when it is a few-shot example."""
    return self.doc_to_text(doc)

  def shot_answer(self, doc: Doc) -> str | None:
    """The answer written after a few-shot example, or None when the target is empty (the shot is then its text
    alone). As the harness: choices[target], a string target as is, or the first of a list of string targets."""
    target = self.doc_to_target(doc)
    if target is None or target == '':
      return None
    choices = self.doc_to_choice(doc)
    if isinstance(target, int) and choices:
      return choices[target]
    answer = (target[0] if target else None) if isinstance(target, list) else target
    if not isinstance(answer, str):
      raise ValueError(f'task {self.name!r}: a few-shot example needs a string answer, got {target!r} for {doc}')
    return answer

  def eval_context(self, prefix: str, doc: Doc) -> str | list[str]:
    """The prompt of `doc` after `prefix` (description and shots); a list for multiple-input tasks."""
    return prefix + self.doc_to_text(doc)

  # -------------------------------------------------------------------------------------------------- scoring
  @abc.abstractmethod
  def build_requests(self, doc: Doc, context: str | list[str]) -> list[Request]:
    """The requests answering `doc` given its prompt `context` (from fewshot.fewshot_context)."""

  @abc.abstractmethod
  def process_results(self, doc: Doc, answers: Sequence[Answer]) -> dict[str, float]:
    """Per-document metric values from the backend's answers to build_requests(doc, ...), in order."""

  def aggregation(self) -> dict[str, metrics.Aggregation]:
    """Metric -> function of the per-document values."""
    return {name: metrics.AGGREGATIONS[agg] for name, agg in self.metric_aggregations.items()}
