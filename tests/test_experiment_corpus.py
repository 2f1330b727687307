"""Tests of the experiment corpus builder (samoe_jax.data.experiment_corpus): the markup converters on inline
fixtures, document splitting, the validation split, the reproducible writer, the sha256 check and the output
directory guard, and one end-to-end build from a tiny hand-made .deb (no downloads, no apt)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import random
import tarfile

import pytest

from samoe_jax.data import experiment_corpus as ec
from samoe_jax.data import experiment_corpus_sources as S
from samoe_jax.data.experiment_corpus_blocks import Block

RST = """\
.. SPDX-License-Identifier: GPL-2.0

.. _intro:

============
Introduction
============

:Author: Jane Doe
:orphan:

This is **bold**, *emphasis*, ``literal``, :func:`os.path.join`, :ref:`the guide <guide>`,
`Python <https://python.org>`_ and :pep:`8` [#]_.

.. note::
   Be *careful*.

.. code-block:: python

   print('dropped')

Run it like this::

    make install

.. toctree::
   :maxdepth: 2

   other

=====  =====
a      b
=====  =====
1      2
=====  =====

.. function:: spam(eggs, \\
              ham)
   :noindex:

   Return :class:`~a.b.Spam`.

   .. versionadded:: 3.2
"""

RST_TEXT = """\
Introduction

Author: Jane Doe

This is bold, emphasis, literal, os.path.join, the guide,
Python and PEP 8.

Be careful.

Run it like this:

    make install

spam(eggs, ham)

Return Spam.

New in version 3.2."""

POD = """\
=head1 NAME

perlfoo - a B<bold> test

=head2 Methods

=over 4

=item *

Use C<< $a->b >> and L<perlfunc/open>, L<the docs|perldoc>, E<lt>tagE<gt>.

=item new

Returns I<an object>.

=back

    my $x = new Foo;

=cut

sub ignored { return 1; }

=pod

Back in POD.
"""

POD_TEXT = """\
NAME

perlfoo - a bold test

Methods

- Use $a->b and "open" in perlfunc, the docs, <tag>.

new

Returns an object.

    my $x = new Foo;

Back in POD."""

HTML = """\
<html><head><title>T</title><style>p {}</style></head><body>
<div class="navheader"><a href="x">Prev</a> <a href="y">Next</a></div>
<h2 class="title">2.6. Joins &amp; Tables</h2>
<p>Thus   far, our <em>queries</em>
have only accessed one table.<br/>A new line.</p>
<ul><li><p>first item</p></li><li>second item</li></ul>
<pre class="programlisting">SELECT name
    FROM weather;</pre>
<div class="navfooter">Home</div></body></html>"""

HTML_TEXT = """\
2.6. Joins & Tables

Thus far, our queries have only accessed one table.
A new line.

- first item

- second item

    SELECT name
        FROM weather;"""

ASCIIDOC = """\
git-frob(1)
===========

NAME
----
git-frob - Frobnicate the 'index'

[verse]
'git frob' [--all]

DESCRIPTION
-----------
Frobs `HEAD`, see linkgit:git-log[1] and <<options,the options>>{litdd}really.

------------
$ git frob --all
------------

--all::
\tFrob every ref.

include::frob-options.txt[]
"""

ASCIIDOC_TEXT = """\
git-frob(1)

NAME

git-frob - Frobnicate the index

git frob [--all]

DESCRIPTION

Frobs HEAD, see git-log(1) and the options--really.

    $ git frob --all

--all
Frob every ref."""

VIMHELP = """\
*usr_99.txt*\tFor Vim version 9.0.  Last change: 2022 May 1

==============================================================================
*99.1*\tThe vimrc file\t\t\t\t\t*vimrc-intro*

Set the 'incsearch' option, see |options| and `:help`: >

\tset incsearch
<
That is all.

 vim:tw=78:ts=8:noet:ft=help:norl:
"""

VIMHELP_TEXT = """\
The vimrc file

Set the 'incsearch' option, see options and :help:

    set incsearch

That is all."""


@pytest.mark.parametrize('converter,source,expected', [
    ('rst', RST, RST_TEXT),
    ('pod', POD, POD_TEXT),
    ('html', HTML, HTML_TEXT),
    ('asciidoc', ASCIIDOC, ASCIIDOC_TEXT),
    ('vimhelp', VIMHELP, VIMHELP_TEXT),
    ('plain', 'Of Man\'s first disobedience,  and the fruit\r\n   Of that forbidden tree\r\n\r\n\r\nBOOK II',
     "Of Man's first disobedience, and the fruit\nOf that forbidden tree\n\nBOOK II"),
])
def test_converters(converter, source, expected):
  assert S.to_text(converter, S.decode(source.encode('utf-8'))) == expected
  assert converter in {s.converter for s in ec.SOURCES}


def test_inline_markup():
  assert S.rst_inline(':c:func:`kmalloc()` and :doc:`/admin-guide/index` and `x`__ and |version|') == (
      'kmalloc() and /admin-guide/index and x and version')
  assert S.rst_inline('``*not emphasis*`` but *this* is; a * b * c stays') == (
      '*not emphasis* but this is; a * b * c stays')
  assert S.pod_inline('C<E<lt>=E<gt>> B<I<nested>> X<index> L<https://perl.org> S<no break>') == (
      '<=> nested  https://perl.org no break')
  assert S.adoc_inline("`git add` a 'path' *now* {caret}") == 'git add a path now ^'


def test_clean_blocks_drops_long_code_and_symbol_heavy_blocks():
  long_code = Block('code', '\n'.join(f'call_function_{i}()' for i in range(S.MAX_CODE_LINES + 1)))
  short_code = Block('code', '\tcall_function()\n\treturn value')
  table = Block('prose', '+----+----+\n| 1  | 2  |\n+----+----+')
  out = S.clean_blocks([Block('heading', 'Title'), long_code, Block('prose', 'Some   words\n  here.'), table,
                        short_code])
  assert out == [Block('heading', 'Title'), Block('prose', 'Some words\nhere.'),
                 Block('code', '    call_function()\n    return value')]
  # Consecutive code blocks (POD verbatim paragraphs) count as one block.
  halves = [Block('code', '\n'.join(['line of code'] * (S.MAX_CODE_LINES // 2)))] * 2
  assert S.clean_blocks(halves) == []


def test_split_document_at_headings():
  blocks = [Block('heading', 'A'), Block('prose', 'a' * 40), Block('heading', 'B'), Block('prose', 'b' * 40),
            Block('prose', 'c' * 40), Block('heading', 'C'), Block('prose', 'd' * 10)]
  assert ec.split_document(blocks, max_chars=1000) == ['\n\n'.join(b.text for b in blocks)]
  sections = ['A\n\n' + 'a' * 40, '\n\n'.join(['B', 'b' * 40, 'c' * 40]), 'C\n\n' + 'd' * 10]   # 43, 85, 13
  assert ec.split_document(blocks, max_chars=100) == [sections[0], sections[1] + '\n\n' + sections[2]]
  assert ec.split_document(blocks, max_chars=99) == sections
  # No heading to cut at: the text stays whole.
  assert ec.split_document([Block('prose', 'x' * 300)], max_chars=100) == ['x' * 300]
  assert ec.split_document([]) == []


def test_file_documents_names_parts_and_drops_fragments(monkeypatch):
  src = dataclasses.replace(ec.SOURCES[0], name='pkg', converter='plain')
  monkeypatch.setattr(ec, 'MAX_DOC_CHARS', 10_000)
  assert ec.file_documents(src, 'tiny.txt', b'Too short.') == []
  assert ec.file_documents(src, 'cjk.txt', ('\u6f22\u5b57' * 400).encode('utf-8')) == []
  docs = ec.file_documents(src, 'a/b.txt', ('word ' * 200).encode())
  assert [d['source'] for d in docs] == ['pkg:a/b.txt']


def test_validation_split_is_stable_and_order_independent():
  files = [f'big:doc{i}.rst' for i in range(5000)] + ['small:one.txt', 'small:two.txt']
  held = ec.validation_files(files)
  shuffled = files[:]
  random.Random(0).shuffle(shuffled)
  assert ec.validation_files(shuffled) == held
  assert ec.validation_files(files) == held
  big = [f for f in held if f.startswith('big:')]
  assert 0.015 < len(big) / 5000 < 0.025
  assert len([f for f in held if f.startswith('small:')]) == 1   # every source contributes
  # Documents follow their file (all parts of one file land in one split) and keep their order.
  docs = [{'source': f, 'text': f} for f in files[:300]] + [{'source': 'big:doc7.rst#2', 'text': 'x'}]
  splits = ec.assign_splits(docs)
  assert len(splits['train']) + len(splits['validation']) == len(docs)
  split_of = {d['source']: s for s in ec.SPLITS for d in splits[s]}
  assert split_of['big:doc7.rst#2'] == split_of['big:doc7.rst']
  assert splits['train'] == [d for d in docs if split_of[d['source']] == 'train']


def test_writer_is_byte_reproducible(tmp_path):
  records = [{'text': 'caf\u00e9\n\nsecond paragraph', 'source': 'p:a'}, {'source': 'p:b', 'text': 'x'}]
  ec.write_jsonl_gz(str(tmp_path / 'a.jsonl.gz'), records)
  ec.write_jsonl_gz(str(tmp_path / 'b.jsonl.gz'), [dict(reversed(list(r.items()))) for r in records])
  a, b = (tmp_path / 'a.jsonl.gz').read_bytes(), (tmp_path / 'b.jsonl.gz').read_bytes()
  assert a == b
  assert a[4:8] == b'\0\0\0\0'                                   # gzip mtime 0
  assert gzip.decompress(a).decode('utf-8').splitlines()[0] == (
      '{"source": "p:a", "text": "caf\u00e9\\n\\nsecond paragraph"}')
  assert ec.read_jsonl_gz(str(tmp_path / 'a.jsonl.gz')) == records


def test_sha256_mismatch_message(tmp_path):
  path = tmp_path / 'pkg_1.0_all.deb'
  path.write_bytes(b'not the package')
  src = dataclasses.replace(ec.SOURCES[1], filename=path.name)
  with pytest.raises(ec.CorpusError) as e:
    ec.fetch(src, str(tmp_path))    # present in the download dir: verified, never downloaded
  msg = str(e.value)
  assert f'{src.name}={src.version}' in msg and src.sha256 in msg
  assert hashlib.sha256(b'not the package').hexdigest() in msg
  assert 'Debian mirror' in msg and 'SOURCES in samoe_jax/data/experiment_corpus.py' in msg


def _ar_member(name: str, data: bytes) -> bytes:
  header = f'{name + "/":<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n'.encode('ascii')
  return header + data + (b'\n' if len(data) % 2 else b'')


def _fake_deb(files: dict[str, bytes]) -> bytes:
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode='w:xz') as tar:
    for name, data in sorted(files.items()):
      info = tarfile.TarInfo('./' + name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return (b'!<arch>\n' + _ar_member('debian-binary', b'2.0\n') + _ar_member('control.tar.xz', b'')
          + _ar_member('data.tar.xz', buf.getvalue()))


COPYRIGHT = b"""Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 2001-2024 Jane Doe
           2010 John Roe
License: GPL-2

Files: debian/*
Copyright: 2020 Packager
License: GPL-2+
"""


def _fake_source(tmp_path) -> ec.Source:
  files = {'usr/share/doc/fake-doc/copyright': COPYRIGHT}
  words = ('the kernel schedules tasks on every processor while memory pages move between the caches and '
           'main memory so that each program sees a consistent view of its data').split()
  rng = random.Random(0)
  for i in range(60):
    paras = [' '.join(rng.choice(words) for _ in range(60)) + '.' for _ in range(4)]
    files[f'usr/share/doc/fake-doc/guide/part{i:02d}.rst'] = (
        f'Part {i}\n=======\n\n' + '\n\n'.join(paras)).encode()
  deb = tmp_path / 'dl' / 'fake-doc_1.0-1_all.deb'
  deb.parent.mkdir()
  deb.write_bytes(_fake_deb(files))
  return ec.Source('fake-doc', '1.0-1', 'deb', deb.name, hashlib.sha256(deb.read_bytes()).hexdigest(), 'GPL-2',
                  'usr/share/doc/fake-doc/copyright', '*', '', '', 'usr/share/doc/fake-doc/', r'.+\.rst', '',
                  'rst', 'A fake guide')


def test_build_end_to_end_reproducible_and_guarded(tmp_path, monkeypatch):
  src = _fake_source(tmp_path)
  monkeypatch.setattr(ec, 'SP_VOCAB_SIZE', 300)
  monkeypatch.setattr(ec, 'MIN_TRAIN_TOKENS', 1000)
  dl = str(tmp_path / 'dl')
  out1, out2 = str(tmp_path / 'c1'), str(tmp_path / 'c2')
  m1 = ec.build(out1, dl, srcs=(src,))
  m2 = ec.build(out2, dl, srcs=(src,))
  assert m1['files'] == m2['files']
  assert sorted(os.listdir(out1)) == sorted(list(ec.OUTPUTS) + ['licenses', 'manifest.json'])
  assert not [p for p in os.listdir(tmp_path) if '.partial-' in p or '.old-' in p]
  train = ec.read_jsonl_gz(os.path.join(out1, 'train.jsonl.gz'))
  val = ec.read_jsonl_gz(os.path.join(out1, 'validation.jsonl.gz'))
  assert len(train) + len(val) == 60 and val and train[0]['source'].startswith('fake-doc:guide/part')
  assert m1['splits']['train']['tokens'] >= 1000
  assert m1['sources'][0]['holders'] == ['2001-2024 Jane Doe', '2010 John Roe']
  attribution = open(os.path.join(out1, 'ATTRIBUTION.md'), encoding='utf-8').read()
  assert 'GPL-2' in attribution and 'Jane Doe' in attribution and 'research' in attribution
  with open(os.path.join(out1, 'manifest.json'), encoding='utf-8') as f:
    assert json.load(f) == m1

  # The same build again: nothing to do. A different build (other settings) is refused without --force.
  assert ec.check_out_dir(out1, force=False, srcs=(src,))
  monkeypatch.setattr(ec, 'VALIDATION_FRACTION', 0.5)
  with pytest.raises(ec.CorpusError, match='refusing to overwrite'):
    ec.build(out1, dl, srcs=(src,))
  assert ec.read_manifest(out1) == m1
  m3 = ec.build(out1, dl, force=True, srcs=(src,))
  assert m3['build']['settings']['validation_fraction'] == 0.5 and ec.read_manifest(out1) == m3

  # A non-empty directory without a manifest is refused too; too few tokens fail before anything is written.
  (tmp_path / 'other').mkdir()
  (tmp_path / 'other' / 'notes.txt').write_text('mine')
  with pytest.raises(ec.CorpusError, match='no manifest.json'):
    ec.build(str(tmp_path / 'other'), dl, srcs=(src,))
  monkeypatch.setattr(ec, 'MIN_TRAIN_TOKENS', 10**9)
  with pytest.raises(ec.CorpusError, match='fewer than'):
    ec.build(str(tmp_path / 'c4'), dl, srcs=(src,))
  assert not os.path.exists(tmp_path / 'c4')
  assert not [p for p in os.listdir(tmp_path) if '.partial-' in p]
