"""Trains the shipped SentencePiece model on the training split of the embedded Shakespeare corpus.

  python -m samoe_jax.data.train_tokenizer            # rewrites samoe_jax/data/vocab/shakespeare_sp8k.{model,vocab}

Unigram, 8,192 pieces, seqio's id layout (pad=0, eos=1, unk=2, no bos), byte fallback, full character coverage,
and newlines kept as a piece of their own (identity normalisation, no whitespace collapsing). One document
(passage) is one training sentence. Single-threaded with a fixed seed, so the output is byte-identical run to run
(~30 s on 2 cores).
"""

from __future__ import annotations

import argparse
import io
import os
import sys

from samoe_jax import cli
from samoe_jax.data import documents

VOCAB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'vocab')
DEFAULT_PREFIX = os.path.join(VOCAB_DIR, 'shakespeare_sp8k')
DEFAULT_CORPUS = os.path.join(documents.CORPUS_DIR, 'shakespeare', 'train.txt.gz')
SEED = 0


def trainer_flags(vocab_size: int, model_type: str) -> dict:
  """The SentencePieceTrainer arguments (everything that determines the model)."""
  return dict(
      vocab_size=vocab_size,
      model_type=model_type,
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      byte_fallback=True,
      character_coverage=1.0,
      user_defined_symbols=['\n'],
      remove_extra_whitespaces=False,
      normalization_rule_name='identity',
      max_sentence_length=1 << 16,   # bytes; longer passages would be silently skipped
      input_sentence_size=0,          # use every passage (no sampling)
      shuffle_input_sentence=False,
      num_threads=1,                  # the unigram EM sums in a fixed order -> byte-identical models
      minloglevel=2,
  )


def train(corpus: str = DEFAULT_CORPUS, prefix: str = DEFAULT_PREFIX, vocab_size: int = 8192,
          model_type: str = 'unigram') -> str:
  """Trains a model on the documents of `corpus`; writes `prefix`.model and `prefix`.vocab; returns the .model path."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  docs = documents.read_documents(corpus)
  spm.set_random_generator_seed(SEED)
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(docs), model_writer=model,
                                 **trainer_flags(vocab_size, model_type))
  os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
  with open(prefix + '.model', 'wb') as f:
    f.write(model.getvalue())
  sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
  with open(prefix + '.vocab', 'w', encoding='utf-8') as f:
    for i in range(sp.get_piece_size()):
      piece = sp.id_to_piece(i).replace('\n', '\\n').replace('\t', '\\t')  # one line per piece
      f.write(f'{piece}\t{sp.get_score(i):g}\n')
  return prefix + '.model'


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--corpus', default=DEFAULT_CORPUS, help='a corpus file in the documents.py format')
  parser.add_argument('--prefix', default=DEFAULT_PREFIX, help='output path without .model/.vocab')
  parser.add_argument('--vocab_size', type=int, default=8192)
  parser.add_argument('--model_type', default='unigram', choices=('unigram', 'bpe'))
  args = parser.parse_args(argv)
  with cli.user_errors('samoe_jax.data.train_tokenizer'):   # a missing --corpus, Ctrl-C: one line
    print(train(args.corpus, args.prefix, args.vocab_size, args.model_type))


if __name__ == '__main__':
  sys.exit(main())
