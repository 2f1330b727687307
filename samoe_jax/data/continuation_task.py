"""A next-line choice task written in PIQA's schema, built offline from a held-out text corpus.

No evaluation set ships with samoe-jax. To exercise fine-tuning and compression end to end on a machine without one,
this writes `OUT/piqa/train.jsonl` and `OUT/piqa/validation.jsonl` rows {goal, sol1, sol2, label}. The rows come
from the embedded corpus's *validation* split, which pretraining never reads. In every row:

- goal: a line of a passage (at least `min_words` words);
- the true answer: the line that follows it;
- the distractor: a line drawn at random from another passage;
- label: which of sol1 / sol2 is the true line, drawn at random.

Passages in the first `train_fraction` of the split give the train rows, the rest the validation rows. The seed
fixes everything. Scored with the `piqa` task's prompt ("Question: {goal}\\nAnswer:"), it is a synthetic
discrimination task, not PIQA, and every report that uses it says so.

  python -m samoe_jax.data.continuation_task --out=data/next_line [--corpus=shakespeare --train=2000 ...]
"""

from __future__ import annotations

import json
import os
import random
import sys
from typing import Sequence

from absl import app, flags

from samoe_jax import cli
from samoe_jax.data import documents
from samoe_jax.data.in_memory import corpus_path


def line_pairs(passages: list[str], min_words: int) -> list[tuple[int, str, str]]:
  """(passage index, line, next line) for consecutive lines of a passage, both with >= min_words words."""
  out = []
  for p, passage in enumerate(passages):
    lines = [l.strip() for l in passage.split('\n')]
    for a, b in zip(lines, lines[1:]):
      if len(a.split()) >= min_words and len(b.split()) >= min_words:
        out.append((p, a, b))
  return out


def build_rows(passages: list[str], n: int, min_words: int, rnd: random.Random) -> list[dict]:
  """Up to `n` rows (module doc) from `passages`."""
  pairs = line_pairs(passages, min_words)
  if len(pairs) < 2:
    raise ValueError(f'only {len(pairs)} usable line pairs: the corpus is too small for --min_words={min_words}')
  rnd.shuffle(pairs)
  rows = []
  for p, goal, answer in pairs[:n]:
    while True:
      q, _, distractor = pairs[rnd.randrange(len(pairs))]
      if q != p and distractor != answer:
        break
    label = rnd.randrange(2)
    sols = (answer, distractor) if label == 0 else (distractor, answer)
    rows.append({'goal': goal, 'sol1': sols[0], 'sol2': sols[1], 'label': label})
  return rows


def write_task(out: str, corpus: str = 'shakespeare', train: int = 2000, validation: int = 500,
               min_words: int = 5, train_fraction: float = 0.7, seed: int = 0) -> dict[str, int]:
  """Writes OUT/piqa/{train,validation}.jsonl; returns the row counts. Existing files are never overwritten."""
  target = os.path.join(out, 'piqa')
  for split in ('train', 'validation'):
    if os.path.exists(os.path.join(target, f'{split}.jsonl')):
      raise ValueError(f'{target}/{split}.jsonl exists: nothing is overwritten; choose a new --out')
  passages = documents.read_documents(corpus_path(corpus, 'validation'))
  cut = int(len(passages) * train_fraction)
  rnd = random.Random(seed)
  splits = {'train': build_rows(passages[:cut], train, min_words, rnd),
            'validation': build_rows(passages[cut:], validation, min_words, rnd)}
  os.makedirs(target, exist_ok=True)
  for split, rows in splits.items():
    with open(os.path.join(target, f'{split}.jsonl'), 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in rows)
  return {split: len(rows) for split, rows in splits.items()}


def _main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  counts = write_task(f.out, f.corpus, f.train, f.validation, f.min_words, seed=f.seed)
  print(f'wrote {counts} rows to {os.path.join(f.out, "piqa")}')


def main(argv: Sequence[str] | None = None) -> None:
  """The command (python -m, a console script): defines its flags here, not at import (every command module
  imports in one process), and runs through cli.run_app."""
  flags.DEFINE_string('out', None, 'Directory; OUT/piqa/{train,validation}.jsonl are written.')
  flags.DEFINE_string('corpus', 'shakespeare', "An embedded corpus ('shakespeare' or 'shakespeare_tiny').")
  flags.DEFINE_integer('train', 2000, 'Training rows (at most).')
  flags.DEFINE_integer('validation', 500, 'Validation rows (at most).')
  flags.DEFINE_integer('min_words', 5, 'Fewest words of a goal line and of its answer.')
  flags.DEFINE_integer('seed', 0, 'Seed of the sampling.')
  flags.mark_flags_as_required(['out'])
  cli.run_app('samoe_jax.data.continuation_task', _main, sys.argv if argv is None else list(argv))


if __name__ == '__main__':
  sys.exit(main())
