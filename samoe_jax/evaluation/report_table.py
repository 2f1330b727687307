"""The evaluation part of a run's report.md: every WORKDIR/eval/step_*/results.json as a table of value +- standard
error and document count, under the file and the command that produced it (samoe_jax/analysis/run_report.py calls
this)."""

from __future__ import annotations

import os
from typing import Any

from samoe_jax.evaluation import outputs
from samoe_jax.evaluation.uncertainty import MIN_DOCS, Score, scores_with_errors


def _row(s: Score) -> str:
  if s.stderr is None:
    error = '—'
  else:
    error = '± ' + outputs.fmt(s.metric, s.stderr) + (' (binomial)' if s.stderr_kind == 'binomial' else '')
  n = '?' if s.num_docs is None else f'{s.num_docs}' + (' (too few to read)' if s.too_few else '')
  return f'| {s.task} | {s.metric}{outputs.unit(s.metric)} | {outputs.fmt(s.metric, s.value)} | {error} | {n} |'


def _commands(record: dict[str, Any]) -> list[str]:
  """'- from `command` (tasks a, b)' per distinct command; records written before commands were kept say so."""
  by_command: dict[str, list[str]] = {}
  for task in sorted(record['scores']):
    by_command.setdefault(record.get('commands', {}).get(task, ''), []).append(task)
  return [f'- from `{c}` ({", ".join(tasks)})' if c else f'- command not recorded ({", ".join(tasks)})'
          for c, tasks in by_command.items()]


def evaluation_lines(workdir: str) -> list[str]:
  """Markdown: '## Evaluation' with one table per results.json; [] when the run has no evaluation outputs."""
  results = [(os.path.relpath(path, workdir), record) for path, record in outputs.read_step_records(workdir)]
  if not results:
    return []
  lines = ['', '## Evaluation', '',
           f'Standard errors as the evaluator reported them, else binomial sqrt(p(1-p)/(n-1)) for accuracies; a '
           f'task scored on fewer than {MIN_DOCS} documents is too few to read. Summary over steps: eval/summary.md.']
  for path, record in results:
    lines += ['', f'### Step {record["step"]} ({record.get("setting_label", "0-shot")}): `{path}`', '']
    lines += _commands(record)
    lines += ['', '| task | metric | value | standard error | documents |', '|---|---|---:|---:|---:|']
    lines += [_row(s) for s in scores_with_errors(record['scores'], record.get('details'))]
  return lines
