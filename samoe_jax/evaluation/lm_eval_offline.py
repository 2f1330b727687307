"""lm-evaluation-harness task files that read local data: the harness's own tasks, offline.

  python -m samoe_jax.evaluation.fetch_data --out=data/eval                 # once, with internet
  python -m samoe_jax.evaluation.lm_eval_offline --eval_data_dir=data/eval --out=data/lm_eval_tasks
  HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 python -m samoe_jax.evaluation.harness run --model samoe \
      --model_args workdir=runs/tiny_samoe --tasks piqa,lambada_openai --include_path data/lm_eval_tasks

For each task of `--eval_data_dir` (the layout `python -m samoe_jax.evaluate` reads: `<task>/<split>.jsonl`, as
the fetch command writes it or as tests/fixtures/eval ships it) this writes `<out>/<harness task>.yaml`:

    include: <the installed lm_eval>/tasks/piqa/piqa.yaml      # the harness's own task: prompts, metrics, splits
    task: piqa
    dataset_path: json                                          # ... with its dataset swapped for local files
    dataset_name: null
    dataset_kwargs: {data_files: {validation: /abs/data/eval/piqa/validation.jsonl, train: ...}}

The file keeps the harness's task name, so `--include_path <out>` makes `--tasks piqa` read the local files (lm-eval
logs that the task overrides its built-in one). It cannot ship as a fixed file: lm-eval resolves `include:`
relative to the YAML file (or as an absolute path) and `data_files` relative to the working directory, so both
are written out for this installation and this data directory. StoryCloze is `storycloze_2016` in the harness.
A YAML file in `--out` that this command did not write (no header line) is never replaced.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from samoe_jax import cli
from samoe_jax.evaluation.task_specs import parse_tasks, unknown_tasks
from samoe_jax.evaluation.tasks.registry import HARNESS_NAMES, TASK_NAMES

PROG = 'samoe_jax.evaluation.lm_eval_offline'
HEADER = f'# Written by {PROG}: an lm-evaluation-harness task over local files (docs/evaluation.md).\n'
# Each task's YAML file under the installed harness's lm_eval/tasks/ (lm-evaluation-harness 0.4.13).
HARNESS_YAML: dict[str, str] = {
    'lambada_openai': 'lambada/lambada_openai.yaml', 'piqa': 'piqa/piqa.yaml', 'boolq': 'super_glue/boolq/default.yaml',
    'race': 'race/race.yaml', 'triviaqa': 'triviaqa/default.yaml', 'webqs': 'webqs/webqs.yaml',
    'hellaswag': 'hellaswag/hellaswag.yaml', 'winogrande': 'winogrande/default.yaml', 'arc_easy': 'arc/arc_easy.yaml',
    'arc_challenge': 'arc/arc_challenge.yaml', 'storycloze': 'storycloze/storycloze_2016.yaml',
    'openbookqa': 'openbookqa/openbookqa.yaml', 'copa': 'super_glue/copa/default.yaml',
}


def harness_tasks_dir() -> str:
  """The installed harness's task directory (lm_eval/tasks); needs `pip install -e '.[lm_eval]'`."""
  try:
    import lm_eval  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError("lm-evaluation-harness is not installed: pip install -e '.[lm_eval]'") from None
  return os.path.join(os.path.dirname(os.path.abspath(lm_eval.__file__)), 'tasks')


def task_config(name: str, data_files: Mapping[str, str], *, task_name: str | None = None,
                cache_dir: str | None = None, tasks_dir: str | None = None) -> dict[str, Any]:
  """The harness task `name` (our name) with its dataset replaced by the JSON-lines `data_files` (split -> path).

  `task_name` defaults to the harness's own name; `cache_dir` is where `datasets` caches the files it builds.
  """
  if name not in HARNESS_YAML:
    raise ValueError(f'unknown evaluation task {name!r}: use one of {", ".join(TASK_NAMES)}')
  kwargs: dict[str, Any] = {'data_files': {split: os.path.abspath(p) for split, p in data_files.items()}}
  if cache_dir:
    kwargs['cache_dir'] = os.path.abspath(cache_dir)
  return {'include': os.path.join(tasks_dir or harness_tasks_dir(), HARNESS_YAML[name]),
          'task': task_name or HARNESS_NAMES[name], 'dataset_path': 'json', 'dataset_name': None,
          'dataset_kwargs': kwargs}


def write_yaml(config: Mapping[str, Any], path: str) -> None:
  """Writes `config` as a task YAML file after the header line; refuses a file this module did not write."""
  import yaml  # pylint: disable=g-import-not-at-top  # installed with lm-eval
  if os.path.exists(path):
    with open(path, encoding='utf-8', errors='replace') as f:
      if f.readline() != HEADER:
        raise FileExistsError(f'{path} exists and was not written by {PROG}; remove it or choose another --out')
  with open(path, 'w', encoding='utf-8') as f:
    f.write(HEADER + yaml.safe_dump(dict(config), sort_keys=False))


def local_files(data_dir: str, name: str) -> dict[str, str]:
  """{split: path} of every `<data_dir>/<name>/<split>.jsonl`; FileNotFoundError naming the directory if none."""
  directory = os.path.join(data_dir, name)
  files = {f[:-len('.jsonl')]: os.path.join(directory, f) for f in sorted(os.listdir(directory))
           if f.endswith('.jsonl')} if os.path.isdir(directory) else {}
  if not files:
    raise FileNotFoundError(f'{directory} holds no <split>.jsonl files: fetch the task with '
                            f'python -m samoe_jax.evaluation.fetch_data --out={data_dir} --tasks={name}')
  return files


def write_task_files(data_dir: str, out_dir: str, tasks: Sequence[str] | None = None, *,
                     cache_dir: str | None = None) -> list[str]:
  """Writes one task YAML per task into `out_dir` (default tasks: every task directory of `data_dir`)."""
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(f'--eval_data_dir={data_dir!r} is not a directory')
  if tasks is None:
    tasks = [t for t in TASK_NAMES if os.path.isdir(os.path.join(data_dir, t))]
    if not tasks:
      raise FileNotFoundError(f'--eval_data_dir={data_dir!r} holds no task directory ({", ".join(TASK_NAMES)})')
  unknown = unknown_tasks(tasks)
  if unknown:
    raise ValueError(f'--tasks: unknown task(s) {unknown}; use {", ".join(TASK_NAMES)}, deepspeed or all')
  configs = {name: task_config(name, local_files(data_dir, name), cache_dir=cache_dir,
                               tasks_dir=harness_tasks_dir()) for name in tasks}
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for config in configs.values():
    path = os.path.join(out_dir, f'{config["task"]}.yaml')
    write_yaml(config, path)
    written.append(path)
  return written


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--eval_data_dir', required=True, help='directory of <task>/<split>.jsonl files')
  parser.add_argument('--out', required=True, help='directory for the task YAML files (give it as --include_path)')
  parser.add_argument('--tasks', default='', help='comma-separated tasks, deepspeed or all (default: those present)')
  parser.add_argument('--cache_dir', help="the datasets cache for the harness's loading (default: datasets' own)")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  with cli.user_errors(PROG):
    written = write_task_files(args.eval_data_dir, args.out, parse_tasks(args.tasks) or None, cache_dir=args.cache_dir)
    for path in written:
      print(path)
    print(f'{len(written)} task file(s); run the harness offline with --include_path {args.out} '
          '(HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1)', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
