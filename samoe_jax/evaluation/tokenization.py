"""Text <-> ids for evaluation through the model's own vocabulary, split the way lm-evaluation-harness does.

Mapping of the harness's conventions (lm_eval 0.4.x, TemplateLM) onto our decoder
--------------------------------------------------------------------------------
Our decoder always reads the start token 0 at position 0 (seqio's DecoderFeatureConverter shifts the targets right
with 0 first), where the harness feeds its prefix token (EOS/BOS, `prefix_token_id`) for an empty context. So:

* Every id list here is text tokens only: no EOS appended, no start token. The scorer builds each sequence as
  `[0] + context_ids + continuation_ids`, keeps its last `max_len + 1` tokens (as the harness keeps the last
  `max_length + 1` of `context_enc + continuation_enc`), feeds all but the last token and scores the
  continuation positions.
* `split_context_continuation(context, continuation)` equals the harness's split with the prefix token dropped:
  - non-empty context: exactly TemplateLM._encode_pair (causal): the context's trailing whitespace (str.rstrip,
    so spaces, tabs and newlines) moves to the front of the continuation; whole = encode(context + continuation),
    context_ids = encode(context), continuation_ids = whole[len(context_ids):]. A whitespace-only context thus
    gives context_ids [] too, as in the harness (there the first continuation token would have no logit to score
    it; here the 0 start token predicts it).
  - empty context: the harness uses ([prefix_token_id], encode(continuation)) (its other branch, taken when the
    continuation's first id equals the prefix token, cannot happen here: no text encodes to the start id 0). Here
    that is ([], encode(continuation)), the start token 0 standing in for the prefix token.
  Like the harness, context_ids is not checked to be a prefix of the whole encoding: where a token spans the
  boundary, the continuation ids are simply the tail of the whole encoding after len(context_ids) tokens.
* `rolling_windows(ids, max_len)` equals utils.get_rolling_token_windows(ids, prefix, max_len, context_len=1)
  followed by utils.make_disjoint_window (what the harness's loglikelihood_rolling does), with the first window's
  [prefix] context written as [] (the start token 0 again).
* `decode(ids)` renders generated ids as they read after the preceding text, so stop strings compare correctly:
  SentencePiece drops the space of a leading '▁' when decoding on its own ("▁yes" -> "yes"); here it stays
  (" yes"). Bytes and GPT-2 BPE decode byte-exactly already.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sentencepiece

from samoe_jax.data import vocabularies

START_ID = 0  # the decoder's start token (seqio's padding id shifted in at position 0)


def _check_text(name: str, value: Any) -> str:
  if not isinstance(value, str):
    raise ValueError(f'{name}={value!r} must be a string (got {type(value).__name__}).')
  return value


VOCABULARY_API = ('encode', 'decode', 'eos_id', 'vocab_size')


def _sentencepiece_anchor(vocabulary: Any) -> tuple[int, str]:
  """(id, text) of a normal piece whose text is non-empty and begins with no whitespace: decoding [anchor] + ids
  and dropping the anchor's text keeps a leading '▁' of ids as a space (SentencePiece strips it only at the start).
  """
  sp = vocabulary.tokenizer
  for i in range(sp.get_piece_size()):
    if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i) or sp.is_byte(i):
      continue
    text = sp.decode([i])
    if text and text.isprintable() and not text[0].isspace() and not sp.id_to_piece(i).startswith('\u2581'):
      return i, text
  raise ValueError(f'SentencePiece model {vocabulary.sentencepiece_model_file!r} has no piece without whitespace '
                   f'to anchor continuation decoding.')


def rolling_windows(ids: Sequence[int], max_len: int) -> list[tuple[list[int], list[int]]]:
  """(context_ids, target_ids) windows that score every id of `ids` once, as the harness's loglikelihood_rolling.

  The first window predicts ids[:max_len] from the start token (context []); each later one predicts the next
  up to max_len ids, its context being the max_len + 1 - len(targets) ids before them, so that context + targets
  minus the last id is exactly max_len model inputs. No windows for empty `ids`.
  """
  if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
    raise ValueError(f'max_len={max_len!r} must be an integer >= 1.')
  ids = [int(i) for i in ids]
  if not ids:
    return []
  first = min(max_len, len(ids))
  windows = [([], ids[:first])]
  done = first
  while done < len(ids):
    end = done + min(len(ids) - done, max_len)
    windows.append((ids[end - max_len - 1:done], ids[done:end]))
    done = end
  return windows


class EvalTokenizer:
  """Text <-> ids through the model's own vocabulary (data/vocabularies.py's, or its seqio form), harness
  conventions (module doc)."""

  start_id: int = START_ID

  def __init__(self, vocabulary: Any):
    missing = [name for name in VOCABULARY_API if not hasattr(vocabulary, name)]
    if missing:
      raise ValueError(f'vocabulary={vocabulary!r} must be a vocabulary with {", ".join(VOCABULARY_API)} (lacks '
                       f'{", ".join(missing)}): e.g. samoe_jax.data.vocabularies.get_vocabulary(data.vocabulary).')
    self.vocabulary = vocabulary
    self.eos_id: int = vocabulary.eos_id
    self.vocab_size: int = vocabulary.vocab_size
    self._anchor: tuple[int, str] | None = None
    self._num_text_ids = self.vocab_size  # ids >= this decode to nothing
    if isinstance(getattr(vocabulary, 'tokenizer', None), sentencepiece.SentencePieceProcessor):
      self._anchor = _sentencepiece_anchor(vocabulary)
      self._num_text_ids = vocabulary.tokenizer.get_piece_size()  # seqio's extra ids (sentinels) are not text

  @classmethod
  def from_config(cls, config: Any) -> EvalTokenizer:
    """The tokenizer of config.data.vocabulary ('sentencepiece', 'byte', 'gpt2' or a .model/.tiktoken path)."""
    return cls(vocabularies.get_vocabulary(config.data.vocabulary))

  def encode(self, text: str) -> list[int]:
    """Text -> ids [T]: no EOS appended, no start token."""
    return [int(i) for i in self.vocabulary.encode(_check_text('text', text))]

  def decode(self, ids: Sequence[int]) -> str:
    """Ids [T] -> text as it reads after preceding text (a leading SentencePiece '▁' stays a space).

    Stops at the first EOS (not rendered); padding/start ids (0) and ids outside the vocabulary (the model's
    padding rows) are dropped.
    """
    clean = []
    for i in ids:
      i = int(i)
      if i == self.eos_id:
        break
      if 0 < i < self._num_text_ids:
        clean.append(i)
    if self._anchor is None:
      return self.vocabulary.decode(clean)
    anchor_id, anchor_text = self._anchor
    text = self.vocabulary.tokenizer.decode([anchor_id] + clean)
    return text[len(anchor_text):]

  def split_context_continuation(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context_ids, continuation_ids) as the harness splits a loglikelihood request (module doc)."""
    _check_text('context', context)
    _check_text('continuation', continuation)
    if not context:
      if not continuation:
        raise ValueError("context='' and continuation='': a loglikelihood request needs some text to score.")
      return [], self.encode(continuation)
    kept = context.rstrip()
    context, continuation = kept, context[len(kept):] + continuation
    whole = self.encode(context + continuation)
    context_ids = self.encode(context)
    return context_ids, whole[len(context_ids):]

  @staticmethod
  def rolling_windows(ids: Sequence[int], max_len: int) -> list[tuple[list[int], list[int]]]:
    """The harness's disjoint rolling windows over `ids` (see the module-level rolling_windows)."""
    return rolling_windows(ids, max_len)
