"""validate_config: early, clear errors for a config, before anything is built.

Every problem is collected and one ValueError lists them all, one per line, each naming the key, the bad value and
what is allowed. A dense model (no MoE layers after resolving model.layer_plan) ignores the moe and pool sections.
Checks that need the device count (what mesh -1 resolves to) are left to the trainer; here only the sizes given
explicitly are checked. This is the one pass over a config's settings: the trainer's keys (train.microbatches,
train.decay_steps, train.grad_stats_every), model.remat, the SMoE-Dropout k schedule and the eval section are
checked here too, so a config with problems in several places gets them all in one error. Runtime checks on data
(files, checkpoints, a teacher run) stay with the code that reads it.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import ml_collections

from samoe_jax.config.defaults import get_base_config
from samoe_jax.config.sections import complete_config
from samoe_jax.config.layer_plan import ASSIGNMENTS, group_rows, moe_layer_indices
from samoe_jax.config.expert_map import parse_expert_map
from samoe_jax.config.pyramid import min_experts, parse_experts_per_layer
from samoe_jax.data import task_finetune, text_files
from samoe_jax.evaluation.task_specs import parse_seeds, parse_tasks, unknown_tasks
from samoe_jax.evaluation.tasks.registry import TASK_NAMES
from samoe_jax.layers.attention_kernel import check_attention
from samoe_jax.layers.dispatch import DISPATCHERS
from samoe_jax.layers.k_schedule import KINDS as K_SCHEDULES
from samoe_jax.layers.mixing import MIXING_SCHEMES
from samoe_jax.layers.momentum import ADAM_LAYERS, KINDS as MOMENTUM_KINDS
from samoe_jax.layers.residual_moe import MODES as RESIDUAL_MODES
from samoe_jax.layers.ragged import check_dispatch_config
from samoe_jax.layers.routing import GATES, SLOT_PRIORITIES
from samoe_jax.layers.routing_policy import check_routing_config
from samoe_jax.layers.graph_routing import check_graph_config
from samoe_jax.models.remat import check_remat
from samoe_jax.training import sparse_pruning
from samoe_jax.training.optimizer import MOMENT_DTYPES

DTYPES = ('float32', 'bfloat16')
DISPATCH = tuple(DISPATCHERS)   # 'gather', 'einsum', 'ragged' (layers/dispatch.py)
SLOT_PRIORITY = SLOT_PRIORITIES   # 'position', 'choice', 'bpr', 'random' (layers/routing.py)
MIXING = tuple(MIXING_SCHEMES)   # 'learned', 'fixed' (layers/mixing.py)
GRANULARITY = ('layer', 'expert')
SPACE = ('weight', 'output')
MESH_AXES = ('data', 'expert', 'model')
BYTE_VOCAB_SIZE = 259  # seqio.ByteVocabulary: 256 bytes + 3 special ids (pad, eos, unk)
GPT2_VOCAB_SIZE = 50258  # GPT-2 BPE shifted by one: pad 0, 50256 tokens, <|endoftext|> (data/gpt2_vocabulary.py)
NAMED_VOCAB_SIZES = {'byte': BYTE_VOCAB_SIZE, 'gpt2': GPT2_VOCAB_SIZE}


class _Errors:
  """Collects 'key=value: what is allowed' lines."""

  def __init__(self):
    self.lines: list[str] = []

  def add(self, key: str, value: Any, allowed: str) -> None:
    self.lines.append(f'{key}={value!r}: {allowed}')

  def positive_int(self, key: str, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      self.add(key, value, 'must be an integer >= 1')
      return False
    return True

  def non_negative(self, key: str, value: Any, what: str = 'a number') -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
      self.add(key, value, f'must be {what} >= 0')
      return False
    return True

  def positive(self, key: str, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
      self.add(key, value, 'must be a number > 0')
      return False
    return True

  def one_of(self, key: str, value: Any, allowed: Sequence[str]) -> bool:
    if value not in allowed:
      self.add(key, value, f'must be one of {", ".join(map(repr, allowed))}')
      return False
    return True

  def in_range(self, key: str, value: Any, lo: float, hi: float, hi_open: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value and (
        value < hi if hi_open else value <= hi)
    if not ok:
      self.add(key, value, f'must lie in [{lo}, {hi}{")" if hi_open else "]"}')


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _check_model(m: ml_collections.ConfigDict, e: _Errors) -> list[int] | None:
  """Model section; returns the MoE layer indices, or None when the layer plan cannot be resolved."""
  for key in ('vocab_size', 'd_model', 'num_layers', 'num_heads', 'd_ff', 'max_len'):
    e.positive_int(f'model.{key}', m[key])
  if _is_int(m.d_model) and _is_int(m.num_heads) and m.num_heads >= 1 and m.d_model % m.num_heads:
    e.add('model.d_model', m.d_model, f'must be divisible by model.num_heads={m.num_heads} (integer head width)')
  e.in_range('model.dropout_rate', m.dropout_rate, 0.0, 1.0, hi_open=True)
  e.positive('model.init_std', m.init_std)
  e.one_of('model.dtype', m.dtype, DTYPES)
  if not isinstance(m.tie_embeddings, bool):
    e.add('model.tie_embeddings', m.tie_embeddings, 'must be True or False')
  try:   # activation rematerialisation (models/remat.py; the model builder checks it again)
    check_remat(m.remat)
  except ValueError as err:
    e.lines.append(str(err))
  if _is_int(m.d_model) and _is_int(m.num_heads) and m.num_heads >= 1:   # attention kernel (layers/attention_kernel.py)
    e.lines.extend(check_attention(m.attention, m.dtype, m.dropout_rate, m.d_model // m.num_heads))
  if not (_is_int(m.num_layers) and m.num_layers >= 1):
    return None
  try:
    return moe_layer_indices(m)
  except ValueError as err:
    e.lines.append(str(err))
    return None


def _check_data(c: ml_collections.ConfigDict, e: _Errors) -> None:
  d, m = c.data, c.model
  if e.positive_int('data.seq_len', d.seq_len) and _is_int(m.max_len) and d.seq_len > m.max_len:
    e.add('data.seq_len', d.seq_len, f'must be <= model.max_len={m.max_len} (the learned position table size)')
  e.positive_int('data.batch_size', d.batch_size)
  if not isinstance(d.task, str) or not d.task:
    e.add('data.task', d.task, 'must name a registered task (a non-empty string)')
  if d.task == 'tfds_lm' and not d.tfds_name:
    e.add('data.tfds_name', d.tfds_name, "must name a TFDS dataset (e.g. 'c4/en:3.1.0') when data.task='tfds_lm'")
  if d.task == task_finetune.TASK and d.finetune_task not in task_finetune.tasks_with_training_split():
    e.add('data.finetune_task', d.finetune_task, 'must be an evaluation task with a training split: one of '
          + ', '.join(task_finetune.tasks_with_training_split()))
  if d.task == task_finetune.TASK and not (isinstance(d.finetune_data_dir, str) and d.finetune_data_dir):
    e.add('data.finetune_data_dir', d.finetune_data_dir, 'must name the directory of <task>/<split>.jsonl files')
  if d.task == text_files.TASK:   # the file keys' types and combination (the files themselves: check_text_files)
    for key, value, allowed in text_files.setting_errors(d):
      e.add(f'data.{key}', value, allowed)
  if not isinstance(d.vocabulary, str) or not d.vocabulary:
    e.add('data.vocabulary', d.vocabulary,
          "must be 'sentencepiece', 'byte', 'gpt2' or a path to a .model or .tiktoken file")
  size = NAMED_VOCAB_SIZES.get(d.vocabulary) if isinstance(d.vocabulary, str) else None
  if size and _is_int(m.vocab_size) and m.vocab_size < size:
    e.add('model.vocab_size', m.vocab_size,
          f"must be >= {size} (the {d.vocabulary} vocabulary's size) when data.vocabulary={d.vocabulary!r}")
  e.non_negative('data.shuffle_buffer', d.shuffle_buffer, 'an integer')


def _group_tokens(c: ml_collections.ConfigDict, e: _Errors) -> int | None:
  """Checks moe.group_size against the batch; returns tokens per routing group (None if invalid)."""
  g, seq, batch = c.moe.group_size, c.data.seq_len, c.data.batch_size
  if not (_is_int(seq) and seq >= 1 and _is_int(batch) and batch >= 1):
    return None
  if not _is_int(g) or g < 0:
    e.add('moe.group_size', g, 'must be an integer >= 0 (0 = one sequence per routing group)')
    return None
  if g == 0:
    return seq
  if g <= seq and seq % g:
    e.add('moe.group_size', g, f'must divide data.seq_len={seq} (a group within a sequence) or be a multiple of it')
    return None
  if g > seq and (g % seq or (batch * seq) % g):
    e.add('moe.group_size', g,
          f'a group longer than a sequence must be a multiple of data.seq_len={seq} and divide '
          f'data.batch_size * data.seq_len={batch * seq}')
    return None
  return g


def _check_moe(c: ml_collections.ConfigDict, e: _Errors) -> int | None:
  """MoE section (MoE models only); returns tokens per routing group when valid."""
  moe = c.moe
  if e.positive_int('moe.num_experts', moe.num_experts):
    if not _is_int(moe.top_k) or not 1 <= moe.top_k <= moe.num_experts:
      e.add('moe.top_k', moe.top_k, f'must be an integer in [1, moe.num_experts={moe.num_experts}]')
  e.positive('moe.capacity_factor_train', moe.capacity_factor_train)
  e.positive('moe.capacity_factor_eval', moe.capacity_factor_eval)
  e.non_negative('moe.min_capacity', moe.min_capacity, 'an integer')
  e.non_negative('moe.expert_d_ff', moe.expert_d_ff, 'an integer (0 = model.d_ff)')
  e.non_negative('moe.lb_loss_coef', moe.lb_loss_coef)
  e.non_negative('moe.z_loss_coef', moe.z_loss_coef)
  if e.one_of('moe.dispatch', moe.dispatch, DISPATCH):
    check_dispatch_config(c, e)   # dropless 'ragged' (layers/ragged.py)
  if 'slot_priority' in moe:
    e.one_of('moe.slot_priority', moe.slot_priority, SLOT_PRIORITY)
  check_routing_config(c, e)   # routing policies (layers/routing_policy.py)
  check_graph_config(c, e)     # Similarity- / Attention-Aware (S)MoE (layers/graph_routing.py)
  return _group_tokens(c, e)


def _check_pool(pool: ml_collections.ConfigDict, num_moe: int, e: _Errors) -> None:
  """Pool section (MoE models only); each mixing scheme checks its own keys (layers/mixing.py)."""
  e.positive_int('pool.size', pool.size)
  mixing_ok = e.one_of('pool.mixing', pool.mixing, MIXING)
  e.one_of('pool.granularity', pool.granularity, GRANULARITY)
  e.one_of('pool.space', pool.space, SPACE)
  e.one_of('pool.assignment', pool.assignment, ASSIGNMENTS)
  for scheme in MIXING_SCHEMES.values():
    scheme.check_keys(pool, e)
  if mixing_ok:
    MIXING_SCHEMES[pool.mixing].check(pool, num_moe, e)


def _check_momentum(moe: ml_collections.ConfigDict, moe_layers: list[int] | None, e: _Errors) -> None:
  """MomentumSMoE / AdamSMoE keys (docs/methods/momentum.md, layers/momentum.py); checked only when moe.momentum is on."""
  kind = moe.momentum
  if not e.one_of('moe.momentum', kind, MOMENTUM_KINDS) or kind == 'none':
    return
  if moe_layers is not None and not moe_layers:
    e.add('moe.momentum', kind, "needs MoE layers (the state is carried across them); this model.layer_plan has "
          "none: use moe.momentum='none' or a layer plan with MoE blocks")
  e.in_range('moe.momentum_mu', moe.momentum_mu, 0.0, 1.0, hi_open=True)
  e.positive('moe.momentum_gamma', moe.momentum_gamma)
  if kind == 'adam':
    e.in_range('moe.adam_beta1', moe.adam_beta1, 0.0, 1.0, hi_open=True)
    e.in_range('moe.adam_beta2', moe.adam_beta2, 0.0, 1.0, hi_open=True)
    e.positive('moe.adam_eps', moe.adam_eps)
    e.one_of('moe.adam_layers', moe.adam_layers, ADAM_LAYERS)


def _check_sharing(c: ml_collections.ConfigDict, num_moe: int, e: _Errors) -> None:
  """WideNet sharing (Xue et al. 2022) and the mixing-entropy regulariser (docs/model.md; layers/shared.py)."""
  share_attention = c.model.share_attention
  if not isinstance(share_attention, bool):
    e.add('model.share_attention', share_attention, 'must be True or False')
  if not num_moe:   # a dense model ignores the pool section
    return
  pool = c.pool
  share_router = pool.share_router
  if not isinstance(share_router, bool):
    e.add('pool.share_router', share_router, 'must be True or False')
  coef = pool.entropy_coef
  if isinstance(coef, bool) or not isinstance(coef, (int, float)) or coef != coef or abs(coef) == float('inf'):
    e.add('pool.entropy_coef', coef, 'must be a finite number (> 0: towards one pool entry per layer, < 0: towards '
          'uniform mixing, 0: off)')
  elif coef and pool.mixing in MIXING and not MIXING_SCHEMES[pool.mixing].learned:
    e.add('pool.entropy_coef', coef, f"needs pool.mixing='learned' (got {pool.mixing!r}: fixed one-hot mixing has no "
          'mixing logits to regularise); use 0.0')
  elif coef and _is_int(pool.size) and pool.size < 2:
    e.add('pool.entropy_coef', coef, f'needs pool.size >= 2 (got {pool.size}: the mixture over one entry has zero '
          'entropy); use 0.0')


def _check_pr_moe(c: ml_collections.ConfigDict, num_moe: int, e: _Errors) -> None:
  """PR-MoE keys (docs/methods/pr_moe.md): moe.experts_per_layer (Pyramid-MoE, config/pyramid.py) and moe.residual
  (Residual-MoE, layers/residual_moe.py); MoE models only."""
  moe, pool = c.moe, c.pool
  e.one_of('moe.residual', moe.residual, RESIDUAL_MODES)
  text = moe.experts_per_layer
  if not (_is_int(moe.num_experts) and _is_int(moe.top_k) and _is_int(pool.size) and pool.size >= 1
          and pool.assignment in ASSIGNMENTS):
    return
  try:
    counts = parse_experts_per_layer(text, num_moe, moe.num_experts, min_experts(moe))
  except ValueError as err:
    e.lines.append(str(err))
    return
  try:   # merged / pruned experts (config/expert_map.py)
    maps = parse_expert_map(moe.expert_map, counts, moe.top_k)
  except ValueError as err:
    e.lines.append(str(err))
    return
  if maps and pool.space != 'weight':
    e.add('moe.expert_map', moe.expert_map, "needs pool.space='weight' (output-space mixing runs whole pool "
          'entries, not mapped experts)')
  if maps and pool.share_router and any(len(m) != moe.num_experts for m in maps):
    e.add('moe.expert_map', moe.expert_map, f'with pool.share_router every map needs moe.num_experts='
          f'{moe.num_experts} router outputs (one router for all MoE layers)')
  groups = sorted(set(counts))
  expert_axis = c.mesh.expert if 'mesh' in c else 1
  # moe.num_experts itself is checked against mesh.expert in _check_mesh
  split = _is_int(expert_axis) and expert_axis > 1
  bad = [n for n in groups if n != moe.num_experts and n % expert_axis] if split else []
  if bad:
    e.add('moe.experts_per_layer', text, f'expert count(s) {bad} are not divisible by mesh.expert={expert_axis} '
          "(every group's experts are split over the expert axis)")
  if len(groups) < 2:
    return
  if pool.share_router and not maps:
    e.add('pool.share_router', True, f'cannot share one router across MoE layers with different expert counts '
          f'(moe.experts_per_layer={text!r}); use False')
  if pool.entropy_coef:
    e.add('pool.entropy_coef', pool.entropy_coef, 'is not supported with several expert groups '
          f'(moe.experts_per_layer={text!r}: each group has its own mixing logits); use 0.0')


def _check_k_schedule(c: ml_collections.ConfigDict, e: _Errors) -> None:
  """SMoE-Dropout keys (docs/methods/smoe_dropout.md, layers/k_schedule.py): the k schedule and the evaluation k / gate (MoE
  models only; the schedule's bounds are checked only when a schedule is on)."""
  moe = c.moe
  if not (_is_int(moe.num_experts) and _is_int(moe.top_k)):
    return
  top_k, experts = moe.top_k, moe.num_experts
  eval_k = moe.eval_top_k
  if not _is_int(eval_k) or not 0 <= eval_k <= experts:
    e.add('moe.eval_top_k', eval_k, f'must be an integer in [0, moe.num_experts={experts}] (0 = moe.top_k)')
  elif eval_k and moe.experts_per_layer:   # Pyramid-MoE: every layer needs eval_top_k experts
    try:
      fewest = min(parse_experts_per_layer(moe.experts_per_layer, len(moe_layer_indices(c.model)), experts))
    except ValueError:
      fewest = eval_k   # reported by _check_pr_moe
    if eval_k > fewest:
      e.add('moe.eval_top_k', eval_k, f'must be <= {fewest}, the fewest experts of a layer in '
            f'moe.experts_per_layer={moe.experts_per_layer!r}')
  eval_gate = moe.eval_gate
  if eval_gate != '':
    e.one_of('moe.eval_gate', eval_gate, ('',) + tuple(GATES))
  kind = moe.k_schedule
  if not e.one_of('moe.k_schedule', kind, K_SCHEDULES) or kind == 'constant':
    return
  k_min, k_max, steps = moe.k_min, moe.k_max, moe.k_schedule_steps
  if _is_int(k_max) and k_max not in (0, top_k):
    e.add('moe.k_max', k_max, f'must be 0 or moe.top_k={top_k}: top_k is the MoE layers\' static maximum k, so set '
          f'moe.top_k={k_max} (and moe.k_max=0) to schedule up to {k_max} experts')
  elif not _is_int(k_max):
    e.add('moe.k_max', k_max, f'must be an integer (0 = moe.top_k={top_k})')
  if not _is_int(k_min) or not 1 <= k_min <= top_k:
    e.add('moe.k_min', k_min, f'must be an integer in [1, moe.top_k={top_k}] (k_min <= k_max = top_k <= '
          f'moe.num_experts={experts}) with moe.k_schedule={kind!r}')
  if not _is_int(steps) or steps < 0:
    e.add('moe.k_schedule_steps', steps, 'must be an integer >= 0 (0 = train.steps)')


def _check_train(t: ml_collections.ConfigDict, e: _Errors) -> None:
  if e.positive_int('train.steps', t.steps):
    if not _is_int(t.warmup_steps) or not 0 <= t.warmup_steps <= t.steps:
      e.add('train.warmup_steps', t.warmup_steps, f'must be an integer in [0, train.steps={t.steps}]')
  decay = t.decay_steps
  if not _is_int(decay) or decay < 0:
    e.add('train.decay_steps', decay, 'must be an integer >= 0 (0 = train.steps)')
  elif decay and _is_int(t.warmup_steps) and t.warmup_steps > decay:
    e.add('train.warmup_steps', t.warmup_steps, f'must be <= train.decay_steps={decay} (the cosine horizon)')
  e.positive('train.learning_rate', t.learning_rate)
  e.in_range('train.min_lr_ratio', t.min_lr_ratio, 0.0, 1.0, hi_open=False)
  e.in_range('train.b1', t.b1, 0.0, 1.0, hi_open=True)
  e.in_range('train.b2', t.b2, 0.0, 1.0, hi_open=True)
  e.non_negative('train.weight_decay', t.weight_decay)
  e.non_negative('train.grad_clip', t.grad_clip)
  e.one_of('train.moment_dtype', t.moment_dtype, MOMENT_DTYPES)
  e.positive_int('train.log_every', t.log_every)
  e.non_negative('train.eval_every', t.eval_every, 'an integer')
  if _is_int(t.eval_every) and t.eval_every > 0:
    e.positive_int('train.eval_batches', t.eval_batches)
  e.non_negative('train.checkpoint_every', t.checkpoint_every, 'an integer')
  e.positive_int('train.keep_checkpoints', t.keep_checkpoints)
  stats = t.grad_stats_every
  if not _is_int(stats) or stats < 0:
    e.add('train.grad_stats_every', stats, 'must be an integer >= 0 (steps between gradient-flow statistics, '
          'training/grad_stats.py; 0 = off)')


def _check_microbatches(c: ml_collections.ConfigDict, e: _Errors) -> None:
  """train.microbatches (gradient accumulation, training/accumulate.py): an integer >= 1 that splits the batch into
  whole routing groups; the split over the mesh's data shards is the trainer's check (it needs the device count)."""
  micro = c.train.microbatches
  if not _is_int(micro) or micro < 1:
    e.lines.append(f'train.microbatches={micro!r}: must be an integer >= 1 (gradient-accumulation passes per '
                   'optimizer step; 1 = no accumulation)')
    return
  batch = c.data.batch_size
  if micro == 1 or not (_is_int(batch) and batch >= 1 and _is_int(c.data.seq_len) and c.data.seq_len >= 1):
    return
  try:
    rows = group_rows(c)
  except (ValueError, TypeError):   # a bad layer plan or group size: reported by _check_model / _group_tokens
    return
  if batch % (micro * rows):
    group = f' x {rows} sequences per routing group (moe.group_size={c.moe.group_size})' if rows > 1 else ''
    e.lines.append(f'data.batch_size={batch} must be divisible by train.microbatches={micro}{group}, so that '
                   'every microbatch has the same number of whole sequences')


def _check_mesh(c: ml_collections.ConfigDict, num_moe: int, group_tokens: int | None, e: _Errors) -> None:
  """Mesh sizes: each -1 (fill with the devices left) or >= 1, at most one -1; divisibility of what they split."""
  mesh = c.mesh
  sizes: dict[str, int] = {}
  for axis in MESH_AXES:
    v = mesh[axis]
    if not _is_int(v) or (v != -1 and v < 1):
      e.add(f'mesh.{axis}', v, 'must be -1 (the devices left) or an integer >= 1')
    else:
      sizes[axis] = v
  fsdp = mesh.fsdp
  if not isinstance(fsdp, bool):
    e.add('mesh.fsdp', fsdp, 'must be True or False (shard the non-expert training state over data x expert)')
  fill = [a for a, v in sizes.items() if v == -1]
  if len(fill) > 1:
    e.lines.append(f'mesh: {", ".join(f"mesh.{a}=-1" for a in fill)}: at most one mesh axis may be -1')
  expert, model = sizes.get('expert', -1), sizes.get('model', -1)
  if num_moe and expert > 0 and _is_int(c.moe.num_experts) and c.moe.num_experts % expert:
    e.add('moe.num_experts', c.moe.num_experts, f'must be divisible by mesh.expert={expert} (experts are split '
          'over the expert axis)')
  if model > 1:
    m = c.model
    for key, value in (('model.num_heads', m.num_heads), ('model.vocab_size', m.vocab_size)):
      if _is_int(value) and value % model:
        e.add(key, value, f'must be divisible by mesh.model={model}')
    if num_moe < m.num_layers and _is_int(m.d_ff) and m.d_ff % model:
      e.add('model.d_ff', m.d_ff, f'must be divisible by mesh.model={model}')
    expert_ff = c.moe.expert_d_ff or m.d_ff
    if num_moe and _is_int(expert_ff) and expert_ff % model:
      e.add('moe.expert_d_ff' if c.moe.expert_d_ff else 'model.d_ff', expert_ff,
            f'the expert FFN width must be divisible by mesh.model={model}')
  # Batch rows (and routing groups) are split over ('data', 'expert') together.
  known = [(a, sizes[a]) for a in ('data', 'expert') if sizes.get(a, -1) > 0]
  dp = 1
  for _, v in known:
    dp *= v
  if dp > 1 and _is_int(c.data.batch_size) and c.data.batch_size >= 1:
    names = ' * '.join(f'mesh.{a}={v}' for a, v in known)
    exact = len(known) == 2
    if c.data.batch_size % dp:
      e.add('data.batch_size', c.data.batch_size, f'must be divisible by the data-parallel size {names} = {dp}'
            + ('' if exact else ' (whatever the -1 axis resolves to)'))
    elif group_tokens and num_moe:
      groups = c.data.batch_size * c.data.seq_len // group_tokens
      if groups % dp:
        e.add('moe.group_size', c.moe.group_size, f'gives {groups} routing groups per batch, not divisible by the '
              f'data-parallel size {names} = {dp}')


def _check_eval(c: ml_collections.ConfigDict, e: _Errors) -> None:
  """The optional eval section (configs written before it existed have none): the rules of the evaluator's
  EvalSettings.check (evaluation/runner.py), named by config key."""
  v = c.eval
  tasks = parse_tasks(v.tasks) if isinstance(v.tasks, str) else None
  if tasks is None:
    e.add('eval.tasks', v.tasks, "must be a string: comma-separated task names, 'deepspeed', 'all' or ''")
  elif unknown_tasks(tasks):
    e.add('eval.tasks', v.tasks, f'names unknown task(s) {unknown_tasks(tasks)}; known: {", ".join(TASK_NAMES)}')
  elif tasks and not v.data_dir:
    e.add('eval.data_dir', v.data_dir, 'must name the directory of <task>/<split>.jsonl files when eval.tasks is set')
  e.non_negative('eval.every', v.every, 'an integer')
  e.non_negative('eval.num_fewshot', v.num_fewshot, 'an integer')
  e.non_negative('eval.limit', v.limit, 'an integer')
  e.positive_int('eval.batch_size', v.batch_size)
  try:
    if not parse_seeds(v.fewshot_seeds):
      e.add('eval.fewshot_seeds', v.fewshot_seeds, 'must name at least one seed')
  except ValueError:
    e.add('eval.fewshot_seeds', v.fewshot_seeds, "must be comma-separated integers or a count such as '5x'")


INIT_MODES = ('same', 'bottom_layers', 'upcycle')


def _check_distill_init(c: ml_collections.ConfigDict, num_moe: int, e: _Errors) -> None:
  """config.distill (training/distill.py) and config.init (training/init_from.py); absent sections are off."""
  if 'distill' in c:
    d = c.distill
    for key in ('teacher_workdir', 'teacher_config'):
      if not isinstance(d.get(key, ''), str):
        e.add(f'distill.{key}', d.get(key), "must be a string ('' = off / the teacher's config.json)")
    if d.teacher_workdir:
      e.non_negative('distill.alpha', d.alpha)
      e.positive('distill.temperature', d.temperature)
      for key in ('teacher_step', 'stop_step'):
        if not _is_int(d[key]) or d[key] < 0:
          e.add(f'distill.{key}', d[key], 'must be an integer >= 0 (0 = latest checkpoint / KD for the whole run)')
  if 'init' in c and c.init.from_workdir:
    i = c.init
    e.one_of('init.mode', i.mode, INIT_MODES)
    e.non_negative('init.noise_std', i.noise_std)
    if not _is_int(i.step) or i.step < 0:
      e.add('init.step', i.step, 'must be an integer >= 0 (0 = latest checkpoint)')
    if i.mode == 'upcycle' and not num_moe:
      e.add('init.mode', i.mode, "'upcycle' needs MoE layers in this model (model.layer_plan is dense)")
    learned = c.pool.mixing in MIXING and MIXING_SCHEMES[c.pool.mixing].learned
    if i.mode == 'upcycle' and num_moe and learned and c.pool.init != 'one_hot':
      e.add('pool.init', c.pool.init, "init.mode='upcycle' with learned mixing needs 'one_hot' (each layer starts "
            'near its own upcycled pool entry)')


def _check_finite(node: Any, prefix: str, e: _Errors) -> None:
  """Every float anywhere in the config (lists included) must be finite: a NaN learning rate would train."""
  if isinstance(node, (ml_collections.ConfigDict, dict)):
    for key in node.keys():
      _check_finite(node[key], f'{prefix}.{key}' if prefix else str(key), e)
  elif isinstance(node, (list, tuple)):
    for i, item in enumerate(node):
      _check_finite(item, f'{prefix}[{i}]', e)
  elif isinstance(node, float) and not math.isfinite(node):
    e.add(prefix, node, 'must be a finite number (NaN and Inf are not allowed anywhere in the config)')


def _check_known_keys(c: ml_collections.ConfigDict, e: _Errors) -> list[tuple[str, str]]:
  """Every key of a section the defaults define must be a key of config/defaults.py (a typo is not ignored);
  returns the unknown (section, key) pairs."""
  base = get_base_config()
  out = []
  for section in base.keys():
    if section not in c or not hasattr(c[section], 'keys'):
      continue
    for key in sorted(set(c[section].keys()) - set(base[section].keys())):
      e.add(f'{section}.{key}', c[section][key], f'unknown key; config.{section} has: '
            + ', '.join(sorted(base[section].keys())))
      out.append((section, key))
  return out


def config_errors(config: ml_collections.ConfigDict) -> list[str]:
  """All problems found in config, one line each (empty when valid)."""
  e = _Errors()
  for section in ('model', 'moe', 'pool', 'data', 'train', 'mesh'):
    if section not in config:
      e.lines.append(f'{section}: missing config section (start from samoe_jax.config.defaults.get_base_config())')
  if e.lines:
    return e.lines
  unknown = _check_known_keys(config, e)
  config = complete_config(config)   # keys a config omits take their one default (config/defaults.py)
  _check_finite(config, '', e)
  for section, key in unknown:       # reported above; the other checks run on the known keys
    del config[section][key]
  moe_layers = _check_model(config.model, e)
  _check_data(config, e)
  num_moe = len(moe_layers) if moe_layers else 0
  group_tokens = None
  if num_moe:
    group_tokens = _check_moe(config, e)
    _check_pool(config.pool, num_moe, e)
  _check_momentum(config.moe, moe_layers, e)
  _check_sharing(config, num_moe, e)
  if num_moe:
    _check_pr_moe(config, num_moe, e)
    _check_k_schedule(config, e)   # SMoE-Dropout (layers/k_schedule.py)
  _check_train(config.train, e)
  _check_microbatches(config, e)
  if 'eval' in config:
    _check_eval(config, e)
  _check_mesh(config, num_moe, group_tokens, e)
  _check_distill_init(config, num_moe, e)
  expert_ff = config.moe.expert_d_ff or config.model.d_ff
  e.lines += sparse_pruning.config_problems(config, num_moe, config.model.d_model, expert_ff)
  return e.lines


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises one ValueError listing every problem in config (one per line); returns None when valid."""
  lines = config_errors(config)
  if lines:
    plural = 's' if len(lines) > 1 else ''
    raise ValueError(f'invalid config ({len(lines)} problem{plural}):\n' + '\n'.join(f'  {l}' for l in lines))
