"""The config's own rules (config/checks.py registers them): model sizes and layer plan, the data basics, the moe
and pool sizes, Pyramid-MoE expert counts and expert maps, the trainer's keys. A method's rules are in its own
module (layers/, models/, data/, evaluation/, training/); the mesh's in config/mesh_checks.py.
"""

from __future__ import annotations

import ml_collections

from samoe_jax.config.checks import Problems, group_tokens_problem, is_int, register
from samoe_jax.config.expert_map import parse_expert_map
from samoe_jax.config.layer_plan import ASSIGNMENTS, group_rows, moe_layer_indices
from samoe_jax.config.pyramid import min_experts, parse_experts_per_layer

DTYPES = ('float32', 'bfloat16')
GRANULARITY = ('layer', 'expert')
SPACE = ('weight', 'output')
BYTE_VOCAB_SIZE = 259  # seqio.ByteVocabulary: 256 bytes + 3 special ids (pad, eos, unk)
GPT2_VOCAB_SIZE = 50258  # GPT-2 BPE shifted by one: pad 0, 50256 tokens, <|endoftext|> (data/gpt2_vocabulary.py)
NAMED_VOCAB_SIZES = {'byte': BYTE_VOCAB_SIZE, 'gpt2': GPT2_VOCAB_SIZE}


def _bool(key: str, value: object, problems: Problems) -> None:
  if not isinstance(value, bool):
    problems.add(key, value, 'must be True or False')


@register('model')
def check_model(c: ml_collections.ConfigDict, problems: Problems) -> None:
  """Model sizes, dtype, WideNet attention sharing and the layer plan."""
  m = c.model
  for key in ('vocab_size', 'd_model', 'num_layers', 'num_heads', 'd_ff', 'max_len'):
    problems.positive_int(f'model.{key}', m[key])
  if is_int(m.d_model) and is_int(m.num_heads) and m.num_heads >= 1 and m.d_model % m.num_heads:
    problems.add('model.d_model', m.d_model, f'must be divisible by model.num_heads={m.num_heads} (integer head '
                 'width)')
  problems.in_range('model.dropout_rate', m.dropout_rate, 0.0, 1.0, hi_open=True)
  problems.positive('model.init_std', m.init_std)
  problems.one_of('model.dtype', m.dtype, DTYPES)
  _bool('model.tie_embeddings', m.tie_embeddings, problems)
  _bool('model.share_attention', m.share_attention, problems)   # WideNet (docs/model.md; layers/shared.py)
  if is_int(m.num_layers) and m.num_layers >= 1:
    try:
      moe_layer_indices(m)
    except ValueError as err:
      problems.line(str(err))


@register('data')
def check_data(c: ml_collections.ConfigDict, problems: Problems) -> None:
  """Sequence length, batch, task name and vocabulary (a task's own keys: the task's module)."""
  d, m = c.data, c.model
  if problems.positive_int('data.seq_len', d.seq_len) and is_int(m.max_len) and d.seq_len > m.max_len:
    problems.add('data.seq_len', d.seq_len, f'must be <= model.max_len={m.max_len} (the learned position table '
                 'size)')
  problems.positive_int('data.batch_size', d.batch_size)
  if not isinstance(d.task, str) or not d.task:
    problems.add('data.task', d.task, 'must name a registered task (a non-empty string)')
  if d.task == 'tfds_lm' and not d.tfds_name:
    problems.add('data.tfds_name', d.tfds_name, "must name a TFDS dataset (e.g. 'c4/en:3.1.0') when "
                 "data.task='tfds_lm'")
  if not isinstance(d.vocabulary, str) or not d.vocabulary:
    problems.add('data.vocabulary', d.vocabulary,
                 "must be 'sentencepiece', 'byte', 'gpt2' or a path to a .model or .tiktoken file")
  size = NAMED_VOCAB_SIZES.get(d.vocabulary) if isinstance(d.vocabulary, str) else None
  if size and is_int(m.vocab_size) and m.vocab_size < size:
    problems.add('model.vocab_size', m.vocab_size,
                 f"must be >= {size} (the {d.vocabulary} vocabulary's size) when data.vocabulary={d.vocabulary!r}")
  problems.non_negative('data.shuffle_buffer', d.shuffle_buffer, 'an integer')


@register('moe', moe_only=True)
def check_moe(c: ml_collections.ConfigDict, problems: Problems) -> None:
  """Expert count, k, capacities, loss coefficients and the routing group size."""
  moe = c.moe
  if problems.positive_int('moe.num_experts', moe.num_experts):
    if not is_int(moe.top_k) or not 1 <= moe.top_k <= moe.num_experts:
      problems.add('moe.top_k', moe.top_k, f'must be an integer in [1, moe.num_experts={moe.num_experts}]')
  problems.positive('moe.capacity_factor_train', moe.capacity_factor_train)
  problems.positive('moe.capacity_factor_eval', moe.capacity_factor_eval)
  problems.non_negative('moe.min_capacity', moe.min_capacity, 'an integer')
  problems.non_negative('moe.expert_d_ff', moe.expert_d_ff, 'an integer (0 = model.d_ff)')
  problems.non_negative('moe.lb_loss_coef', moe.lb_loss_coef)
  problems.non_negative('moe.z_loss_coef', moe.z_loss_coef)
  _, problem = group_tokens_problem(c)
  if problem:
    problems.add(*problem)


@register('moe', moe_only=True)
def check_pyramid(c: ml_collections.ConfigDict, problems: Problems) -> None:
  """Pyramid-MoE expert counts (moe.experts_per_layer, config/pyramid.py) and merged / pruned experts
  (moe.expert_map, config/expert_map.py); docs/methods/pr_moe.md."""
  moe, pool = c.moe, c.pool
  text = moe.experts_per_layer
  if not (is_int(moe.num_experts) and is_int(moe.top_k) and is_int(pool.size) and pool.size >= 1
          and pool.assignment in ASSIGNMENTS):
    return
  try:
    counts = parse_experts_per_layer(text, problems.num_moe, moe.num_experts, min_experts(moe))
    maps = parse_expert_map(moe.expert_map, counts, moe.top_k)
  except ValueError as err:
    problems.line(str(err))
    return
  if maps and pool.space != 'weight':
    problems.add('moe.expert_map', moe.expert_map, "needs pool.space='weight' (output-space mixing runs whole pool "
                 'entries, not mapped experts)')
  if maps and pool.share_router and any(len(m) != moe.num_experts for m in maps):
    problems.add('moe.expert_map', moe.expert_map, f'with pool.share_router every map needs moe.num_experts='
                 f'{moe.num_experts} router outputs (one router for all MoE layers)')
  if len(set(counts)) < 2:
    return
  if pool.share_router and not maps:
    problems.add('pool.share_router', True, f'cannot share one router across MoE layers with different expert '
                 f'counts (moe.experts_per_layer={text!r}); use False')
  if pool.entropy_coef:
    problems.add('pool.entropy_coef', pool.entropy_coef, 'is not supported with several expert groups '
                 f'(moe.experts_per_layer={text!r}: each group has its own mixing logits); use 0.0')


@register('pool', moe_only=True)
def check_pool(c: ml_collections.ConfigDict, problems: Problems) -> None:
  """Pool size, granularity, space, assignment and the shared router's switch (each mixing scheme checks its own
  keys: layers/mixing.py)."""
  pool = c.pool
  problems.positive_int('pool.size', pool.size)
  problems.one_of('pool.granularity', pool.granularity, GRANULARITY)
  problems.one_of('pool.space', pool.space, SPACE)
  problems.one_of('pool.assignment', pool.assignment, ASSIGNMENTS)
  _bool('pool.share_router', pool.share_router, problems)


@register('train')
def check_train(c: ml_collections.ConfigDict, problems: Problems) -> None:
  """Steps, schedule, optimizer coefficients, logging and checkpoint intervals."""
  t = c.train
  if problems.positive_int('train.steps', t.steps):
    if not is_int(t.warmup_steps) or not 0 <= t.warmup_steps <= t.steps:
      problems.add('train.warmup_steps', t.warmup_steps, f'must be an integer in [0, train.steps={t.steps}]')
  decay = t.decay_steps
  if not is_int(decay) or decay < 0:
    problems.add('train.decay_steps', decay, 'must be an integer >= 0 (0 = train.steps)')
  elif decay and is_int(t.warmup_steps) and t.warmup_steps > decay:
    problems.add('train.warmup_steps', t.warmup_steps, f'must be <= train.decay_steps={decay} (the cosine horizon)')
  problems.positive('train.learning_rate', t.learning_rate)
  problems.in_range('train.min_lr_ratio', t.min_lr_ratio, 0.0, 1.0, hi_open=False)
  problems.in_range('train.b1', t.b1, 0.0, 1.0, hi_open=True)
  problems.in_range('train.b2', t.b2, 0.0, 1.0, hi_open=True)
  problems.non_negative('train.weight_decay', t.weight_decay)
  problems.non_negative('train.grad_clip', t.grad_clip)
  problems.positive_int('train.log_every', t.log_every)
  problems.non_negative('train.eval_every', t.eval_every, 'an integer')
  if is_int(t.eval_every) and t.eval_every > 0:
    problems.positive_int('train.eval_batches', t.eval_batches)
  problems.non_negative('train.checkpoint_every', t.checkpoint_every, 'an integer')
  problems.positive_int('train.keep_checkpoints', t.keep_checkpoints)
  stats = t.grad_stats_every
  if not is_int(stats) or stats < 0:
    problems.add('train.grad_stats_every', stats, 'must be an integer >= 0 (steps between gradient-flow '
                 'statistics, training/grad_stats.py; 0 = off)')


@register('train')
def check_microbatches(c: ml_collections.ConfigDict, problems: Problems) -> None:
  """train.microbatches (gradient accumulation, training/accumulate.py): an integer >= 1 that splits the batch into
  whole routing groups; the split over the mesh's data shards is config/mesh_checks.py's."""
  micro = c.train.microbatches
  if not is_int(micro) or micro < 1:
    problems.line(f'train.microbatches={micro!r}: must be an integer >= 1 (gradient-accumulation passes per '
                  'optimizer step; 1 = no accumulation)')
    return
  batch = c.data.batch_size
  if micro == 1 or not (is_int(batch) and batch >= 1 and is_int(c.data.seq_len) and c.data.seq_len >= 1):
    return
  try:
    rows = group_rows(c)
  except (ValueError, TypeError):   # a bad layer plan or group size: reported by check_model / check_moe
    return
  if batch % (micro * rows):
    group = f' x {rows} sequences per routing group (moe.group_size={c.moe.group_size})' if rows > 1 else ''
    problems.line(f'data.batch_size={batch} must be divisible by train.microbatches={micro}{group}, so that '
                  'every microbatch has the same number of whole sequences')
