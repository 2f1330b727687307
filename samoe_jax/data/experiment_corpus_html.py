"""The experiment corpus's HTML converter: PostgreSQL, SQLite, Django, Apache and Exim manuals, the Debian handbook
and reference (standard library html.parser; see experiment_corpus_sources.py for the shared rules).
"""

from __future__ import annotations

import html.parser

from samoe_jax.data.experiment_corpus_blocks import Block

_HTML_SKIP_TAGS = {'head', 'script', 'style', 'noscript', 'object'}
# Navigation, tables of contents, sidebars, search boxes and anchors of the page layouts of the HTML sources:
# DocBook (PostgreSQL, Debian reference, Exim), Publican (Debian handbook), Sphinx (Django), SQLite and Apache.
_HTML_SKIP_CLASSES = {'navheader', 'navfooter', 'toc', 'docnav', 'list-of-tables', 'list-of-figures',
                      'list-of-examples', 'indexterm', 'legalnotice', 'revhistory', 'sphinxsidebar', 'headerlink',
                      'nav', 'related', 'footer', 'menu', 'searchmenu', 'tagline', 'toplang', 'bottomlang', 'up',
                      'top', 'left_bar', 'right_bar'}
_HTML_SKIP_IDS = {'banner', 'title', 'hd', 'ft', 'sidebar', 'searchbox', 'global-nav', 'page-header', 'path',
                  'quickview', 'footer', 'toc'}
_HTML_VOID = {'br', 'hr', 'img', 'meta', 'link', 'input', 'col', 'area', 'base', 'wbr', 'param', 'source'}
_HTML_BLOCKS = {'p', 'div', 'li', 'dt', 'dd', 'pre', 'table', 'tr', 'blockquote', 'ul', 'ol', 'dl', 'hr',
                'section', 'figure', 'caption', 'body', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6'}


class _HtmlText(html.parser.HTMLParser):
  """Collects blocks from well-formed (X)HTML; skipped elements are tracked on the open-element stack."""

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.blocks: list[Block] = []
    self.stack: list[tuple[str, bool]] = []   # (tag, skipped)
    self.buf: list[str] = []
    self.kind = 'prose'
    self.prefix = ''

  def _skipped(self) -> bool:
    return bool(self.stack) and self.stack[-1][1]

  def _flush(self) -> None:
    text = ''.join(self.buf)
    if self.kind != 'code':
      text = '\n'.join(' '.join(line.split()) for line in text.split('\n')).strip()
    if text.strip():
      self.blocks.append(Block(self.kind, self.prefix + text if self.kind != 'code' else text))
      self.prefix = ''
    self.buf, self.kind = [], 'prose'

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    classes = set((attrs.get('class') or '').split())
    skip = (self._skipped() or tag in _HTML_SKIP_TAGS or bool(classes & _HTML_SKIP_CLASSES)
            or attrs.get('id') in _HTML_SKIP_IDS)
    if tag in _HTML_VOID:
      if tag == 'br' and not skip:
        self.buf.append('\n')
      return
    self.stack.append((tag, skip))
    if skip:
      return
    if tag in _HTML_BLOCKS:
      self._flush()
      self.kind = 'heading' if tag[0] == 'h' and tag[1:].isdigit() else 'code' if tag == 'pre' else 'prose'
      if tag == 'li':
        self.prefix = '- '
    elif tag in ('td', 'th'):
      self.buf.append(' ')

  def handle_endtag(self, tag):
    if tag in _HTML_VOID or not any(t == tag for t, _ in self.stack):
      return
    while self.stack:
      open_tag, skip = self.stack.pop()
      if open_tag == tag:
        break
    if not skip and tag in _HTML_BLOCKS:
      self._flush()

  def handle_data(self, data):
    if not self._skipped():
      self.buf.append(data if any(tag == 'pre' for tag, _ in self.stack) else data.replace('\n', ' '))


def html_blocks(text: str) -> list[Block]:
  parser = _HtmlText()
  parser.feed(text)
  parser.close()
  parser._flush()  # pylint: disable=protected-access
  return parser.blocks
