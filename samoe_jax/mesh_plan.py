"""Recommended mesh and batch settings for a config on a TPU slice or a GPU node, from a memory model.

  python -m samoe_jax.mesh_plan --config=configs/gpt3_1p3b_moe128.py --hardware=tpu-v5p --devices=64
  python -m samoe_jax.mesh_plan --readme        # the README table: paper-scale configs x TPU v4/v5e/v5p, 8xH100

--hardware: tpu-v4, tpu-v5e, tpu-v5p, tpu-v6e (Trillium), a100, h100, h200 (HARDWARE: the vendors' published peak
dense bfloat16 FLOP/s, HBM capacity and bandwidth per device). A --config prints the table's header, the config's row
(labelled with the file's name) and the device's figures with their source.

How a mesh (data, expert, model) is chosen, in order:
  expert  = gcd(num_experts, devices / model): every expert lives on one expert shard, so expert weights, their gradients
            and Adam moments are never replicated (no gradient all-reduce over expert weights, only the dispatch
            all-to-all), as DeepSpeed-MoE and GShard place experts.
  model   = the smallest power of two (dividing heads, d_ff and the vocabulary) with which the per-device
            memory below fits in 90 % of the chip's HBM; tensor parallelism costs all-reduces on every layer, so
            it is used only when memory needs it (but before recomputation, which costs a third more compute).
  data    = the remaining devices. The global batch is split over data x expert (rows per device).
  remat, microbatches: when the activations of those rows do not fit, first `model.remat='block'` (keep only
            each block's input, recompute the rest: ~1/3 more compute), then `train.microbatches` M (gradient
            accumulation over M slices of the rows; M divides the rows per device and keeps routing groups
            whole). Per model axis the first that fits of: no remat with M = 1, 2, ...; remat with M = 1, 2, ...

Per-device memory (an estimate, before XLA's own buffers; check with the compiled step's memory analysis):
  state        (4 param + 4 + 4 Adam moments + 4 gradient) bytes per float32 parameter (2 + 2 for the moments
               with train.moment_dtype='bfloat16'), + 2 for the bfloat16 compute copy when model.dtype is
               bfloat16; expert arrays divided by expert x model, the model-sharded non-expert arrays
               (embedding, attention and dense FFN kernels) by model. With mesh.fsdp (sharding/fsdp.py) every
               non-expert array is also divided by data x expert.
  mixed        SaMoE with learned weight-space mixing materializes each MoE layer's local experts once per step
               (compute dtype, plus their float32 gradient).
  gathered     with mesh.fsdp only: the non-expert weights XLA all-gathers for the layer it computes, taken as
               the token embedding and two blocks (the one computed and the next, prefetched), float32 / model.
  activations  per layer and sequence, Korthikanti et al. 2022 (arXiv:2205.05198) without recomputation:
               s*h*(10 + 24/t) + 5*a*s^2/t bytes in 16-bit (x2 for float32), s = seq_len, h = d_model,
               a = heads, t = model; an MoE layer's FFN share (19*s*h) scales with top_k x capacity factor, plus
               its dispatch and combine buffers. Where model.attention resolves to cuDNN flash attention (a
               bfloat16 model on the GPUs; layers/attention_kernel.py) the 5*a*s^2/t of stored scores is
               dropped. With remat='block' only every block's input (s*h words) is kept, plus one block's full
               activations while it is recomputed.
Step time is the train FLOPs (samoe_jax.models.accounting) over the slice's peak bfloat16 rate at an assumed 40 % MFU.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from typing import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from samoe_jax import cli
from samoe_jax.config.layer_plan import group_rows
from samoe_jax.config.presets import gpt3
from samoe_jax.layers.attention_kernel import resolve_kernel
from samoe_jax.models import accounting

GIB = 1024 ** 3
HEADROOM = 0.9        # fraction of HBM the plan may use
ASSUMED_MFU = 0.4


@dataclasses.dataclass(frozen=True)
class Hardware:
  """One device kind, per device: the vendor's published figures (`source`)."""
  name: str
  hbm_bytes: float      # HBM capacity, bytes
  peak_flops: float     # dense bfloat16 FLOP/s (NVIDIA's "with sparsity" figures halved)
  hbm_bandwidth: float  # bytes/s; listed, not used by the plan (which is a memory-capacity and FLOP model)
  device_word: str
  backend: str          # jax's backend name there: which attention kernel model.attention resolves to
  source: str

  def describe(self) -> str:
    """One line: the device's figures and their source."""
    return (f'{self.name}: {self.peak_flops / 1e12:.0f} TFLOP/s bf16 dense, {self.hbm_bytes / 1e9:.0f} GB = '
            f'{self.hbm_bytes / GIB:.1f} GiB HBM at {self.hbm_bandwidth / 1e12:.2f} TB/s per device ({self.source})')


# Figures as the vendors publish them (GB and TB/s decimal; Google writes GiB for v4). TPU v5e and v5p: the
# Cloud TPU pages now say 16 GB and 95 GB; the planner has used 16 and 95 GiB since it was written (the README table).
HARDWARE = {
    'tpu-v4': Hardware('TPU v4', 32 * GIB, 275e12, 1200e9, 'chips', 'tpu',
                       'Google Cloud TPU v4 documentation'),
    'tpu-v5e': Hardware('TPU v5e', 16 * GIB, 197e12, 819e9, 'chips', 'tpu',
                        'Google Cloud TPU v5e documentation'),
    'tpu-v5p': Hardware('TPU v5p', 95 * GIB, 459e12, 2765e9, 'chips', 'tpu',
                        'Google Cloud TPU v5p documentation'),
    'tpu-v6e': Hardware('TPU v6e', 32e9, 918e12, 1638e9, 'chips', 'tpu',             # Trillium
                        'Google Cloud TPU v6e documentation'),
    'a100': Hardware('A100 SXM 80GB', 80e9, 312e12, 2039e9, 'GPUs', 'gpu',         # 624 with sparsity
                     'NVIDIA A100 datasheet, 80GB SXM'),
    'h100': Hardware('H100 SXM 80GB', 80e9, 989e12, 3350e9, 'GPUs', 'gpu',         # 1,979 with sparsity
                     'NVIDIA H100 datasheet, SXM'),
    'h200': Hardware('H200 SXM 141GB', 141e9, 989e12, 4800e9, 'GPUs', 'gpu',       # 1,979 with sparsity
                     'NVIDIA H200 datasheet, SXM'),
}


def get_hardware(key: str) -> Hardware:
  """HARDWARE[key]; a ValueError naming the value and the known kinds otherwise."""
  if key not in HARDWARE:
    raise ValueError(f'--hardware={key!r}: not a known device kind; allowed: {", ".join(sorted(HARDWARE))}')
  return HARDWARE[key]


@dataclasses.dataclass(frozen=True)
class Plan:
  """One mesh choice and its per-device memory (bytes) and time estimates."""
  data: int
  expert: int
  model: int
  rows_per_device: int
  remat: str
  microbatches: int
  state_bytes: float
  mixed_bytes: float
  activation_bytes: float      # for one microbatch
  step_seconds: float
  fits: bool
  gathered_bytes: float = 0.0  # mesh.fsdp: one layer's gathered non-expert weights
  fsdp: bool = False
  moment_dtype: str = 'float32'

  @property
  def total_bytes(self) -> float:
    return self.state_bytes + self.mixed_bytes + self.gathered_bytes + self.activation_bytes


def _split_non_expert(s: accounting.Sizes) -> tuple[int, int]:
  """(model-sharded, replicated) non-expert parameter counts (see samoe_jax/sharding/rules.py)."""
  d = s.d_model
  sharded = s.vocab * d * (1 if s.tied else 2) + s.num_layers * (4 * d * d + 3 * d)
  sharded += s.num_dense * (2 * d * s.d_ff + s.d_ff)
  replicated = s.max_len * d + 2 * d + s.num_layers * (4 * d + d) + s.num_dense * d
  return sharded, replicated


def activation_bytes_per_row(config: ml_collections.ConfigDict, model: int, remat: str = 'none',
                             fused_attention: bool = False) -> float:
  """Saved activations of one sequence through the whole network (module docstring), bytes. fused_attention:
  flash attention stores no scores."""
  s = accounting.resolve(config)
  seq, h, a = s.seq_len, s.d_model, s.num_heads
  word = 2 if config.model.dtype == 'bfloat16' else 4
  dense_layer = seq * h * (10 + 24 / model) + (0 if fused_attention else 5 * a * seq * seq / model)
  moe_factor = s.top_k * config.moe.capacity_factor_train
  ffn_share = 19 * seq * h / model
  moe_layer = dense_layer + ffn_share * (moe_factor - 1) + 2 * moe_factor * seq * h
  if remat == 'block':
    return (s.num_layers * seq * h * 2 + max(dense_layer, moe_layer if s.num_moe else 0.0)) * word / 2
  return (s.num_dense * dense_layer + s.num_moe * moe_layer) * word / 2


def plan_mesh(config: ml_collections.ConfigDict, hardware: Hardware, devices: int, model: int) -> Plan | None:
  """The plan with a given model-axis size, or None when the sizes do not divide."""
  s = accounting.resolve(config)
  experts = s.num_experts if s.num_moe else 1
  if devices % model:
    return None
  expert = math.gcd(experts, devices // model)
  if s.num_heads % model or s.d_ff % model or s.vocab % model:
    return None
  data = devices // (expert * model)
  batch_shards = data * expert
  if config.data.batch_size % batch_shards:
    return None
  counts = accounting.param_counts(config)
  sharded, replicated = _split_non_expert(s)
  fsdp = bool(config.mesh.get('fsdp', False)) and batch_shards > 1   # one data shard: nothing to split
  moment_word = 2 if config.train.get('moment_dtype', 'float32') == 'bfloat16' else 4
  per_param = 8 + 2 * moment_word + (2 if config.model.dtype == 'bfloat16' else 0)
  expert_out_bias = s.pool_size * s.num_experts * s.d_model if s.num_moe else 0    # [P, E, D]: not over model
  expert_params = ((counts['expert_pool'] - expert_out_bias) / model + expert_out_bias) / expert
  non_expert = (sharded / model + replicated + counts['routers'] + counts['mixing_logits']) / (
      batch_shards if fsdp else 1)
  state = per_param * (non_expert + expert_params)
  gathered = 0.0
  if fsdp:
    block = 4 * s.d_model * s.d_model + (2 * s.d_model * s.d_ff if s.num_dense else 0)
    gathered = 4 * (s.vocab * s.d_model + 2 * block) / model
  compute_word = 2 if config.model.dtype == 'bfloat16' else 4
  mixed = 0.0
  if s.mixes_weights:
    mixed = s.num_moe * (s.num_experts / expert) * counts['params_per_expert'] / model * (compute_word + 4)
  rows = config.data.batch_size // batch_shards
  unit = group_rows(config)
  fused = resolve_kernel(config.model.get('attention', 'auto'), config.model.dtype, config.model.dropout_rate,
                         s.d_model // s.num_heads, backend=hardware.backend) == 'cudnn'
  budget = HEADROOM * hardware.hbm_bytes - state - mixed - gathered
  counts = [m for m in range(1, rows + 1) if rows % m == 0 and (rows // m) % unit == 0] or [1]
  options = [('none', m) for m in counts] + [('block', m) for m in counts]
  remat, microbatches = next(((r, m) for r, m in options
                              if activation_bytes_per_row(config, model, r, fused) * rows / m <= budget), options[-1])
  activations = activation_bytes_per_row(config, model, remat, fused) * rows / microbatches
  fits = state + mixed + gathered + activations <= HEADROOM * hardware.hbm_bytes
  step = accounting.flops_per_step(config)['train'] / (devices * hardware.peak_flops * ASSUMED_MFU)
  if remat == 'block':
    step *= 4 / 3    # the forward pass runs twice
  return Plan(data, expert, model, rows, remat, microbatches, state, mixed, activations, step, fits, gathered, fsdp,
              'bfloat16' if moment_word == 2 else 'float32')


def _cost(p: Plan) -> tuple[bool, int, int]:
  return (p.remat != 'none', p.model, p.microbatches)


def state_savers(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
  """The config as given, then with mesh.fsdp=True, then also with train.moment_dtype='bfloat16' (each only when
  it changes something): the order in which `recommend` gives up replicated state."""
  variants, settings = [], []
  fsdp, moments = bool(config.mesh.get('fsdp', False)), config.train.get('moment_dtype', 'float32')
  for setting in ((fsdp, moments), (True, moments), (True, 'bfloat16')):
    if setting not in settings:
      variant = ml_collections.ConfigDict(config.to_dict())
      variant.mesh.fsdp, variant.train.moment_dtype = setting
      settings.append(setting)
      variants.append(variant)
  return variants


def recommend(config: ml_collections.ConfigDict, hardware: Hardware, devices: int) -> Plan:
  """The fitting plan without recomputation if any, then with the smallest model axis, then the fewest
  microbatches, with the config's mesh.fsdp and train.moment_dtype; when none fits, the same with FSDP, then
  with FSDP and bfloat16 moments (`state_savers`); when nothing fits, the plan needing the least memory (marked
  as not fitting)."""
  tried = []
  for variant in state_savers(config):
    plans = [p for t in (1, 2, 4, 8, 16) if (p := plan_mesh(variant, hardware, devices, t)) is not None]
    fitting = [p for p in plans if p.fits]
    if fitting:
      return min(fitting, key=_cost)
    tried += plans
  if not tried:
    raise ValueError(f'no (data, expert, model) mesh of {devices} devices divides data.batch_size='
                     f'{config.data.batch_size}, moe.num_experts={config.moe.num_experts} and the model widths')
  return min(tried, key=lambda p: p.total_bytes)


TABLE_HEADER = ('| config | slice | mesh data x expert x model | mesh.fsdp | train.moment_dtype | sequences per device | '
                'model.remat | train.microbatches | GiB/device: state + mixed + gathered + activations | GiB total | '
                'step s at 40 % MFU |\n'
                '|---|---|---|---|---|---:|---|---:|---|---:|---:|')


def plan_row(label: str, config: ml_collections.ConfigDict, hw_key: str, devices: int) -> str:
  """One table row (TABLE_HEADER's columns): the recommended plan of `config` on `devices` of `hw_key`."""
  hw = get_hardware(hw_key)
  p = recommend(config, hw, devices)
  memory = f'{p.total_bytes / GIB:.1f}' + ('' if p.fits else ' **does not fit**')
  return (f'| {label} | {devices} {hw.name} {hw.device_word} | {p.data} x {p.expert} x {p.model} | '
          f'{p.fsdp} | {p.moment_dtype} | {p.rows_per_device} | {p.remat} | {p.microbatches} | '
          f'{p.state_bytes / GIB:.1f} + {p.mixed_bytes / GIB:.1f} + {p.gathered_bytes / GIB:.1f} + '
          f'{p.activation_bytes / GIB:.1f} | {memory} | {p.step_seconds:.2f} |')


README_CONFIGS = (('350M+MoE-128', '350m', 'moe128'), ('350M SaMoE P=2', '350m', 'samoe'),
                  ('1.3B+MoE-128', '1p3b', 'moe128'), ('1.3B SaMoE P=2', '1p3b', 'samoe'))
README_SLICES = (('tpu-v4', 64), ('tpu-v5e', 64), ('tpu-v5p', 64), ('h100', 8))


def readme_table() -> str:
  """The README's table: every paper-scale config on 64-chip TPU v4/v5e/v5p slices and one 8xH100 node."""
  lines = [TABLE_HEADER]
  for label, base, kind in README_CONFIGS:
    config = gpt3(base, kind)
    for hw_key, devices in README_SLICES:
      lines.append(plan_row(label, config, hw_key, devices))
  return '\n'.join(lines)


def config_table(config: ml_collections.ConfigDict, label: str, hw_key: str, devices: int) -> str:
  """The table of one config (header and its row), then the device's figures and their source."""
  if devices < 1:
    raise ValueError(f'--devices={devices}: must be >= 1')
  row = plan_row(label, config, hw_key, devices)
  return f'{TABLE_HEADER}\n{row}\n\n{get_hardware(hw_key).describe()}'


def _run(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  get_hardware(f.hardware)   # checked also with --readme, which does not use it
  if f.readme:
    print(readme_table())
  elif f.config is None:
    raise ValueError('give --config=FILE (with --hardware and --devices), or --readme')
  else:
    name = os.path.splitext(os.path.basename(config_flags.get_config_filename(f['config'])))[0]
    print(config_table(f.config, name, f.hardware, f.devices))


def main(argv: Sequence[str] | None = None) -> None:
  """The command (python -m, a console script): defines its flags here, not at import (every command module
  imports in one process), and runs through cli.run_app."""
  config_flags.DEFINE_config_file('config', None, 'A config file (configs/*.py).')
  flags.DEFINE_string('hardware', 'tpu-v5p', f'Device kind: one of {", ".join(sorted(HARDWARE))}.')
  flags.DEFINE_integer('devices', 64, 'Devices in the slice or node (chips / GPUs).')
  flags.DEFINE_bool('readme', False, 'Print the README table of recommended settings and exit.')
  cli.run_app('samoe_jax.mesh_plan', _run, sys.argv if argv is None else list(argv))


if __name__ == '__main__':
  sys.exit(main())
