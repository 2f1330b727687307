"""How the experiment corpus's sources become text: markup-to-text converters (standard library only).

Every converter maps one file's text to a list of `Block`s (a heading, a prose paragraph or a code block);
`clean_blocks` then applies the shared rules: prose lines are stripped and their runs of whitespace collapsed, code
blocks longer than `MAX_CODE_LINES` are dropped (short examples stay, indented by four spaces), and blocks that
are mostly symbols (tables, ASCII art, code) are dropped. Every rule is a plain function of the input text, so
the output depends on nothing but the pinned files.
"""

from __future__ import annotations

import html
import html.entities
import re
import textwrap

from samoe_jax.data.experiment_corpus_blocks import Block
from samoe_jax.data.experiment_corpus_html import html_blocks

MAX_CODE_LINES = 12          # longer code/literal blocks are dropped
MIN_PROSE_LETTERS = 0.5      # a prose block keeps only if letters / non-space characters >= this
MIN_CODE_LETTERS = 0.4       # the same for (short) code blocks


# ---------------------------------------------------------------------------------------------------------------
# Shared rules.

def _letter_ratio(text: str) -> float:
  chars = [c for c in text if not c.isspace()]
  return sum(c.isalpha() for c in chars) / len(chars) if chars else 0.0


def _clean_prose(text: str) -> str:
  lines = (' '.join(line.split()) for line in text.split('\n'))
  return '\n'.join(line for line in lines if line)


def _clean_code(text: str) -> list[str]:
  lines = [line.rstrip() for line in textwrap.dedent(text.expandtabs(8)).split('\n')]
  first = next((i for i, line in enumerate(lines) if line), len(lines))
  return lines[first:len(lines) - next((i for i, line in enumerate(reversed(lines)) if line), 0)]


def clean_blocks(blocks: list[Block]) -> list[Block]:
  """The blocks that survive the shared rules, cleaned (see the module docstring). Consecutive code blocks count
  as one (POD verbatim paragraphs, adjacent <pre>s)."""
  merged: list[Block] = []
  for block in blocks:
    if block.kind == 'code' and merged and merged[-1].kind == 'code':
      merged[-1] = Block('code', merged[-1].text + '\n\n' + block.text)
    else:
      merged.append(block)
  out = []
  for block in merged:
    if block.kind == 'code':
      lines = _clean_code(block.text)
      if not lines or len(lines) > MAX_CODE_LINES or _letter_ratio(block.text) < MIN_CODE_LETTERS:
        continue
      out.append(Block('code', '\n'.join('    ' + line if line else '' for line in lines)))
    else:
      text = _clean_prose(block.text)
      if text and _letter_ratio(text) >= MIN_PROSE_LETTERS:
        out.append(Block(block.kind, text))
  return out


def to_text(converter: str, text: str) -> str:
  """One file's text converted with CONVERTERS[converter] and cleaned, blocks joined by blank lines."""
  return '\n\n'.join(b.text for b in clean_blocks(CONVERTERS[converter](text)))


def _paragraphs(text: str) -> list[list[str]]:
  """Runs of non-blank lines (whitespace-only lines are blank)."""
  paras: list[list[str]] = [[]]
  for line in text.split('\n'):
    if line.strip():
      paras[-1].append(line)
    elif paras[-1]:
      paras.append([])
  return [p for p in paras if p]


def _indent(line: str) -> int:
  return len(line) - len(line.lstrip(' '))


def _block_end(lines: list[str], start: int, indent: int) -> int:
  """The first index >= start of a non-blank line indented <= `indent` (or len(lines))."""
  j = start
  while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > indent):
    j += 1
  return j


class _Protect:
  """Swaps matched spans for placeholders so that later substitutions leave them alone."""

  def __init__(self):
    self.spans: list[str] = []

  def put(self, text: str) -> str:
    self.spans.append(text)
    return f'\x00{len(self.spans) - 1}\x00'

  def restore(self, text: str) -> str:
    for _ in range(3):  # placeholders may nest
      text = re.sub(r'\x00(\d+)\x00', lambda m: self.spans[int(m.group(1))], text)
    return text


# ---------------------------------------------------------------------------------------------------------------
# reStructuredText (Sphinx): the Python and Linux documentation.

_RST_ADORNMENT = re.compile(r'([=\-~^"\'`#*+:._<>])\1{2,}')
_RST_DIRECTIVE = re.compile(r'\.\.\s+([\w:.+-]+)::(.*)')
_RST_OPTION = re.compile(r':[\w][\w .-]*:(\s|$)')
_RST_GRID = re.compile(r'\+[-=+]{3,}')
_RST_SIMPLE_TABLE = re.compile(r'=+( +=+)+')
_RST_META_FIELDS = ('orphan', 'tocdepth', 'nosearch', 'private', 'public', 'meta')
# Directives whose body is prose. The value says what becomes of their argument: None drops it, '' reads it as
# the body's first line, otherwise it is shown formatted as its own paragraph.
_RST_PROSE_DIRECTIVES: dict[str, str | None] = {
    'note': '', 'warning': '', 'tip': '', 'hint': '', 'important': '', 'attention': '', 'caution': '',
    'danger': '', 'error': '', 'seealso': '', 'impl-detail': '', 'epigraph': '', 'highlights': '',
    'pull-quote': '', 'container': None, 'only': None, 'compound': None, 'hlist': None, 'glossary': None,
    'centered': '{}', 'admonition': '{}', 'topic': '{}', 'sidebar': '{}', 'rubric': '{}',
    'versionadded': 'New in version {}.', 'versionchanged': 'Changed in version {}.',
    'deprecated': 'Deprecated since version {}.', 'deprecated-removed': 'Deprecated since version {}.',
}
# Object descriptions: the signature becomes a heading line, the body is prose.
_RST_SIGNATURES = {
    'function', 'method', 'class', 'data', 'attribute', 'exception', 'decorator', 'decoratormethod',
    'classmethod', 'staticmethod', 'abstractmethod', 'coroutinefunction', 'coroutinemethod', 'module-level',
    'describe', 'object', 'option', 'cmdoption', 'envvar', 'opcode', 'pdbcommand', 'fixer', '2to3fixer',
    'macro', 'type', 'struct', 'union', 'enum', 'member', 'var', 'enumerator',
}

_RST_ROLE = re.compile(r':(?:[\w.+-]+:)*[\w.+-]+:`((?:[^`\\]|\\.)+)`')
_RST_LINK = re.compile(r'`([^`<]*?)\s*<([^<>`]*)>`__?')
_RST_REF = re.compile(r'`([^`]+)`__?(?!\w)')
_RST_LITERAL = re.compile(r'``(.+?)``', re.S)
_RST_INTERPRETED = re.compile(r'`([^`]+)`')
_RST_STRONG = re.compile(r'(?<![\w*\\])\*\*(?=\S)(.+?)(?<=\S)\*\*(?![\w*])', re.S)
_RST_EMPHASIS = re.compile(r'(?<![\w*\\])\*(?=[^\s*])([^*\n]+?)(?<=\S)\*(?![\w*])')
_RST_FOOTNOTE_REF = re.compile(r'\s*\[(?:#[\w-]*|\d+|\*)\]_')
_RST_SUBSTITUTION = re.compile(r'\|(\w[\w.-]*)\|_{0,2}')


def _rst_role_text(m: re.Match) -> str:
  role = m.group(0)[1:m.group(0).index('`') - 1]
  text = m.group(1).replace('\\', '')
  if role in ('rfc', 'pep'):
    return f'{role.upper()} {text}'
  link = re.fullmatch(r'(.*?)\s*<([^<>]*)>', text, re.S)
  if link and link.group(1):
    return link.group(1)
  text = link.group(2) if link else text
  text = text.lstrip('!')
  if text.startswith('~') or (text.startswith('_') and '.' in text):   # ~a.b.c and SQLAlchemy's _orm.X: last part
    text = text.lstrip('~').rsplit('.', 1)[-1]
  return text.lstrip('.')


def rst_inline(text: str) -> str:
  """reST inline markup to plain text: roles, links, literals, emphasis, footnote references."""
  keep = _Protect()
  text = _RST_LITERAL.sub(lambda m: keep.put(m.group(1)), text)
  text = _RST_ROLE.sub(lambda m: keep.put(_rst_role_text(m)), text)
  text = _RST_LINK.sub(lambda m: keep.put(m.group(1) or m.group(2)), text)
  text = _RST_REF.sub(lambda m: keep.put(m.group(1)), text)
  text = _RST_INTERPRETED.sub(lambda m: keep.put(m.group(1)), text)
  text = _RST_STRONG.sub(r'\1', text)
  text = _RST_EMPHASIS.sub(r'\1', text)
  text = _RST_FOOTNOTE_REF.sub('', text)
  text = _RST_SUBSTITUTION.sub(r'\1', text)
  text = text.replace('\\ ', '').replace('\\*', '*').replace('\\`', '`').replace('\\\\', '\\')
  return keep.restore(text)


def _rst_prose_line(s: str) -> str:
  """One stripped prose line: field lists lose their colons, line blocks their bar."""
  field = re.fullmatch(r':([\w][\w .-]*):(?:\s+(.*))?', s)
  if field:
    name, value = field.group(1), field.group(2) or ''
    return '' if not value or name.lower() in _RST_META_FIELDS else f'{name}: {value}'
  return s[2:] if s.startswith('| ') else s


def _rst_directive(name: str, arg: str, body: list[str]) -> list[Block]:
  base = name.split(':')[-1]
  head, k = [arg] if arg else [], 0
  while base in _RST_SIGNATURES and k < len(body) and body[k].strip() and not _RST_OPTION.match(body[k].strip()):
    head.append(body[k].strip())                    # more signatures / continued arguments
    k += 1
  while k < len(body) and body[k].strip() and _RST_OPTION.match(body[k].strip()):
    k += 1
  body = textwrap.dedent('\n'.join(body[k:])).split('\n')
  if base in _RST_PROSE_DIRECTIVES:
    shown = _RST_PROSE_DIRECTIVES[base]
    if shown and arg:
      return [Block('prose', rst_inline(shown.format(arg)))] + rst_blocks(body)
    return rst_blocks(([arg] if arg and shown == '' else []) + body)
  if base in _RST_SIGNATURES:
    signature = re.sub(r'\s*\\\n', ' ', '\n'.join(head))
    return ([Block('heading', rst_inline(signature))] if signature else []) + rst_blocks(body)
  return []  # code, tables, images, toctrees, includes, indexes, math, ...: dropped


def rst_blocks(lines: list[str]) -> list[Block]:
  """reST lines to blocks (recursive for directive bodies)."""
  lines = [line.expandtabs(8).rstrip() for line in lines]
  out: list[Block] = []
  para: list[str] = []

  def flush(kind: str = 'prose') -> None:
    if para and para[0].startswith('>>>'):           # a doctest block
      out.append(Block('code', '\n'.join(para)))
    else:
      text = '\n'.join(p for p in (_rst_prose_line(x) for x in para) if p)
      if text:
        out.append(Block(kind, rst_inline(text)))
    para.clear()

  i, n = 0, len(lines)
  para_indent = 0
  while i < n:
    line = lines[i]
    s = line.strip()
    indent = _indent(line)
    if not s:
      flush()
      i += 1
      continue
    if s == '..' or s.startswith('.. '):            # directive, comment, target, footnote, substitution
      flush()
      end = _block_end(lines, i + 1, indent)
      m = _RST_DIRECTIVE.fullmatch(s)
      if m:
        out.extend(_rst_directive(m.group(1).lower(), m.group(2).strip(), lines[i + 1:end]))
      i = end
      continue
    if _RST_ADORNMENT.fullmatch(s):                  # title underline / overline, transition
      if len(para) == 1:
        flush('heading')
      i += 1
      continue
    if (_RST_GRID.match(s) and s.endswith('+')) or _RST_SIMPLE_TABLE.fullmatch(s):   # tables: dropped
      flush()
      borders = 1
      i += 1
      while i < n and lines[i].strip() and not (_RST_SIMPLE_TABLE.fullmatch(lines[i].strip()) and borders >= 2):
        borders += bool(_RST_SIMPLE_TABLE.fullmatch(lines[i].strip()))
        i += 1
      i += 1
      continue
    if not para:
      para_indent = indent
    i += 1
    if not s.endswith('::'):
      para.append(s)
      continue
    if s != '::':                                    # "text::" -> "text:"; "text ::" -> "text"
      para.append(s[:-2].rstrip() + ('' if s[:-2].endswith(' ') else ':'))
    flush()
    j = i
    while j < n and not lines[j].strip():
      j += 1
    if j < n and _indent(lines[j]) > para_indent:    # the literal block
      end = _block_end(lines, j, para_indent)
      out.append(Block('code', '\n'.join(lines[j:end])))
      i = end
  flush()
  return out


# ---------------------------------------------------------------------------------------------------------------
# POD: the Perl manual.

_POD_CODE = re.compile(r'([A-Z])(<+)(\s?)')


def _pod_apply(letter: str, inner: str) -> str:
  if letter in 'XZ':
    return ''
  if letter == 'E':
    if re.fullmatch(r'0x[0-9a-fA-F]+|\d+', inner):
      return chr(int(inner, 16 if inner.startswith('0x') else 10))
    named = {'verbar': '|', 'sol': '/', **{k: chr(v) for k, v in html.entities.name2codepoint.items()}}
    return named.get(inner, inner)
  if letter == 'L':
    if '|' in inner:
      return inner.split('|', 1)[0]
    if '://' in inner:
      return inner
    m = re.fullmatch(r'([^/"]*)/"?([^"]*)"?', inner)
    if m:
      return f'"{m.group(2)}" in {m.group(1)}' if m.group(1) else f'"{m.group(2)}"'
    return inner.strip('"')
  return inner  # B I C F S and unknown codes: their text


def _pod_parse(s: str, i: int, close: str) -> tuple[str, int]:
  buf = []
  while i < len(s):
    if close and s.startswith(close, i) and (len(close) == 1 or s[i - 1].isspace()):
      return ''.join(buf), i + len(close)
    m = _POD_CODE.match(s, i)
    if m and (len(m.group(2)) == 1 or m.group(3)):
      n = len(m.group(2))
      inner, i = _pod_parse(s, m.end() if n > 1 else m.start(3), '>' * n)
      buf.append(_pod_apply(m.group(1), inner.strip() if n > 1 else inner))
      continue
    buf.append(s[i])
    i += 1
  return ''.join(buf), i


def pod_inline(text: str) -> str:
  """POD formatting codes (B<> I<> C<> L<> E<> ..., also C<< >>) to plain text."""
  return _pod_parse(text, 0, '')[0]


def pod_blocks(text: str) -> list[Block]:
  out: list[Block] = []
  skipping = ''        # the format of an =begin block being skipped
  in_cut = True        # text before the first command is not POD (the code of a .pm file)
  bullet = ''
  for para in _paragraphs(text.expandtabs(8)):
    first = para[0]
    joined = '\n'.join(para)
    if first.startswith('='):
      cmd = first[1:].split(None, 1)[0] if len(first) > 1 else ''
      rest = joined[len(cmd) + 1:].strip()
      in_cut = cmd == 'cut'
      if skipping:
        skipping = '' if cmd == 'end' else skipping
      elif cmd.startswith('head'):
        out.append(Block('heading', pod_inline(rest)))
      elif cmd == 'item':
        if rest in ('*', '-', 'o', '') or re.fullmatch(r'\d+\.?', rest):
          bullet = '- ' if not rest[:1].isdigit() else rest.rstrip('.') + '. '
        elif rest.startswith('* '):
          out.append(Block('prose', '- ' + pod_inline(rest[2:])))
        else:
          out.append(Block('heading', pod_inline(rest)))
      elif cmd == 'begin':
        skipping = (rest.split() or ['?'])[0]
      continue
    if in_cut or skipping:
      continue
    if first[:1].isspace():
      out.append(Block('code', joined))
    else:
      out.append(Block('prose', bullet + pod_inline(joined)))
    bullet = ''
  return out


# ---------------------------------------------------------------------------------------------------------------
# AsciiDoc: the Git manual.

_ADOC_ATTRIBUTES = {'litdd': '--', 'tilde': '~', 'caret': '^', 'apostrophe': "'", 'backtick': '`', 'empty': '',
                    'startsb': '[', 'endsb': ']', 'plus': '+', 'nbsp': ' ', 'sp': ' ', 'asterisk': '*',
                    'vbar': '|', 'amp': '&', 'lt': '<', 'gt': '>', 'brvbar': '|', 'two-colons': '::',
                    'two-semicolons': ';;', 'cpp': 'C++'}
_ADOC_UNDERLINE = re.compile(r'([=\-~^+])\1+')
_ADOC_SKIP_LINE = re.compile(r'//|(include|ifdef|ifndef|endif|ifeval)::|\[.*\]$|:[\w-]+:')
_ADOC_LABEL = re.compile(r'(\S.*?)(::|;;)')


def _adoc_delimiter(s: str) -> str:
  """For a block delimiter line: 'code' (listing, literal), 'drop' (passthrough, comment, table) or 'open' (open,
  example, sidebar, quote: content kept); '' for other lines."""
  run = s[:1] if len(s) >= 4 and len(set(s)) == 1 else ''
  if run and run in '-.':
    return 'code'
  if (run and run in '+/') or s.startswith('|==='):
    return 'drop'
  return 'open' if s == '--' or (run and run in '=*_') else ''


def adoc_inline(text: str) -> str:
  """AsciiDoc inline markup to plain text."""
  text = re.sub(r'\{([\w-]+)\}', lambda m: _ADOC_ATTRIBUTES.get(m.group(1), m.group(0)), text)
  text = re.sub(r'linkgit:([\w.-]+)\[(\d)\]', r'\1(\2)', text)
  text = re.sub(r'(?:link:|(?=https?://))(\S+?)\[([^\]]*)\]', lambda m: m.group(2) or m.group(1), text)
  text = re.sub(r'<<([^,>]+),\s*([^>]+)>>', r'\2', text)
  text = re.sub(r'<<([^>]+)>>', r'\1', text)
  text = re.sub(r'footnote:\[([^\]]*)\]', r' (\1)', text)
  text = re.sub(r'pass:\w*\[([^\]]*)\]', r'\1', text)
  text = re.sub(r'\[\[[^\]]*\]\]', '', text)
  text = re.sub(r'`([^`\n]+)`', r'\1', text)
  text = re.sub(r"(?<![\w'])'([^'\n]+?)'(?![\w'])", r'\1', text)
  text = re.sub(r'(?<![\w*])\*([^*\n]+?)\*(?![\w*])', r'\1', text)
  text = re.sub(r'(?<![\w+])\+([^+\n]+?)\+(?![\w+])', r'\1', text)
  return re.sub(r'(?<![\w_])_([^_\n]+?)_(?![\w_])', r'\1', text)


def adoc_blocks(text: str) -> list[Block]:
  lines = [line.rstrip() for line in text.expandtabs(8).split('\n')]
  out: list[Block] = []
  para: list[str] = []

  def flush(kind: str = 'prose') -> None:
    if para:
      joined = '\n'.join(para)
      out.append(Block('code', joined) if para[0][:1].isspace() else Block(kind, adoc_inline(joined)))
    para.clear()

  i, n = 0, len(lines)
  while i < n:
    line, s = lines[i], lines[i].strip()
    i += 1
    if len(para) == 1 and _ADOC_UNDERLINE.fullmatch(s) and abs(len(s) - len(para[0].strip())) <= 2:
      flush('heading')                 # a two-line title
      continue
    delim = _adoc_delimiter(s)
    if delim in ('code', 'drop'):
      flush()
      end = i
      while end < n and lines[end].strip() != s:
        end += 1
      if delim == 'code':
        out.append(Block('code', '\n'.join(lines[i:end])))
      i = end + 1
    elif delim == 'open' or not s or s == '+':
      flush()
    elif _ADOC_SKIP_LINE.match(s):
      continue
    elif re.match(r'=+ \S', s) and not para:
      para.append(s.strip('= '))
      flush('heading')
    elif _ADOC_LABEL.fullmatch(s) and not line[:1].isspace():
      flush()
      para.append(s[:-2])
    else:
      para.append(line)
  flush()
  return out


# ---------------------------------------------------------------------------------------------------------------
# Vim help files.

def vim_inline(text: str) -> str:
  """Vim help markup to plain text: *tags* removed, |links| and `code` unwrapped, column headers' ~ dropped."""
  text = re.sub(r'(^|\s)\*[^*\s|]+\*(?=\s|$)', r'\1', text, flags=re.M)
  text = re.sub(r'\|([^|\s]+)\|', r'\1', text)
  text = re.sub(r'`([^`\n]+)`', r'\1', text)
  return re.sub(r'\s~$', '', text, flags=re.M)


def vimhelp_blocks(text: str) -> list[Block]:
  lines = [line.rstrip() for line in text.split('\n')]
  out: list[Block] = []
  para: list[str] = []
  after_separator = False

  def flush() -> None:
    nonlocal after_separator
    joined = vim_inline('\n'.join(para))
    if joined.strip():   # a one-line paragraph right after a ==== line is a section title
      out.append(Block('heading' if after_separator and len(para) == 1 else 'prose', joined))
      after_separator = False
    para.clear()

  i, n = 0, len(lines)
  while i < n:
    line = lines[i]
    i += 1
    if (i == 1 and re.match(r'\*[\w.-]+\.txt\*', line)) or re.fullmatch(r'\s*vim:.*:', line):
      continue
    if not line.strip() or re.fullmatch(r'[=\-]{10,}', line):
      flush()
      after_separator = after_separator or bool(line.strip())
      continue
    if line == '>' or line.endswith(' >') or line.endswith('\t>'):     # an example follows
      if line.rstrip('>').strip():
        para.append(line.rstrip('>').rstrip())
      flush()
      start = i
      while i < n and (not lines[i].strip() or lines[i][:1].isspace()) and not lines[i].startswith('<'):
        i += 1
      out.append(Block('code', '\n'.join(lines[start:i])))
      if i < n and lines[i].startswith('<'):
        lines[i] = lines[i][1:]
      continue
    para.append(line)
  flush()
  return out


# ---------------------------------------------------------------------------------------------------------------
# Plain text (the Milton works): paragraphs at blank lines, line breaks kept (verse).

def plain_blocks(text: str) -> list[Block]:
  return [Block('prose', '\n'.join(p)) for p in _paragraphs(text)]


# converter name -> (text -> raw blocks); `clean_blocks` applies the shared rules afterwards.
CONVERTERS = {
    'rst': lambda text: rst_blocks(text.split('\n')),
    'pod': pod_blocks,
    'html': html_blocks,
    'asciidoc': adoc_blocks,
    'vimhelp': vimhelp_blocks,
    'plain': plain_blocks,
}


def decode(data: bytes) -> str:
  """UTF-8 text (Latin-1 when it is not UTF-8), with Unix newlines and no BOM."""
  try:
    text = data.decode('utf-8')
  except UnicodeDecodeError:
    text = data.decode('latin-1')
  return text.lstrip('\ufeff').replace('\r\n', '\n').replace('\r', '\n')
