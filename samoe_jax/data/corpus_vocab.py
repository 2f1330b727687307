"""Trains more SentencePiece vocabularies on a built experiment corpus, with the settings of its sp4k model.

  python -m samoe_jax.data.corpus_vocab --corpus=DIR --vocab_size=1024 [--vocab_size=2048 ...]

Each vocabulary trains on the same sha256-chosen sample of DIR/train.jsonl.gz as DIR/sp4k.model
(experiment_corpus.tokenizer_sample) with the same trainer flags (train_tokenizer.trainer_flags, single-threaded:
byte-reproducible; --vocab_size=4096 would give sp4k.model's bytes) and writes

  DIR/spNk.model, DIR/spNk.vocab   N = vocab_size / 1024 (spV for a size that is no multiple of 1024)
  DIR/spNk.json                    vocab_size, flags, sample paragraphs, the model's sha256, tokens per split

The corpus itself (manifest.json and the files it lists) is not changed; its train split must match the manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from samoe_jax import cli
from samoe_jax.data import experiment_corpus as ec
from samoe_jax.data import train_tokenizer


def vocab_name(vocab_size: int) -> str:
  """'sp1k' for 1024, 'sp2k' for 2048, ...; 'sp1000' for a size that is no multiple of 1024."""
  return f'sp{vocab_size // 1024}k' if vocab_size % 1024 == 0 else f'sp{vocab_size}'


def train_vocab(corpus_dir: str, vocab_size: int) -> dict:
  """Trains and writes the `vocab_size` model of the corpus in `corpus_dir`; returns what its .json holds."""
  manifest = ec.read_manifest(corpus_dir)
  if manifest is None:
    raise ec.CorpusError(f'{corpus_dir} holds no experiment corpus (no readable manifest.json)')
  name = vocab_name(vocab_size)
  if f'{name}.model' in manifest['files']:
    raise ec.CorpusError(f'{name}.model is a file of the corpus itself; it is not retrained')
  train_path = os.path.join(corpus_dir, 'train.jsonl.gz')
  if ec.sha256_file(train_path) != manifest['files']['train.jsonl.gz']:
    raise ec.CorpusError(f'{train_path} does not match its manifest.json: rebuild the corpus')
  splits = {s: ec.read_jsonl_gz(os.path.join(corpus_dir, f'{s}.jsonl.gz')) for s in ec.SPLITS}
  prefix = os.path.join(corpus_dir, name)
  sample = ec.train_sentencepiece(splits['train'], prefix, vocab_size)
  model = prefix + '.model'
  tokens = {s: sum(ec.token_counts(model, [d['text'] for d in docs])) for s, docs in splits.items()}
  info = {'file': f'{name}.model', 'vocab_size': vocab_size, 'sample_paragraphs': sample,
          'flags': train_tokenizer.trainer_flags(vocab_size, 'unigram'), 'sha256': ec.sha256_file(model),
          'corpus_train_sha256': manifest['files']['train.jsonl.gz'],
          'tokens': tokens, 'tokens_with_eos': {s: tokens[s] + len(splits[s]) for s in ec.SPLITS}}
  with open(prefix + '.json', 'w', encoding='utf-8') as f:
    json.dump(info, f, indent=1, sort_keys=True)
    f.write('\n')
  return info


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--corpus', required=True, help='a built experiment corpus directory')
  parser.add_argument('--vocab_size', type=int, action='append', required=True, help='pieces; may be repeated')
  args = parser.parse_args(argv)
  prog = 'samoe_jax.data.corpus_vocab'
  try:
    with cli.user_errors(prog):   # Ctrl-C: one line
      for size in args.vocab_size:
        info = train_vocab(args.corpus, size)
        print(f'{info["file"]}: ' + ', '.join(f'{s} {n:,} tokens ({info["tokens_with_eos"][s]:,} with EOS)'
                                               for s, n in info['tokens'].items()))
  except ec.CorpusError as e:
    print(f'{prog}: error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
