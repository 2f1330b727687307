"""Where `python -m samoe_jax.evaluation.fetch_data` downloads each task's splits: a pinned table.

Every source is a file published in a Hugging Face hub dataset repository (the repository lm-evaluation-harness
0.4.13 loads for the task), fetched over plain HTTPS from

    {base_url}/datasets/{repo}/resolve/{revision}/{path}

with no hub client and no loading script. The files hold the hub's own rows (the parquet conversion, or the
repository's JSON lines), so the converted `<task>/<split>.jsonl` keeps the field names the evaluator reads
(evaluation/tasks/registry.py).

Provenance. This table was written without access to the hub: no revision, path or file below was fetched by
the authors of samoe-jax. Each entry says what it rests on:
  seen      the commit and the file path appear together in public code that downloads that file
  inferred  the commit was seen with another file of the repository; this path follows that file's naming
            (for example `train-00000-of-00001.parquet` beside a seen `validation-00000-of-00001.parquet`)
  branch    no commit is known: the branch `main` (it can move; manifest.json records the bytes fetched)
A wrong entry fails with one line naming the URL. No checksum is pinned here: the fetch command records the
SHA-256 of every file as downloaded in `<out>/manifest.json` and checks later runs against it (or against a
manifest given with --expect_manifest).
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Mapping

PARQUET, JSONL = 'parquet', 'jsonl'
FORMATS = (PARQUET, JSONL)
SEEN, INFERRED, BRANCH = 'seen', 'inferred', 'branch'
PROVENANCES = (SEEN, INFERRED, BRANCH)
DEFAULT_BASE_URL = 'https://huggingface.co'


@dataclasses.dataclass(frozen=True)
class SourceFile:
  """One split's file in a hub repository."""
  path: str          # path inside the repository at the revision
  provenance: str    # SEEN, INFERRED or BRANCH (module docstring)


@dataclasses.dataclass(frozen=True)
class Source:
  """A task's hub repository, the pinned revision and the file of each split the evaluator reads."""
  repo: str
  revision: str
  fmt: str                            # PARQUET or JSONL
  files: Mapping[str, SourceFile]     # split -> file

  def url(self, split: str, base_url: str = DEFAULT_BASE_URL) -> str:
    """The download URL of `split`'s file under `base_url` (https://huggingface.co or a mirror, file:// too)."""
    path = urllib.parse.quote(f'datasets/{self.repo}/resolve/{self.revision}/{self.files[split].path}')
    return f'{base_url.rstrip("/")}/{path}'

  def pin(self, split: str) -> dict[str, str]:
    """What identifies `split`'s source independently of the base URL (recorded in manifest.json)."""
    return {'repo': self.repo, 'revision': self.revision, 'path': self.files[split].path}


def _parquet(repo: str, revision: str, **files: tuple[str, str]) -> Source:
  return Source(repo, revision, PARQUET, {split: SourceFile(*f) for split, f in files.items()})


_SUPER_GLUE = 'aps/super_glue', '5234c61e804e85e5994b14b002fa9ec34487bcfb'
_ARC = 'allenai/ai2_arc', '210d026faf9955653af8916fad021475a3f00453'
_ONE = '-00000-of-00001.parquet'

SOURCES: dict[str, Source] = {
    'lambada_openai': Source('EleutherAI/lambada_openai', '900124bf3b8235c6daf21033af9948b3f07346c4', JSONL,
                             {'test': SourceFile('data/lambada_test.jsonl', SEEN)}),
    'piqa': _parquet('baber/piqa', '142f6d7367fd9877f0fb3b5734ea6a545f54cdd1',
                     validation=(f'data/validation{_ONE}', INFERRED), train=(f'data/train{_ONE}', INFERRED)),
    'boolq': _parquet(*_SUPER_GLUE, validation=(f'boolq/validation{_ONE}', SEEN),
                      train=(f'boolq/train{_ONE}', INFERRED)),
    'race': Source('EleutherAI/race', 'e30efe648089df42c548e93faa9c5f1816e2c44f', JSONL,
                   {'test': SourceFile('race_high_test.jsonl', SEEN)}),
    'triviaqa': _parquet('mandarjoshi/trivia_qa', 'main', validation=(f'rc.nocontext/validation{_ONE}', BRANCH),
                         train=(f'rc.nocontext/train{_ONE}', BRANCH)),
    'webqs': _parquet('stanfordnlp/web_questions', '0e473cbe21d1e91ec18da343644498be6a3f5454',
                      test=(f'data/test{_ONE}', SEEN), train=(f'data/train{_ONE}', INFERRED)),
    'hellaswag': _parquet('Rowan/hellaswag', '218ec52e09a7e7462a5400043bb9a69a41d06b76',
                          validation=(f'data/validation{_ONE}', SEEN), train=(f'data/train{_ONE}', INFERRED)),
    'winogrande': _parquet('allenai/winogrande', '01e74176c63542e6b0bcb004dcdea22d94fb67b5',
                           validation=(f'winogrande_xl/validation{_ONE}', INFERRED),
                           train=(f'winogrande_xl/train{_ONE}', INFERRED)),
    'arc_easy': _parquet(*_ARC, test=(f'ARC-Easy/test{_ONE}', SEEN), train=(f'ARC-Easy/train{_ONE}', INFERRED)),
    'arc_challenge': _parquet(*_ARC, test=(f'ARC-Challenge/test{_ONE}', SEEN),
                              train=(f'ARC-Challenge/train{_ONE}', SEEN)),
    'openbookqa': _parquet('allenai/openbookqa', '388097ea7776314e93a529163e0fea805b8a6454',
                           test=(f'main/test{_ONE}', SEEN), train=(f'main/train{_ONE}', INFERRED)),
    'copa': _parquet(*_SUPER_GLUE, validation=(f'copa/validation{_ONE}', INFERRED),
                     train=(f'copa/train{_ONE}', INFERRED)),
}

# Tasks the evaluator knows that cannot be downloaded, and what to do instead.
NOT_DOWNLOADABLE: dict[str, str] = {
    'storycloze': ('StoryCloze 2016 is not downloadable: request it from the authors '
                   '(https://cs.rochester.edu/nlp/rocstories/) and convert its CSV files as '
                   'samoe_jax/evaluation/tasks/registry.py describes'),
}


def check_table(task_splits: Mapping[str, tuple[str, ...]]) -> None:
  """ValueError unless every source covers exactly the splits its task reads (`task_splits`: task -> splits)."""
  for task, source in SOURCES.items():
    if source.fmt not in FORMATS or any(f.provenance not in PROVENANCES for f in source.files.values()):
      raise ValueError(f'data source of {task!r}: format {source.fmt!r} / provenance not one of {FORMATS} / '
                       f'{PROVENANCES}')
    if set(source.files) != set(task_splits[task]):
      raise ValueError(f'data source of {task!r} has splits {sorted(source.files)}, the task reads '
                       f'{sorted(task_splits[task])}')
  missing = set(task_splits) - set(SOURCES) - set(NOT_DOWNLOADABLE)
  if missing:
    raise ValueError(f'tasks without a data source: {sorted(missing)}')
