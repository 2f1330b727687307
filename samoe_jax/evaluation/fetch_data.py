"""Downloads the zero/few-shot evaluation sets into the layout `--eval_data_dir` reads (docs/evaluation.md).

  python -m samoe_jax.evaluation.fetch_data --out=data/eval [--tasks=piqa,boolq | deepspeed | all]
      [--overwrite] [--expect_manifest=OTHER/manifest.json] [--base_url=https://huggingface.co] [--list]
  python -m samoe_jax.evaluate --workdir=runs/tiny_samoe --eval_data_dir=data/eval --tasks=deepspeed

For every task (default: every downloadable one; StoryCloze is not downloadable) it downloads the file of each
split the evaluator reads from the task's Hugging Face dataset repository at a pinned revision
(evaluation/data_sources.py: plain HTTPS, the standard library only; parquet needs pyarrow), converts it to
`<out>/<task>/<split>.jsonl` with the hub's field names, reads the result back with the evaluator's own readers,
then renames it into place, and records the SHA-256 of every file as downloaded and as written in
`<out>/manifest.json`.

Running it again is a no-op that verifies: files already listed in the manifest are hashed and compared, not
downloaded. A file that changed since it was fetched, one the manifest does not list (not written by this
command) or one fetched from another pin is never replaced silently: the command refuses, naming the files,
unless --overwrite. --expect_manifest compares every file with another run's manifest (the same bytes
downloaded, the same bytes written). --base_url replaces https://huggingface.co (a mirror; file:// works).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence

from samoe_jax import cli
from samoe_jax.evaluation import data_manifest
from samoe_jax.evaluation.data_convert import read_rows, write_json_lines
from samoe_jax.evaluation.data_sources import DEFAULT_BASE_URL, NOT_DOWNLOADABLE, SOURCES
from samoe_jax.evaluation.downloads import download, file_digest
from samoe_jax.evaluation.task_specs import DEEPSPEED_MOE_TASKS, parse_tasks
from samoe_jax.evaluation.tasks.registry import TASK_NAMES, get_task

PROG = 'samoe_jax.evaluation.fetch_data'
URL_SCHEMES = ('https://', 'http://', 'file://')


@dataclasses.dataclass(frozen=True)
class Target:
  """One file to have: split `split` of task `task`, at `<out>/<task>/<split>.jsonl`."""
  task: str
  split: str

  @property
  def name(self) -> str:
    return f'{self.task}/{self.split}.jsonl'

  @property
  def pin(self) -> dict[str, str]:
    return SOURCES[self.task].pin(self.split)


def select_tasks(text: str) -> tuple[str, ...]:
  """The tasks of --tasks: names, 'deepspeed' or 'all' (every downloadable task; StoryCloze is not)."""
  tasks = parse_tasks(text)
  allowed = f'allowed: {", ".join(SOURCES)}, deepspeed ({",".join(DEEPSPEED_MOE_TASKS)}) or all'
  if not tasks:
    raise ValueError(f'--tasks={text!r} names no task; {allowed}')
  unknown = [t for t in tasks if t not in TASK_NAMES]
  if unknown:
    raise ValueError(f'--tasks: unknown task(s) {unknown}; {allowed}')
  if str(text).strip() == 'all':
    return tuple(t for t in tasks if t in SOURCES)
  for task in tasks:
    if task in NOT_DOWNLOADABLE:
      raise ValueError(f'--tasks: {task}: {NOT_DOWNLOADABLE[task]}')
  return tuple(dict.fromkeys(tasks))


def targets_of(tasks: Sequence[str]) -> list[Target]:
  return [Target(task, split) for task in tasks for split in SOURCES[task].files]


def check_existing(out_dir: str, targets: Sequence[Target], manifest: dict, overwrite: bool) -> list[Target]:
  """The targets already in place and unchanged (hashed against the manifest). Any other existing target is
  refused, all of them named in one error, unless `overwrite` (then it is fetched again)."""
  verified, problems = [], []
  for target in targets:
    path, entry = os.path.join(out_dir, target.name), manifest.get(target.name)
    if not os.path.exists(path):
      continue
    if entry is None:
      problems.append(f'{path} exists but {data_manifest.MANIFEST_NAME} does not list it (not written by this '
                      'command)')
    elif not data_manifest.same_pin(entry, target.pin):
      problems.append(f'{path} was fetched from {data_manifest.pin_text(entry.get("source") or {})}, the table '
                      f'now pins {data_manifest.pin_text(target.pin)}')
    elif file_digest(path)[0] != entry.get('sha256'):
      problems.append(f'{path} changed since it was fetched (its SHA-256 is not the {entry.get("sha256")} '
                      f'{data_manifest.MANIFEST_NAME} records)')
    else:
      verified.append(target)
  if problems and not overwrite:
    raise ValueError(f'refusing to replace {len(problems)} file(s) in {out_dir} (--overwrite replaces them): '
                     + '; '.join(problems))
  return verified


def compare_expected(name: str, entry: dict, expected: dict | None, expect_path: str) -> None:
  """ValueError when --expect_manifest is given and disagrees with `entry` (or has no entry for `name`)."""
  if expected is None:
    return
  if name not in expected:
    raise ValueError(f'--expect_manifest={expect_path} has no entry for {name}')
  problem = data_manifest.mismatch(name, entry, expected[name], f'--expect_manifest={expect_path}')
  if problem:
    raise ValueError(problem)


def fetch_one(target: Target, staging: str, base_url: str, recorded: dict | None, overwrite: bool,
              timeout: float) -> tuple[dict, str]:
  """Downloads and converts one split into `staging`; returns (its manifest entry, the converted file)."""
  source = SOURCES[target.task]
  url = source.url(target.split, base_url)
  raw = os.path.join(staging, f'{target.task}.{target.split}.{source.fmt}')
  sha, size = download(url, raw, timeout=timeout)
  if recorded and data_manifest.same_pin(recorded, target.pin) and recorded['source'].get('sha256') != sha:
    if not overwrite:
      raise ValueError(f'{url}: the download has SHA-256 {sha}, but {data_manifest.MANIFEST_NAME} records '
                       f'{recorded["source"].get("sha256")} for {target.name} (the source changed; --overwrite '
                       'accepts the new file)')
    print(f'{target.name}: the source changed since it was last fetched (accepted: --overwrite)', flush=True)
  converted = os.path.join(staging, target.task, f'{target.split}.jsonl')
  os.makedirs(os.path.dirname(converted), exist_ok=True)
  write_json_lines(read_rows(raw, source.fmt), converted)
  os.remove(raw)
  try:   # the evaluator's own reading: schema, gold labels, preprocessing
    rows = len(get_task(target.task, staging).docs(target.split))
  except ValueError as err:
    raise ValueError(f'{url} does not convert to task {target.task!r}, split {target.split!r}: {err}') from None
  out_sha, out_size = file_digest(converted)
  entry = {'task': target.task, 'split': target.split, 'rows': rows, 'sha256': out_sha, 'bytes': out_size,
           'source': {**target.pin, 'url': url, 'sha256': sha, 'bytes': size}}
  return entry, converted


def fetch(out_dir: str, tasks: Sequence[str], *, base_url: str = DEFAULT_BASE_URL, overwrite: bool = False,
          expect_manifest: str | None = None, timeout: float = 60.0) -> dict[str, list[str]]:
  """Makes `out_dir` hold every split of `tasks` (module docstring); returns {'verified': [...], 'fetched': [...]}."""
  if not base_url.startswith(URL_SCHEMES):
    raise ValueError(f'--base_url={base_url!r}: use an https://, http:// or file:// URL')
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise NotADirectoryError(f'--out={out_dir!r} is a file, not a directory')
  manifest_path = os.path.join(out_dir, data_manifest.MANIFEST_NAME)
  manifest = data_manifest.load(manifest_path)
  expected = data_manifest.load(expect_manifest, must_exist=True) if expect_manifest else None
  targets = targets_of(tasks)
  verified = check_existing(out_dir, targets, manifest, overwrite)
  for target in verified:
    compare_expected(target.name, manifest[target.name], expected, expect_manifest)
    print(f'{target.name}: verified ({manifest[target.name]["rows"]} rows, sha256 {manifest[target.name]["sha256"]})',
          flush=True)
  fetched = []
  pending = [t for t in targets if t not in verified]
  if pending:
    os.makedirs(out_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix='.fetch-', dir=out_dir)
    try:
      for target in pending:
        entry, converted = fetch_one(target, staging, base_url, manifest.get(target.name), overwrite, timeout)
        compare_expected(target.name, entry, expected, expect_manifest)
        final = os.path.join(out_dir, target.name)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.replace(converted, final)
        manifest[target.name] = entry
        data_manifest.save(manifest_path, manifest)
        fetched.append(target.name)
        print(f'{target.name}: {entry["rows"]} rows from {entry["source"]["url"]} (sha256 {entry["sha256"]})',
              flush=True)
    finally:
      shutil.rmtree(staging, ignore_errors=True)
  print(f'{len(verified)} file(s) verified, {len(fetched)} fetched; {manifest_path} lists them. Evaluate with '
        f'--eval_data_dir={out_dir}', flush=True)
  return {'verified': [t.name for t in verified], 'fetched': fetched}


def sources_table(base_url: str = DEFAULT_BASE_URL) -> str:
  """The pinned table (--list): task, split, provenance and URL, one file per line."""
  lines = [f'{"task":15} {"split":11} {"provenance":10} url']
  for task, source in SOURCES.items():
    for split, file in source.files.items():
      lines.append(f'{task:15} {split:11} {file.provenance:10} {source.url(split, base_url)}')
  lines += [f'{task:15} (not downloadable: {why})' for task, why in NOT_DOWNLOADABLE.items()]
  return '\n'.join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', help='directory to write (then give it as --eval_data_dir)')
  parser.add_argument('--tasks', default='all', help='comma-separated tasks, deepspeed, or all (default)')
  parser.add_argument('--base_url', default=DEFAULT_BASE_URL, help='hub or mirror URL (https://, http://, file://)')
  parser.add_argument('--overwrite', action='store_true', help='replace files that differ from the manifest')
  parser.add_argument('--expect_manifest', help="another run's manifest.json the files must match")
  parser.add_argument('--timeout', type=float, default=60.0, help='seconds per network operation')
  parser.add_argument('--list', action='store_true', help='print the pinned sources and exit')
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  with cli.user_errors(PROG):
    if args.list:
      print(sources_table(args.base_url))
      return 0
    if not args.out:
      raise ValueError('--out: give the directory to write (afterwards --eval_data_dir=DIR reads it)')
    tasks = select_tasks(args.tasks)
    for task in sorted(set(parse_tasks(args.tasks)) & set(NOT_DOWNLOADABLE)):
      print(f'{task}: skipped ({NOT_DOWNLOADABLE[task]})', flush=True)
    fetch(args.out, tasks, base_url=args.base_url, overwrite=args.overwrite,
          expect_manifest=args.expect_manifest, timeout=args.timeout)
  return 0


if __name__ == '__main__':
  sys.exit(main())
