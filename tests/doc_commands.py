"""The shell commands of a markdown file's code blocks, one `Command` per command, with the line it starts on.

Read: fenced blocks tagged bash / sh / shell / console (every line), untagged fenced blocks and 4-space indented
blocks (only lines that start with `$ `, `python`, `make` or a `samoe-` console script). A trailing backslash
joins lines; `# ...` comments, a `$ ` prompt and leading `NAME=value` environment settings are dropped; `&&`, `;`
and `|` outside brackets separate commands. Synopsis brackets are understood: `[--a=1 | --b]` contributes its flags
(marked optional), `[--a=x|y]` its first value, and `...` is dropped. `> FILE` records FILE as written by the command.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from typing import Iterator

SHELL_LANGUAGES = ('bash', 'sh', 'shell', 'console', 'zsh')
COMMAND_START = re.compile(r'^(\$ |python3? |make |samoe-[a-z-]+(\s|$)|[A-Z_][A-Z0-9_]*=\S* )')
FENCE = re.compile(r'^\s*(```+|~~~+)\s*([\w+-]*)')
SEPARATORS = ('&&', ';', '|', '||')
# A word in capitals (RUN, DIR, CORPUS, NAME, N, KEY=VALUE) stands for the reader's own value.
PLACEHOLDER = re.compile(r'(^|[/=:,.@])([A-Z][A-Z0-9_]*)($|[/=:,.\[])')


@dataclasses.dataclass(frozen=True)
class Command:
  """One documented command: argv without environment settings, which of its words were optional, what it writes."""
  source: str
  line: int
  argv: tuple[str, ...]
  optional: frozenset[int] = frozenset()
  writes: tuple[str, ...] = ()

  @property
  def where(self) -> str:
    return f'{self.source}:{self.line}'

  def __str__(self) -> str:
    return f'{self.where}: {shlex.join(self.argv)}'


def is_placeholder(value: str) -> bool:
  """True for a value the reader replaces (RUN, gs://BUCKET/x, configs/NAME.py, ..., N)."""
  return value in ('...', '') or '...' in value or bool(PLACEHOLDER.search(value))


def code_lines(text: str) -> Iterator[tuple[int, str, bool]]:
  """(line number, text, every-line block) for the lines of code blocks; every-line blocks are shell-tagged."""
  fence, language = None, ''
  for number, line in enumerate(text.splitlines(), 1):
    match = FENCE.match(line)
    if match and (fence is None or match.group(1).startswith(fence)):
      fence, language = (None, '') if fence else (match.group(1), match.group(2).lower())
    elif fence is not None:
      if language in SHELL_LANGUAGES or not language:
        yield number, line, language in SHELL_LANGUAGES and language != 'console'
    elif line.startswith('    '):
      yield number, line.strip(), False


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
  """Commands' text with backslash continuations joined, each with the line it starts on."""
  pending, start = '', 0
  for number, line, every_line in code_lines(text):
    if not pending:
      stripped = line.strip()
      if not (every_line or COMMAND_START.match(stripped)):
        continue
      start = number
      line = stripped[2:] if stripped.startswith('$ ') else stripped
    if line.rstrip().endswith('\\'):
      pending += line.rstrip()[:-1] + ' '
      continue
    yield start, pending + line
    pending = ''
  if pending:
    yield start, pending


def _command(source: str, line: int, words: list[str], optional: set[int]) -> Command | None:
  argv, kept_optional, writes, index = [], set(), [], 0
  while index < len(words) and re.match(r'^[A-Za-z_][A-Za-z0-9_]*=', words[index]) and not argv:
    index += 1
  while index < len(words):
    word = words[index]
    if word in ('>', '>>') and index + 1 < len(words):
      writes.append(words[index + 1])
      index += 2
      continue
    if word.startswith('>') or word == '2>&1':
      writes += [word.lstrip('>')] if word.startswith('>') and not word.startswith('>&') else []
    elif word != '...':
      if index in optional:
        kept_optional.add(len(argv))
      argv.append(word)
    index += 1
  return Command(source, line, tuple(argv), frozenset(kept_optional), tuple(writes)) if argv else None


def _unbracket(word: str, depth: int) -> tuple[str, int, int]:
  """The word without synopsis brackets, the depth inside it and the brackets it closes."""
  opened = len(word) - len(word.lstrip('['))
  word, depth, closed = word[opened:], depth + opened, 0
  while word.endswith(']') and depth - closed > 0 and word.count('[') < word.count(']'):
    word, closed = word[:-1], closed + 1
  return word, depth, closed


def split_line(source: str, line: int, text: str) -> list[Command]:
  """The commands of one logical line (synopsis brackets and alternatives resolved)."""
  commands, current, optional, depth, previous = [], [], set(), 0, ''
  for raw in shlex.split(text, comments=True):
    word, depth, closed = _unbracket(raw, depth)
    if depth == 0 and word in SEPARATORS:
      commands.append(_command(source, line, current, optional))
      current, optional = [], set()
    elif word and word != '|' and not (depth and previous == '|' and not word.startswith('-')):
      if depth:   # (a bare word after `|` in brackets is another value of the flag before it: dropped)
        optional.add(len(current))
        word = word.split('|')[0] if word.startswith('--') else word   # [--x=a|b]: the first alternative
      current.append(word)
    depth, previous = depth - closed, word
  commands.append(_command(source, line, current, optional))
  return [c for c in commands if c is not None]


def commands(source: str, text: str) -> list[Command]:
  """Every command of a markdown document, in document order."""
  return [c for line, logical in logical_lines(text) for c in split_line(source, line, logical)]
