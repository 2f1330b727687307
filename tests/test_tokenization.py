"""Tests of the GPT-2 BPE vocabulary (samoe_jax.data.gpt2_vocabulary) and evaluation tokenization
(samoe_jax.evaluation.tokenization): ids against the real r50k_base encoder and the vocabulary file, the seqio
pipeline with data.vocabulary='gpt2', and the context/continuation split and rolling windows against
lm-evaluation-harness's own code run on our tokenizers.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pickle
import shutil

import numpy as np
import pytest

from samoe_jax.config.defaults import get_base_config
from samoe_jax.config import section_checks
from samoe_jax.training.config_checks import validate_config
from samoe_jax.data import documents
from samoe_jax.data import gpt2_vocabulary
from samoe_jax.data import pipeline
from samoe_jax.data import seqio_vocabularies
from samoe_jax.data import vocabularies
from samoe_jax.evaluation import tokenization
from samoe_jax.evaluation.tokenization import EvalTokenizer

import tiktoken  # pylint: disable=g-bad-import-order  # after samoe_jax.data (quiet TF)
import tiktoken.load  # pylint: disable=g-bad-import-order
from lm_eval import utils as lm_utils  # pylint: disable=g-bad-import-order
from lm_eval.api.instance import Instance  # pylint: disable=g-bad-import-order
from lm_eval.api.model import TemplateLM  # pylint: disable=g-bad-import-order

VOCABS = ('sentencepiece', 'byte', 'gpt2')
TOKENIZERS = {name: EvalTokenizer(vocabularies.get_vocabulary(name)) for name in VOCABS}
R50K_URL = 'https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken'

# Unshifted r50k_base ids, computed once with tiktoken's own r50k_base constructor on the shipped file.
R50K_IDS = {
    'Hello world': [15496, 995],
    '!': [0],
    'Question: x\nAnswer: yes': [24361, 25, 2124, 198, 33706, 25, 3763],
    ' naïve café ☃ 42': [41492, 40304, 34719, 225, 5433],
    "It's  two\tspaces\n\nand 12345 numbers?!": [1026, 338, 220, 734, 197, 2777, 2114, 198, 198, 392, 17031, 2231,
                                                 3146, 12248],
    '<|endoftext|>': [27, 91, 437, 1659, 5239, 91, 29],  # literal text, never the special token
}


# ---------------------------------------------------------------------------------------------- GPT-2 vocabulary


@pytest.fixture(scope='module')
def r50k_base(tmp_path_factory):
  """tiktoken's genuine r50k_base Encoding, fed the shipped file through tiktoken's cache (no network: reading
  anything but the cache raises)."""
  cache = tmp_path_factory.mktemp('tiktoken_cache')
  shutil.copy(vocabularies.SHIPPED_GPT2, cache / hashlib.sha1(R50K_URL.encode()).hexdigest())
  mp = pytest.MonkeyPatch()
  mp.setenv('TIKTOKEN_CACHE_DIR', str(cache))
  mp.setattr(tiktoken.load, 'read_file', lambda path: pytest.fail(f'tried to fetch {path}'))
  from tiktoken_ext import openai_public  # pylint: disable=g-import-not-at-top
  try:
    yield tiktoken.Encoding(**openai_public.r50k_base())
  finally:
    mp.undo()


def test_gpt2_ids_are_r50k_base_plus_one(r50k_base):
  vocab = vocabularies.get_vocabulary('gpt2')
  assert gpt2_vocabulary.GPT2_PATTERN == r50k_base._pat_str  # pylint: disable=protected-access
  for text, ids in R50K_IDS.items():
    assert r50k_base.encode_ordinary(text) == ids
    assert vocab.encode(text) == [i + 1 for i in ids]
    assert vocab.decode(vocab.encode(text)) == text
  # By hand from the file: "Hello" has rank 15496 and " world" rank 995, so "Hello world" -> [15497, 996].
  with open(vocabularies.SHIPPED_GPT2, 'rb') as f:
    ranks = dict(line.split() for line in f.read().splitlines())
  assert ranks[base64.b64encode(b'Hello')] == b'15496' and ranks[base64.b64encode(b' world')] == b'995'
  assert ranks[base64.b64encode(b'!')] == b'0' and len(ranks) == 50256
  assert vocab.encode('!') == [1]  # GPT-2's id 0, which padding would otherwise swallow


def test_gpt2_special_ids_sizes_and_round_trip():
  vocab = vocabularies.get_vocabulary('gpt2')
  assert (vocab.vocab_size, vocab.eos_id, vocab.pad_id, vocab.unk_id) == (50258, 50257, 0, None)
  assert gpt2_vocabulary.GPT2_VOCAB_SIZE == section_checks.GPT2_VOCAB_SIZE == vocab.vocab_size
  assert vocabularies.vocabulary_key('gpt2') == vocabularies.vocabulary_key(vocabularies.SHIPPED_GPT2) == 'gpt2'
  text = 'KING.\n\tWhat say you?  Speak!\r\n日本語 🎭 <|endoftext|> done '
  ids = vocab.encode(text)
  assert 0 not in ids and max(ids) < vocab.eos_id and vocab.decode(ids) == text
  # decode stops at EOS and drops padding and the model's padding rows (50258 .. 50303)
  assert vocab.decode([0] + ids + [50300, vocab.eos_id] + ids) == text
  seqio_vocab = seqio_vocabularies.get_seqio_vocabulary('gpt2')   # the seqio tasks' form: same ids
  assert (seqio_vocab.vocab_size, seqio_vocab.eos_id, seqio_vocab.encode(text)) == (50258, 50257, ids)
  assert seqio_vocab.decode([0] + ids + [50300, vocab.eos_id] + ids) == text
  assert seqio_vocab.decode_tf(np.array(ids + [vocab.eos_id, 5], np.int32)).numpy().decode() == text
  assert seqio_vocab.encode_tf(text).numpy().tolist() == ids
  assert seqio_vocab.encode_tf(np.array(['Hello world', '!'])).to_list() == [[15497, 996], [1]]
  for v in (vocab, seqio_vocab):  # seqio/gin deep-copy vocabularies; the file is re-read and re-checked
    copy = pickle.loads(pickle.dumps(v))
    assert copy == v and copy.encode(text) == ids


def test_gpt2_wrong_file_is_refused(tmp_path, monkeypatch):
  fake = tmp_path / 'gpt2.tiktoken'
  fake.write_bytes(b''.join(base64.b64encode(bytes([b])) + b' %d\n' % b for b in range(256)))
  with pytest.raises(ValueError, match=r'gpt2\.tiktoken has sha256 [0-9a-f]{64}, not 306cd27f.*openai-whisper'):
    gpt2_vocabulary.Gpt2Vocabulary(str(fake))
  monkeypatch.setattr(vocabularies, 'SHIPPED_GPT2', str(fake))  # a replaced shipped file, through the config name
  with pytest.raises(ValueError, match=str(fake)):
    vocabularies.get_vocabulary('gpt2')
  monkeypatch.undo()
  # the same file given by path is a valid 256-token BPE vocabulary of its own
  byte_bpe = vocabularies.get_vocabulary(str(fake))
  assert (byte_bpe.vocab_size, byte_bpe.eos_id) == (258, 257)
  assert byte_bpe.encode('Hi') == [ord('H') + 1, ord('i') + 1]
  digest = hashlib.sha256(fake.read_bytes()).hexdigest()
  assert vocabularies.vocabulary_key(str(fake)) == 'bpe_' + digest[:12]


@pytest.mark.parametrize('content,message', [
    (b'SGVsbG8= 0\nnot-base64! 1\n', r'line 2: .*not "<base64 token> <rank>"'),
    (b'SGVsbG8= 0\nd29ybGQ= 5\n', r'ranks of its 2 tokens are not 0 \.\. 1'),
    (b'SGVsbG8= 0\nSGVsbG8= 1\n', r"line 2: token b'Hello' appears twice"),
    (b'\n', 'holds no tokens'),
])
def test_malformed_tiktoken_file_names_file_and_line(tmp_path, content, message):
  path = tmp_path / 'bad.tiktoken'
  path.write_bytes(content)
  with pytest.raises(ValueError, match=message) as e:
    vocabularies.get_vocabulary(str(path))
  assert str(path) in str(e.value)


@pytest.mark.parametrize('bad', ['gpt3', '/no/such/file.tiktoken', 'vocab.json'])
def test_bad_vocabulary_name_lists_gpt2_and_tiktoken(bad):
  with pytest.raises(ValueError) as e:
    vocabularies.get_vocabulary(bad)
  assert repr(bad) in str(e.value) and "'gpt2'" in str(e.value) and '.tiktoken' in str(e.value)


def test_validate_model_vocab_size_covers_gpt2():
  c = get_base_config()
  c.data.vocabulary = 'gpt2'
  with pytest.raises(ValueError, match=r"model.vocab_size=8192: must be >= 50258 .*data.vocabulary='gpt2'"):
    validate_config(c)
  c.model.vocab_size = 50304  # 50258 rounded up to a multiple of 128
  validate_config(c)


def test_gpt2_as_data_vocabulary_in_the_seqio_pipeline():
  c = get_base_config().data
  c.task, c.vocabulary, c.seq_len, c.batch_size = 'shakespeare_tiny', 'gpt2', 64, 2
  vocab = vocabularies.get_vocabulary('gpt2')
  batches = pipeline.make_eval_batches(c, 10_000)
  targets = np.concatenate([b['decoder_target_tokens'].reshape(-1) for b in batches])
  weights = np.concatenate([b['decoder_loss_weights'].reshape(-1) for b in batches])
  assert all((b['decoder_input_tokens'][:, 0] == 0).all() for b in batches)
  docs = documents.read_documents(os.path.join(documents.CORPUS_DIR, 'shakespeare_tiny', 'validation.txt'))
  expected = np.concatenate([np.r_[vocab.encode(doc), vocab.eos_id] for doc in docs])
  n = min(len(expected), len(targets))
  np.testing.assert_array_equal(targets[:n], expected[:n])
  ends = np.flatnonzero(targets == vocab.eos_id)
  segments = [targets[a + 1:b] for a, b in zip(np.r_[-1, ends[:-1]], ends)]
  assert len(segments) > 5 and [vocab.decode(s.tolist()) for s in segments] == docs[:len(segments)]
  assert targets.max() < vocab.vocab_size
  assert ((targets == 1) & (weights == 1)).any()  # "!" (GPT-2 id 0) is a weighted target


# ---------------------------------------------------------------------------------------------- the harness's split


class HarnessProbe(TemplateLM):
  """lm_eval's TemplateLM with our encode as tok_encode and our start id as its prefix token; records the token
  requests the harness builds instead of scoring them."""

  def __init__(self, tokenizer: EvalTokenizer):
    super().__init__()
    self.tokenizer_ = tokenizer
    self.seen: list = []

  @property
  def eot_token_id(self) -> int:
    return tokenization.START_ID

  def tok_encode(self, string, add_special_tokens=None, **kwargs):
    del add_special_tokens, kwargs
    return self.tokenizer_.encode(string)

  def _loglikelihood_tokens(self, requests, **kwargs):
    self.seen.extend(requests)
    return [(0.0, True)] * len(requests)

  def loglikelihood_rolling(self, requests, disable_tqdm=False):
    raise NotImplementedError

  def generate_until(self, requests, disable_tqdm=False):
    raise NotImplementedError


def harness_split(tokenizer: EvalTokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
  probe = HarnessProbe(tokenizer)
  probe.loglikelihood([Instance('loglikelihood', {}, (context, continuation), 0)], disable_tqdm=True)
  (_, context_enc, continuation_enc), = probe.seen
  return list(context_enc), list(continuation_enc)


PAIRS = [
    ('Question: x\nAnswer: ', 'yes'),          # trailing space moves to the continuation
    ('Question: Is it?\nAnswer:', ' no'),      # the usual multiple-choice form
    ('', ' yes'),                              # empty context: the prefix (start) token
    ('', 'To be'),
    ('First line\n', 'second line'),           # context ending in a newline
    ('Tabs and spaces \t \n', 'x'),
    ('   ', 'only whitespace before'),
    ('Ünïcödé — ☃ ', 'naïve café 日本 🎭'),    # multi-byte characters on both sides
    ('He said "no', '!" and left.'),
    ('The end.', ''),                          # empty continuation with a context: no ids, as in the harness
]


@pytest.mark.parametrize('name', VOCABS)
@pytest.mark.parametrize('context,continuation', PAIRS)
def test_split_equals_the_harness_encode_pair(name, context, continuation):
  tok = TOKENIZERS[name]
  ours = tok.split_context_continuation(context, continuation)
  theirs = harness_split(tok, context, continuation)
  prefix = [tokenization.START_ID] if context == '' else []  # the harness's prefix token is our start token
  assert theirs == (prefix + ours[0], ours[1])
  assert ours[0] == tok.encode(context.rstrip())
  if context.strip():  # the continuation ids read as the moved whitespace plus the continuation
    assert tok.decode(ours[1]) == context[len(context.rstrip()):] + continuation


def test_split_hand_checked_ids():
  byte, gpt2 = TOKENIZERS['byte'], TOKENIZERS['gpt2']
  ctx, cont = byte.split_context_continuation('Answer: ', 'yes')
  assert ctx == [b + 3 for b in b'Answer:'] and cont == [b + 3 for b in b' yes']
  # GPT-2: "Question: x\nAnswer:" + " yes" -> the r50k ids above split after ':' (25), " yes" = 3763
  assert gpt2.split_context_continuation('Question: x\nAnswer: ', 'yes') == (
      [24362, 26, 2125, 199, 33707, 26], [3764])
  # SentencePiece: the continuation is cut from the whole encoding, so " yes" is '▁ye' 's' (no lone '▁' piece)
  # while encoding " yes" on its own adds the dummy-prefix '▁': the two differ, and the harness uses the first.
  sp = TOKENIZERS['sentencepiece']
  pieces = sp.vocabulary.tokenizer.id_to_piece
  _, cont = sp.split_context_continuation('Answer: ', 'yes')
  assert [pieces(i) for i in cont] == ['\u2581ye', 's'] and sp.encode(' yes') == [sp.encode(' ')[0]] + cont
  assert [pieces(i) for i in sp.split_context_continuation('', ' yes')[1]] == ['\u2581', '\u2581ye', 's']


def test_split_and_tokenizer_bad_input():
  tok = TOKENIZERS['byte']
  with pytest.raises(ValueError, match="context='' and continuation=''"):
    tok.split_context_continuation('', '')
  with pytest.raises(ValueError, match='continuation=None must be a string'):
    tok.split_context_continuation('a', None)
  with pytest.raises(ValueError, match='text=3 must be a string'):
    tok.encode(3)
  with pytest.raises(ValueError, match='must be a vocabulary with encode, decode, eos_id, vocab_size'):
    EvalTokenizer('byte')
  with pytest.raises(ValueError, match='max_len=0 must be an integer >= 1'):
    tok.rolling_windows([5, 6], 0)


# ---------------------------------------------------------------------------------------------- rolling windows


@pytest.mark.parametrize('max_len', [1, 2, 4, 8])
def test_rolling_windows_equal_the_harness(max_len):
  sentinel = -7  # the harness's prefix token; our first window writes it as context []
  for n in (0, 1, 3, 4, 5, 8, 9, 16, 17, 23):
    ids = list(range(100, 100 + n))
    theirs = [lm_utils.make_disjoint_window(w) for w in lm_utils.get_rolling_token_windows(ids, sentinel, max_len, 1)]
    theirs = [([] if ctx == [sentinel] else ctx, pred) for ctx, pred in theirs]
    ours = EvalTokenizer.rolling_windows(ids, max_len)
    assert ours == theirs
    assert [i for _, pred in ours for i in pred] == ids  # every id scored exactly once
    for ctx, pred in ours:  # [0] + ctx + pred, last max_len + 1 kept, minus the last: at most max_len inputs
      assert len(([0] + ctx + pred)[-(max_len + 1):][:-1]) <= max_len and len(ctx) + len(pred) <= max_len + 1
  assert EvalTokenizer.rolling_windows([5, 6, 7, 8, 9], 2) == [([], [5, 6]), ([6], [7, 8]), ([7, 8], [9])]


def test_rolling_windows_of_real_text():
  tok = TOKENIZERS['gpt2']
  ids = tok.encode('To be, or not to be, that is the question: whether tis nobler in the mind to suffer.')
  windows = tok.rolling_windows(ids, 8)
  assert [i for _, pred in windows for i in pred] == ids and windows[0] == ([], ids[:8])
  assert windows[1] == (ids[7:8], ids[8:16])


# ---------------------------------------------------------------------------------------------- decoding generations


@pytest.mark.parametrize('name', VOCABS)
def test_decode_of_generated_ids_keeps_leading_space_for_stop_strings(name):
  tok = TOKENIZERS[name]
  context = 'Question: Who is there?\nAnswer:'
  generated = ' Nay, answer me.\nQuestion: Stand, and unfold'
  whole = tok.encode(context + generated)
  gen_ids = whole[len(tok.encode(context)):]
  assert whole[:len(tok.encode(context))] == tok.encode(context)
  text = tok.decode(gen_ids)
  assert text == generated and text.split('\n')[0] == ' Nay, answer me.'
  # EOS ends the text; padding, the start id and the model's padding rows decode to nothing
  assert tok.decode([0] + gen_ids + [tok.vocab_size + 3, tok.eos_id] + gen_ids) == generated
  assert tok.decode([tok.eos_id] + gen_ids) == ''


def test_seqio_sentencepiece_decode_drops_the_space_we_keep():
  tok = TOKENIZERS['sentencepiece']
  _, cont = tok.split_context_continuation('Answer:', ' yes')
  assert tok.vocabulary.decode(cont) == 'yes'  # what seqio / SentencePiece alone gives
  assert tok.decode(cont) == ' yes'
  _, cont = tok.split_context_continuation('café', '\n☃ é')  # byte-fallback pieces and the newline piece
  assert tok.decode(cont) == '\n☃ é'


def test_from_config():
  c = get_base_config()
  for name in VOCABS:
    c.data.vocabulary = name
    tok = EvalTokenizer.from_config(c)
    assert (tok.eos_id, tok.vocab_size) == {'sentencepiece': (1, 8192), 'byte': (1, 259), 'gpt2': (50257, 50258)}[name]
    assert tok.encode('To be') == TOKENIZERS[name].encode('To be')
