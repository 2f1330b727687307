"""Checks the commands of markdown documents against the code: programs, flags, config keys, paths, order.

`check(documents)` returns one message per problem, each naming the document's line:

- the program exists: a `python -m` module, a `python PATH.py` script, a console script of pyproject.toml, a make
  target, a pip extra;
- its flags parse: every command runs through its real flag parsing in tests/entry_probe.py (unknown flags, bad
  --config files and --config.KEY overrides, gin files, required flags, a compress subcommand and its flags);
- launcher scripts (launch/*.py) run for real with --dry-run, and the samoe_jax commands they print are checked
  the same way;
- every path the command reads (READS; also --config.*_files overrides) is shipped in the repository (git ls-files)
  or written by an earlier command (WRITES, `> FILE`, `make demo`'s workdir): documents after the first start
  with what the first one wrote. Placeholders (RUN, gs://BUCKET, ...), bracketed synopsis options and absolute
  paths outside /tmp (the reader's own) are not looked up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import importlib.util
import io
import json
import os
import pathlib
import re
import runpy
import shlex
import subprocess
import sys
import tomllib
from typing import Any, Sequence

from tests.doc_commands import Command, commands, is_placeholder

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROBE = ROOT / 'tests' / 'entry_probe.py'
OTHER_PROGRAMS = ('printf', 'echo', 'mkdir', 'cat', 'tensorboard')   # not this repository's: not checked
# Flags whose values are paths the command reads; ':KEY' reads KEY=PATH out of a comma-separated value.
READS = {
    'samoe_jax.train': ('config', 'gin_file'),
    'samoe_jax.describe': ('config', 'workdir'),
    'samoe_jax.mesh_plan': ('config',),
    'samoe_jax.report': ('workdir',),
    'samoe_jax.evaluate': ('workdir', 'eval_data_dir', 'perplexity_files', 'config'),
    'samoe_jax.generate': ('workdir', 'prompt_file'),
    'samoe_jax.finetune': ('init_from', 'eval_data_dir'),
    'samoe_jax.compress': ('workdir', 'eval_data_dir', 'scratch'),
    'samoe_jax.evaluation.lm_eval_offline': ('eval_data_dir',),
    'samoe_jax.evaluation.harness': ('model_args:workdir', 'include_path'),
    'samoe_jax.experiments.reproduce': ('corpus_dir',),
    'launch/gpu_node.py': ('config', 'corpus_dir'),
    'launch/tpu_vm.py': ('config',),
}
WRITES = {
    'samoe_jax.train': ('workdir',),
    'samoe_jax.finetune': ('workdir',),
    'samoe_jax.compress': ('out',),
    'samoe_jax.evaluation.fetch_data': ('out',),
    'samoe_jax.evaluation.lm_eval_offline': ('out',),
    'samoe_jax.experiments.reproduce': ('out',),
    'samoe_jax.generate': ('output_jsonl',),
    'samoe_jax.bench': ('json_out',),
    'launch/gpu_node.py': ('workdir', 'out'),
}
CONFIG_READS = re.compile(r'^config\.(.*_files|data\.vocabulary|data\.tfds_data_dir)$')


@dataclasses.dataclass
class Job:
  """A command to run through its flag parsing: where it is documented, the program, its argv."""
  where: str
  shown: str
  program: str
  argv: list[str]


def _pyproject() -> dict[str, Any]:
  with open(ROOT / 'pyproject.toml', 'rb') as f:
    return tomllib.load(f)


def _make_targets() -> tuple[set[str], str]:
  text = (ROOT / 'Makefile').read_text()
  workdir = re.search(r'^WORKDIR \?= (\S+)', text, flags=re.M)
  return set(re.findall(r'^([\w.-]+):', text, flags=re.M)), workdir.group(1) if workdir else ''


def shipped_files() -> set[str]:
  """The repository's files as a fresh clone has them (the working tree's when git is not available)."""
  try:
    out = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, check=True).stdout.decode()
    return {p for p in out.split('\0') if p}
  except (OSError, subprocess.CalledProcessError):
    return {str(p.relative_to(ROOT)) for p in ROOT.rglob('*') if p.is_file()}


def is_shipped(path: str, files: set[str]) -> bool:
  path = os.path.normpath(path)
  if any(c in path for c in '*?['):
    return any(fnmatch.fnmatch(f, path) for f in files)
  return path in files or any(f.startswith(path + '/') for f in files)


def looked_up(value: str) -> bool:
  """Whether a path value is the repository's or an earlier command's (not a placeholder or the reader's own)."""
  return bool(value) and not (is_placeholder(value) or '://' in value or value.startswith('~')
                              or (value.startswith('/') and not value.startswith('/tmp/')))


def flag_values(argv: Sequence[str], optional: frozenset[int] = frozenset()) -> list[tuple[str, str]]:
  """(name, value) of `--name=value` and `--name value` arguments, bracketed (optional) ones left out."""
  found = []
  for i, arg in enumerate(argv):
    if i in optional or not arg.startswith('--') or arg == '--':
      continue
    if '=' in arg:
      found.append(tuple(arg[2:].split('=', 1)))
    elif i + 1 < len(argv) and not argv[i + 1].startswith('-') and i + 1 not in optional:
      found.append((arg[2:], argv[i + 1]))
  return found


def paths(name_key: str, values: list[tuple[str, str]]) -> list[str]:
  """The paths a READS / WRITES entry names among the flag values."""
  name, _, key = name_key.partition(':')
  found = []
  for flag, value in values:
    if flag != name:
      continue
    for item in value.split(','):
      if key:
        item_key, _, item = item.partition('=')
        if item_key != key:
          continue
      found.append(item)
  return found


class Checker:
  """Resolves and checks commands; `written` carries what earlier commands wrote."""

  def __init__(self) -> None:
    self.files = shipped_files()
    self.scripts = _pyproject()['project']['scripts']
    self.extras = _pyproject()['project'].get('optional-dependencies', {})
    self.targets, self.demo_workdir = _make_targets()
    self.problems: list[str] = []
    self.jobs: list[Job] = []
    self.written: set[str] = set()

  def problem(self, command: Command, message: str) -> None:
    self.problems.append(f'{command.where}: `{shlex.join(command.argv)[:100]}`: {message}')

  def program(self, command: Command) -> tuple[str, str] | None:
    """(entry name for READS/WRITES, probe program) of a command, or None when it is checked otherwise."""
    argv = command.argv
    if argv[0] in ('python', 'python3') and len(argv) > 2 and argv[1] == '-m':
      module = argv[2]
      try:
        spec = importlib.util.find_spec(module)
      except ModuleNotFoundError:
        spec = None
      if spec is None:
        self.problem(command, f'no module {module}')
        return None
      return module, f'-m {module}'
    if argv[0] in ('python', 'python3') and len(argv) > 1 and argv[1].endswith('.py'):
      if argv[1] not in self.files:
        self.problem(command, f'{argv[1]} is not a file of the repository')
        return None
      if argv[1].startswith('launch/'):
        self.dry_run(command)
      return argv[1], argv[1]
    if argv[0] in self.scripts:
      module, function = self.scripts[argv[0]].split(':')
      return module, f'{module}:{function}'
    if argv[0] == 'make':
      missing = [t for t in argv[1:] if t not in self.targets]
      if missing:
        self.problem(command, f'no make target {", ".join(missing)} in the Makefile')
      if 'demo' in argv[1:]:
        self.written.add(self.demo_workdir)
      return None
    if argv[:2] == ('pip', 'install'):
      extras = [e for a in argv for e in re.findall(r'\[([\w,-]+)\]', a) for e in e.split(',')]
      for extra in extras:
        if extra not in self.extras:
          self.problem(command, f'no extra [{extra}] in pyproject.toml')
      return None
    if argv[0] not in OTHER_PROGRAMS:
      self.problem(command, f'{argv[0]!r} is not a command this check knows (python -m, python PATH.py, a samoe-* '
                   'console script, make, pip)')
    return None

  def dry_run(self, command: Command) -> None:
    """Runs a launcher with --dry-run (after its subcommand) and queues the samoe_jax commands it prints."""
    args = list(command.argv[2:3]) + ['--dry-run'] + list(command.argv[3:])
    out, err = io.StringIO(), io.StringIO()
    try:
      with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = runpy.run_path(str(ROOT / command.argv[1]))['main'](args)
    except SystemExit as exit_:
      code = exit_.code
    if code:
      self.problem(command, f'--dry-run failed: {(err.getvalue().strip().splitlines() or [str(code)])[-1]}')
      return
    for line in out.getvalue().splitlines():
      for argv in embedded_commands(line):
        self.jobs.append(Job(command.where, f'(printed by its dry run) {shlex.join(argv)[:100]}', f'-m {argv[2]}',
                             ['python', *argv[3:]]))

  def check_paths(self, command: Command, entry: str) -> None:
    values = flag_values(command.argv, command.optional)
    for name_key in READS.get(entry, ()):
      for path in paths(name_key, values):
        self.check_read(command, name_key.replace(':', ' ') + '=' * (':' in name_key), path)
    for name, value in values:
      if name.startswith('config.') and CONFIG_READS.match(name):
        for path in value.split(','):
          self.check_read(command, name, path)
    for name in WRITES.get(entry, ()):
      self.written.update(os.path.normpath(p) for p in paths(name, values) if looked_up(p))

  def check_read(self, command: Command, flag: str, path: str) -> None:
    if not looked_up(path):
      return
    path = os.path.normpath(path)
    if is_shipped(path, self.files) or any(path == w or path.startswith(w + '/') for w in self.written):
      return
    self.problem(command, f'--{flag}{"" if flag.endswith("=") else "="}{path}: not in the repository, and no earlier '
                 'command writes it')

  def add(self, command: Command) -> None:
    """Checks one command (flags later, in one probe process) and records what it writes."""
    entry = self.program(command)
    if entry is not None:
      name, program = entry
      argv = list(command.argv)
      argv = argv[:1] + argv[3:] if program.startswith('-m ') else argv[1:] if [program] == argv[1:2] else argv
      if not name.startswith('launch/'):
        self.jobs.append(Job(command.where, shlex.join(command.argv)[:100], program, argv))
      self.check_paths(command, name.removesuffix('.__main__'))
    self.written.update(os.path.normpath(p) for p in command.writes if looked_up(p))

  def run_probe(self) -> None:
    """Every queued command through its real flag parsing, in one process."""
    if not self.jobs:
      return
    done = subprocess.run([sys.executable, str(PROBE)], input=json.dumps([dataclasses.asdict(j) for j in self.jobs]),
                          capture_output=True, text=True, cwd=ROOT, check=False,
                          env=dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2'))
    if done.returncode:
      raise RuntimeError(f'tests/entry_probe.py failed: {done.stderr[-2000:]}')
    for job, result in zip(self.jobs, json.loads(done.stdout)):
      if result['error']:
        self.problems.append(f'{job.where}: `{job.shown}`: {result["error"]}')


def embedded_commands(line: str) -> list[list[str]]:
  """The `python -m samoe_jax...` commands in a printed shell line (also inside a quoted remote command)."""
  words, found = shlex.split(line), []
  for i, word in enumerate(words):
    if word == '-m' and i + 1 < len(words) and words[i + 1].startswith('samoe_jax'):
      rest = words[i + 2:]
      stop = next((j for j, w in enumerate(rest) if w in ('>', '>>', '&', '&&', ';', '|') or w.startswith('>')),
                  len(rest))
      found.append(['python', '-m', words[i + 1], *rest[:stop]])
    elif ' -m samoe_jax' in word:
      found += embedded_commands(word)
  return found


def check(documents: Sequence[tuple[str, str]]) -> list[str]:
  """Problems of the commands of (name, markdown text) documents; later documents follow the first one."""
  checker = Checker()
  after_first: set[str] = set()
  for index, (name, text) in enumerate(documents):
    checker.written = set(after_first)
    for command in commands(name, text):
      checker.add(command)
    if index == 0:
      after_first = set(checker.written)
  checker.run_probe()
  return checker.problems
