"""Shared builders for the config files in configs/: the tiny Shakespeare models, the benchmark workload, and
the paper-scale GPT-3 + MoE-128 recipe (docs/methods/pr_moe.md). One builder per family, so the members of a comparison
differ only in how their experts are shared (`set_sharing`).

DeepSpeed-MoE (Rajbhandari et al. 2022; Megatron-DeepSpeed `ds_pretrain_gpt_{350M,1.3B}_MoE128.sh`):
  bases      350M: 24 layers, d_model 1024, 16 heads; 1.3B: 24 layers, d_model 2048, 16 heads; d_ff = 4 d_model.
  MoE-128    128 experts on every other FFN (12 MoE layers), top-1, expert FFN = d_ff; 13B and 52B parameters.
  recipe     seq 2048, batch 256 (350M) / 512 (1.3B), 300B tokens, 375M warm-up tokens, cosine decay, AdamW
             b1 0.9 b2 0.95, weight decay 0.1, clip 1.0, init std 0.014, MoE loss 0.01, capacity factor 1.0
             (train and eval), min capacity 4; LR / min LR: MoE 2.0e-4 / 2e-6 (350M), 1.2e-4 / 1e-6 (1.3B);
             dense 3.0e-4 / 3.0e-5 (350M), 2.0e-4 / 2.0e-5 (1.3B).
  vocabulary GPT-2 BPE (50257) padded to 50304, a multiple of 128 (Megatron's --make-vocab-size-divisible-by
             default); this gives 13.15B and 52.47B stored parameters for the MoE-128 models.
  dropout    0.1 (the script sets none, so Megatron's defaults hold: hidden and attention dropout 0.1).
"""

from __future__ import annotations

import math

import ml_collections

from samoe_jax.config.defaults import get_base_config

GPT2_VOCAB_SIZE = 50257
PADDED_VOCAB_SIZE = 50304       # 50257 rounded up to a multiple of 128
SEQ_LEN = 2048
TRAIN_TOKENS = 300_000_000_000
WARMUP_TOKENS = 375_000_000

# name: (num_layers, d_model, num_heads, batch, dense (lr, min_lr), moe (lr, min_lr), mesh.expert for MoE-128)
GPT3_BASES: dict[str, tuple[int, int, int, int, tuple[float, float], tuple[float, float], int]] = {
    '350m': (24, 1024, 16, 256, (3.0e-4, 3.0e-5), (2.0e-4, 2.0e-6), 32),
    '1p3b': (24, 2048, 16, 512, (2.0e-4, 2.0e-5), (1.2e-4, 1.0e-6), 64),
}
KINDS = ('dense', 'moe128', 'samoe')


SHARING_KINDS = ('dense', 'moe', 'samoe', 'tied')


def set_sharing(c: ml_collections.ConfigDict, kind: str, num_moe_layers: int, pool_size: int = 2) -> None:
  """dense: no MoE layers; moe: standard MoE (one fixed pool entry per MoE layer); samoe: a learned pool of
  `pool_size`; tied: one fixed pool entry shared by every MoE layer (P = 1)."""
  if kind not in SHARING_KINDS:
    raise ValueError(f'kind={kind!r} is not one of {SHARING_KINDS}')
  if kind == 'dense':
    c.model.layer_plan = 'none'
  elif kind == 'moe':
    c.pool.size, c.pool.mixing, c.pool.assignment = num_moe_layers, 'fixed', 'modulo'
  elif kind == 'samoe':
    c.pool.size, c.pool.mixing = pool_size, 'learned'
  else:
    c.pool.size, c.pool.mixing = 1, 'fixed'


def tiny(kind: str) -> ml_collections.ConfigDict:
  """The tiny models on the embedded Shakespeare corpus (8k SentencePiece vocabulary): 4 layers, d_model 128,
  4 heads, d_ff 512, 8 experts top-2 on blocks 1 and 3, seq 128, batch 16, 2000 steps (4.1M tokens, about 3
  epochs of the training split; ~8 minutes on 2 CPU cores for the SaMoE model)."""
  c = get_base_config()
  c.model.d_model, c.model.num_layers, c.model.num_heads, c.model.d_ff = 128, 4, 4, 512
  c.model.layer_plan = 'every_other'
  c.moe.num_experts, c.moe.top_k = 8, 2
  c.data.task, c.data.vocabulary = 'shakespeare', 'sentencepiece'
  c.train.steps, c.train.warmup_steps = 2000, 100
  c.train.eval_every = c.train.checkpoint_every = 500
  set_sharing(c, kind, num_moe_layers=2)
  return c


def _bench_workload(kind: str, *, vocab: int, d_model: int, layers: int, heads: int, d_ff: int, seq: int,
                    dtype: str, experts: int) -> ml_collections.ConfigDict:
  """A synthetic-token benchmark decoder: MoE top-2 on every other block, capacity factor 1.25, batch 8, one
  process's devices on `data` (the byte vocabulary setting is only there to validate)."""
  c = get_base_config()
  c.model.vocab_size, c.model.d_model, c.model.num_layers, c.model.num_heads = vocab, d_model, layers, heads
  c.model.d_ff, c.model.max_len, c.model.dtype = d_ff, seq, dtype
  c.model.layer_plan = 'every_other'
  c.moe.num_experts, c.moe.top_k = experts, 2
  c.moe.capacity_factor_train = c.moe.capacity_factor_eval = 1.25
  c.data.vocabulary, c.data.seq_len, c.data.batch_size = 'byte', seq, 8
  c.mesh.data, c.mesh.expert, c.mesh.model = -1, 1, 1
  set_sharing(c, kind, num_moe_layers=layers // 2)
  return c


def bench(kind: str) -> ml_collections.ConfigDict:
  """The benchmark reference workload: d_model 256, 4 layers, 4 heads, FFN 1024, 8 experts top-2 (blocks 1, 3),
  capacity factor 1.25, seq 256, batch 8, vocab 32000, float32."""
  return _bench_workload(kind, vocab=32000, d_model=256, layers=4, heads=4, d_ff=1024, seq=256, dtype='float32',
                         experts=8)


POOL_SWEEP = (('moe', 8, 'gather', 4), ('samoe', 8, 'gather', 1), ('samoe', 8, 'gather', 2),
              ('samoe', 8, 'gather', 4), ('moe', 32, 'gather', 4), ('samoe', 32, 'gather', 4),
              ('moe', 8, 'ragged', 4))   # (kind, experts, moe.dispatch, pool size), for bench --preset=pool


def bench_all_blocks(kind: str, experts: int = 8, dispatch: str = 'gather', pool_size: int = 4
                     ) -> ml_collections.ConfigDict:
  """The reference workload with MoE on all 4 blocks (python -m samoe_jax.bench --preset=pool): the standard MoE
  (kind 'moe', one fixed pool entry per block) or SaMoE with a learned layer-level pool of `pool_size` (1, 2,
  4), with `experts` experts top-2 and the given moe.dispatch ('ragged': dropless)."""
  if kind not in ('moe', 'samoe'):
    raise ValueError(f"kind={kind!r} is not one of ('moe', 'samoe')")
  c = bench('moe')
  c.model.layer_plan = 'all'
  c.moe.num_experts, c.moe.dispatch = experts, dispatch
  set_sharing(c, kind, num_moe_layers=c.model.num_layers, pool_size=pool_size)
  return c


GPU_BENCH_KINDS = ('dense', 'moe', 'samoe')


def bench_gpu(kind: str) -> ml_collections.ConfigDict:
  """The GPU benchmark (python -m samoe_jax.bench --preset=gpu): a GPT-3 350M-class decoder (24 layers, d_model
  1024, 16 heads, FFN 4096, seq 2048, vocab 50304) in bfloat16, as dense, standard MoE-16 top-2 on every other
  block (12 MoE layers, capacity factor 1.25) or SaMoE with a learned pool of P = 2, batch 8 x 2048 tokens: sized
  for one 80+ GB GPU (the MoE stores 1.87B parameters: ~30 GB with float32 gradients and Adam moments)."""
  if kind not in GPU_BENCH_KINDS:
    raise ValueError(f'kind={kind!r} is not one of {GPU_BENCH_KINDS}')
  return _bench_workload(kind, vocab=50304, d_model=1024, layers=24, heads=16, d_ff=4096, seq=2048,
                         dtype='bfloat16', experts=16)


def gpt3(base: str, kind: str, pool_size: int = 2) -> ml_collections.ConfigDict:
  """GPT-3 `base` ('350m' | '1p3b') as a dense model, standard MoE-128 or SaMoE-128 with `pool_size` pool entries.

  Data: a prepared TFDS corpus (task 'tfds_lm', default C4 en; DeepSpeed trained on the MT-NLG blend / the Pile)
  read from data.tfds_data_dir; set data.vocabulary to a ~50k SentencePiece .model for the paper's vocabulary size.
  Mesh (TPU): data -1 (the rest of the devices), expert 32 (350M) / 64 (1.3B) so that the 128 experts' weights
  and optimizer state fit per chip, model 1.
  """
  if base not in GPT3_BASES:
    raise ValueError(f'base={base!r} is not one of {sorted(GPT3_BASES)}')
  if kind not in KINDS:
    raise ValueError(f'kind={kind!r} is not one of {KINDS}')
  layers, d, heads, batch, dense_lr, moe_lr, expert_axis = GPT3_BASES[base]
  c = get_base_config()

  c.model.vocab_size = PADDED_VOCAB_SIZE
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.d_ff = 4 * d
  c.model.max_len = SEQ_LEN
  c.model.dropout_rate = 0.1
  c.model.init_std = 0.014
  c.model.dtype = 'bfloat16'
  c.model.layer_plan = 'none' if kind == 'dense' else 'every_other'

  c.moe.num_experts = 128
  c.moe.top_k = 1
  c.moe.capacity_factor_train = 1.0
  c.moe.capacity_factor_eval = 1.0
  c.moe.min_capacity = 4
  c.moe.group_size = 0                       # one 2048-token sequence per routing group: C = 16
  c.moe.expert_d_ff = 0
  c.moe.lb_loss_coef = 0.01
  c.moe.z_loss_coef = 0.0                    # DeepSpeed-MoE uses no router z-loss
  c.moe.dispatch = 'einsum'                  # one-hot dispatch (TPU)

  num_moe = layers // 2
  if kind == 'samoe':
    c.pool.size = pool_size
    c.pool.mixing = 'learned'
  else:                                      # standard MoE: one pool entry per MoE layer, identity assignment
    c.pool.size = num_moe
    c.pool.mixing = 'fixed'
  c.pool.granularity = 'layer'
  c.pool.space = 'weight'
  c.pool.temperature = 1.0
  c.pool.init = 'uniform'
  c.pool.assignment = 'modulo'

  c.data.task = 'tfds_lm'
  c.data.tfds_name = 'c4/en:3.1.0'
  c.data.seq_len = SEQ_LEN
  c.data.batch_size = batch

  tokens_per_step = batch * SEQ_LEN
  lr, min_lr = dense_lr if kind == 'dense' else moe_lr
  c.train.steps = math.ceil(TRAIN_TOKENS / tokens_per_step)
  c.train.warmup_steps = math.ceil(WARMUP_TOKENS / tokens_per_step)
  c.train.learning_rate = lr
  c.train.min_lr_ratio = min_lr / lr
  c.train.b1 = 0.9
  c.train.b2 = 0.95
  c.train.weight_decay = 0.1
  c.train.grad_clip = 1.0
  c.train.log_every = 100
  c.train.eval_every = 1000
  c.train.eval_batches = 10
  c.train.checkpoint_every = 5000

  c.mesh.data = -1
  c.mesh.expert = 1 if kind == 'dense' else expert_axis
  c.mesh.model = 1
  return c


def parse_pool_size(config_string: str | None, default: int = 2) -> int:
  """The optional `--config=configs/gpt3_..._samoe.py:P` argument (pool size P)."""
  if config_string in (None, ''):
    return default
  try:
    p = int(config_string)
  except ValueError as err:
    raise ValueError(f'config argument {config_string!r} must be an integer pool size (e.g. ":4")') from err
  if p < 1:
    raise ValueError(f'config argument pool size {p} must be >= 1')
  return p
