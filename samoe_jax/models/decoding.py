"""Decoding with a KV cache: prefill the prompts in one pass, then one token per row per step, each token picked
greedily or sampled (temperature, top-k, top-p: models/sampling.py) with a PRNG key per row carried in the loop.

A prompt's decoder inputs are [0] + prompt (0 is the start token), left-truncated so that the prompt and every
generated token but the last fit in model.max_len positions: exactly the inputs the log-likelihood scorer would
use to score the generated tokens as a continuation (evaluation/scorer.py), so the two always agree.

Rows of a batch have their own lengths: prompts are right-padded, each row decodes at its own positions, and its
attention sees only its own cached positions, so a batch gives what each prompt gives alone. MoE layers use
evaluation routing (layers/inference.py), and the cache carries each row's per-expert slot counts of its current
routing run per MoE layer, so a decoded token is kept or dropped exactly as in a full forward pass of the whole
sequence. The steps run inside one jitted jax.lax.while_loop per (batch size, prompt bucket, max_new_tokens,
greedy or sampled, stop shape), which stops once every row has produced a stop sequence or max_new_tokens tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from samoe_jax.models.buckets import default_buckets, pick_bucket
from samoe_jax.models.model import LanguageModel
from samoe_jax.models.sampling import GREEDY, SamplingSettings, as_knobs, next_tokens

Params = Any


def prompt_inputs(prompt: Sequence[int], max_len: int, max_new_tokens: int) -> tuple[int, ...]:
  """[0] + prompt, keeping its last max_len - max_new_tokens + 1 tokens."""
  full = (0,) + tuple(int(t) for t in prompt)
  return full[-(max_len - max_new_tokens + 1):]


def cut_at_stop(tokens: Sequence[int], stop_sequences: Sequence[Sequence[int]]) -> list[int]:
  """The tokens before the earliest occurrence of any stop sequence (all of them when none occurs)."""
  tokens = list(tokens)
  cut = len(tokens)
  for stop in stop_sequences:
    n = len(stop)
    for start in range(0, min(cut, len(tokens) - n + 1)):
      if tokens[start:start + n] == list(stop):
        cut = start
        break
  return tokens[:cut]


def _stop_arrays(stop_sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
  """Stop sequences right-aligned in int32 [S, W] (W >= 1) and the mask of their real entries, bool [S, W]."""
  width = max([len(s) for s in stop_sequences], default=1)
  stops = np.zeros((len(stop_sequences), width), np.int32)
  mask = np.zeros((len(stop_sequences), width), bool)
  for i, stop in enumerate(stop_sequences):
    stops[i, width - len(stop):], mask[i, width - len(stop):] = stop, True
  return stops, mask


def _ends_with_stop(buf_BX: jax.Array, step: jax.Array, stops_SW: jax.Array, mask_SW: jax.Array) -> jax.Array:
  """Whether the tokens generated up to `step` (buf holds W fillers, then the tokens) end with a stop: bool [B]."""
  b, width = buf_BX.shape[0], stops_SW.shape[1]
  window_BW = jax.lax.dynamic_slice(buf_BX, (0, step + 1), (b, width))
  match_BSW = (window_BW[:, None, :] == stops_SW[None]) | ~mask_SW[None]
  return jnp.any(jnp.all(match_BSW, axis=-1), axis=-1)


def _split_rows(keys_B: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Each row's key split in two: (the keys carried on, the keys of this step's draw)."""
  pairs_B2 = jax.vmap(jax.random.split)(keys_B)
  return pairs_B2[:, 0], pairs_B2[:, 1]


def _only_text_ids(logits_BV: jax.Array, text_ids: int) -> jax.Array:
  """-inf at id 0 (padding) and at ids >= text_ids (the model's vocabulary padding, which decodes to nothing);
  text_ids 0 leaves the logits as they are."""
  if not text_ids:
    return logits_BV
  ids_V = jnp.arange(logits_BV.shape[-1])
  return jnp.where((ids_V >= 1) & (ids_V < text_ids), logits_BV, -jnp.inf)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _generate_batch(model: LanguageModel, max_new_tokens: int, greedy: bool, text_ids: int, params: Params,
                    experts: Any,
                    tokens_BL: jax.Array, lengths_B: jax.Array, active_B: jax.Array, stops_SW: jax.Array,
                    mask_SW: jax.Array, knobs: tuple[jax.Array, ...], keys_B: jax.Array) -> jax.Array:
  """Generated tokens int32 [B, W + max_new_tokens]: W fillers (-1), then each row's tokens up to and including
  its first stop sequence, then -1. Rows with active_B False are not decoded. Unless greedy, each row draws with
  its own key (keys_B), split once per step in the loop state, under the sampling knobs (sampling.as_knobs).
  text_ids > 0: only ids in [1, text_ids) can be produced (`_only_text_ids`)."""
  b, width = tokens_BL.shape[0], stops_SW.shape[1]

  def next_token(h_BD, keys_B):
    return next_tokens(_only_text_ids(model.project(params, h_BD), text_ids), greedy, knobs, keys_B)

  h_BLD, cache = model.prefill(params, tokens_BL, lengths_B, experts=experts)
  keys_B, draw_B = _split_rows(keys_B)
  token_B = next_token(jnp.take_along_axis(h_BLD, (lengths_B - 1)[:, None, None], axis=1)[:, 0], draw_B)
  token_B = jnp.where(active_B, token_B, -1)
  buf_BX = jnp.full((b, width + max_new_tokens), -1, jnp.int32).at[:, width].set(token_B)
  done_B = ~active_B | _ends_with_stop(buf_BX, jnp.int32(0), stops_SW, mask_SW)

  def cond(state):
    step, _, _, _, done_B, _ = state
    return (step < max_new_tokens) & ~jnp.all(done_B)

  def body(state):
    step, token_B, cache, buf_BX, done_B, keys_B = state
    positions_B = lengths_B - 1 + step
    # A finished row keeps decoding a harmless 0 (its outputs are discarded); -1 is never fed to the model.
    h_BD, cache = model.decode_step(params, cache, jnp.maximum(token_B, 0), positions_B, experts=experts)
    keys_B, draw_B = _split_rows(keys_B)
    token_B = jnp.where(done_B, -1, next_token(h_BD, draw_B))
    buf_BX = jax.lax.dynamic_update_slice(buf_BX, token_B[:, None], (0, width + step))
    done_B = done_B | _ends_with_stop(buf_BX, step, stops_SW, mask_SW)
    return step + 1, token_B, cache, buf_BX, done_B, keys_B

  state = (jnp.int32(1), token_B, cache, buf_BX, done_B, keys_B)
  return jax.lax.while_loop(cond, body, state)[3]


@functools.partial(jax.jit, static_argnums=0)
def _mix_experts(model: LanguageModel, params: Params) -> Any:
  return model.layer_experts(params)


def row_keys(rng: jax.Array | int, n: int) -> jax.Array:
  """Typed PRNG keys [n]: row i's key is fold_in(rng, i), so prompt i's tokens depend only on rng and i."""
  if isinstance(rng, int) and not isinstance(rng, bool):
    rng = jax.random.key(rng)
  elif not jax.dtypes.issubdtype(getattr(rng, 'dtype', None), jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(jnp.asarray(rng, jnp.uint32))   # a raw jax.random.PRNGKey
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(max(n, 1)))


def greedy_generate(model: LanguageModel, params: Params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                    stop_sequences: Sequence[Sequence[int]] = (), batch_size: int = 8) -> list[list[int]]:
  """The greedy continuation of every prompt (token ids), cut before the earliest stop sequence (see `generate`).
  """
  return _generate('greedy_generate', model, params, prompts, max_new_tokens=max_new_tokens, sampling=GREEDY,
                   rng=0, stop_sequences=stop_sequences, batch_size=batch_size)


def generate(model: LanguageModel, params: Params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             sampling: SamplingSettings = SamplingSettings(), rng: jax.Array | int = 0,
             stop_sequences: Sequence[Sequence[int]] = (), batch_size: int = 8, text_ids: int = 0
             ) -> list[list[int]]:
  """The continuation of every prompt (token ids) picked by `sampling` (models/sampling.py), cut before the
  earliest stop sequence. text_ids > 0 (the vocabulary's real size, below model.vocab_size when the embedding is
  padded): only ids in [1, text_ids) are produced, never padding (0) or the embedding's padding rows, which
  decode to nothing; 0 (greedy_generate, the scorer's view) lets every id through.

  Each prompt is left-truncated to leave room for max_new_tokens within model.max_len (see `prompt_inputs`);
  generation stops when every row has produced a stop sequence or max_new_tokens tokens. Prompts are sorted by
  length into batches of batch_size (the last padded with inactive rows) and padded to bucket lengths. Prompt i
  draws with the key fold_in(rng, i) (rng: an int seed or a PRNG key), so its tokens do not depend on the batch
  size or the other prompts; the same prompt given twice draws two independent samples.
  """
  return _generate('generate', model, params, prompts, max_new_tokens=max_new_tokens, sampling=sampling, rng=rng,
                   stop_sequences=stop_sequences, batch_size=batch_size, text_ids=text_ids)


def _generate(name: str, model: LanguageModel, params: Params, prompts: Sequence[Sequence[int]], *,
              max_new_tokens: int, sampling: SamplingSettings, rng: jax.Array | int,
              stop_sequences: Sequence[Sequence[int]], batch_size: int, text_ids: int = 0) -> list[list[int]]:
  """`generate`, its errors naming the public function `name`."""
  spec = model.spec
  if isinstance(text_ids, bool) or not isinstance(text_ids, int) or not (
      text_ids == 0 or 2 <= text_ids <= spec.model.vocab_size):
    raise ValueError(f'{name}: text_ids={text_ids!r} must be 0 (every id) or an int in [2, model.vocab_size='
                     f'{spec.model.vocab_size}]')
  if not isinstance(max_new_tokens, int) or not 0 <= max_new_tokens <= spec.model.max_len:
    raise ValueError(f'{name}: max_new_tokens={max_new_tokens!r} must be an int in [0, model.max_len='
                     f'{spec.model.max_len}]')
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f'{name}: batch_size={batch_size!r} must be a positive int')
  if not isinstance(sampling, SamplingSettings):
    raise ValueError(f'{name}: sampling={sampling!r} must be a SamplingSettings')
  try:
    sampling.check(spec.model.vocab_size)
  except ValueError as err:
    raise ValueError(f'{name}: {err}') from None
  if spec.moe_layers and not spec.routing.causal:
    raise ValueError(f"{name}: {spec.routing.noncausal_setting} is not causal, so a token's routing would "
                     "depend on later tokens; decoding needs moe.routing='token_choice' or 'hash' with "
                     "moe.slot_priority='position'")
  stops = [tuple(int(t) for t in s) for s in stop_sequences]
  if any(not s for s in stops):
    raise ValueError(f'{name}: stop sequences must be non-empty')
  for i, p in enumerate(list(prompts) + stops):
    ids = np.asarray(p, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= spec.model.vocab_size):
      what = f'prompt {i}' if i < len(prompts) else f'stop sequence {i - len(prompts)}'
      raise ValueError(f'{name}: {what} has a token id outside [0, vocab_size={spec.model.vocab_size})')
  if max_new_tokens == 0 or not prompts:
    return [[] for _ in prompts]
  rows = [prompt_inputs(p, spec.model.max_len, max_new_tokens) for p in prompts]
  keys = row_keys(rng, len(rows))
  stops_SW, mask_SW = _stop_arrays(stops)
  experts = _mix_experts(model, params)
  buckets = default_buckets(spec.model.max_len)
  order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
  out: list[list[int]] = [[] for _ in prompts]
  width = stops_SW.shape[1]
  for start in range(0, len(order), batch_size):
    index = order[start:start + batch_size]
    length = pick_bucket(max(len(rows[i]) for i in index), buckets)
    tokens = np.zeros((batch_size, length), np.int32)
    lengths = np.ones((batch_size,), np.int32)
    active = np.zeros((batch_size,), bool)
    for b, i in enumerate(index):
      tokens[b, :len(rows[i])], lengths[b], active[b] = rows[i], len(rows[i]), True
    keys_B = keys[np.asarray(index + [index[0]] * (batch_size - len(index)))]   # padding rows: any key
    buf = np.asarray(_generate_batch(model, max_new_tokens, sampling.greedy, text_ids, params, experts, tokens,
                                     lengths, active, stops_SW, mask_SW, as_knobs(sampling), keys_B))
    for b, i in enumerate(index):
      generated = buf[b, width:]
      generated = generated[:np.argmax(generated < 0)] if (generated < 0).any() else generated
      out[i] = cut_at_stop([int(t) for t in generated], stops)
  return out
