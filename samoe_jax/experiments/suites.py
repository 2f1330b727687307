"""The experiment suites of `python -m samoe_jax.experiments.reproduce` (docs/experiments.md).

Every suite trains the same set of model configs, each an ordinary samoe_jax config (a base plus overrides), at
equal active parameters per token and equal tokens, for several seeds (train.seed = data.shuffle_seed = seed):

  dense_d*      the dense GPT at several widths: the compute-to-loss frontier of the MoE speedup factor
                (Artetxe et al. 2021); `dense` (the base width) is the dense model of the MoE's own shape
  moe_e*        the standard top-k MoE (GShard / Switch) with E experts on every block (pool of P = L_moe entries,
                fixed one-hot mixing); moe_e16 is the baseline, the others the gradient-flow sweep over E
  prmoe         PR-MoE (Rajbhandari et al. 2022): fewer experts in the first half, Residual-MoE (MLP + top-1
                expert), expert and residual MLP each half the FFN width, so active parameters stay equal
  widenet       WideNet (Xue et al. 2022): one expert set, one router and one attention shared by every block,
                per-block LayerNorms
  manual        manual sharing: adjacent MoE layers share an expert set (fixed mixing, P = L_moe / 2)
  samoe_p*      SaMoE (Zhang et al. 2022): a learned pool of P global MoE layers, every MoE layer a softmax
                mixture of it; P = 1 is fully tied experts with per-layer routers

Suites: 'smoke' (CI: tiny byte-level models on the embedded Shakespeare slice, one seed, a few dozen steps),
'cpu' (samoe_jax/experiments/cpu_comparison.py: the comparison in the calibration's every-other-block design, about
75 minutes on 2 CPU cores, on the experiment corpus, samoe_jax/data/experiment_corpus.py), 'gpu'
(the same comparison sized for one H100-class GPU, about 10 minutes; not yet timed) and 'paper' (the GPT-3
350M / 1.3B + MoE-128 recipes on a TPU slice: commands only).

Routing groups (moe.group_size): the 'cpu' and 'gpu' suites route groups of 1024 tokens (8 sequences of 128, 4 of
256), not one sequence (group_size 0). At C = ceil(1.25 T / E) slots per expert, even uniform random routing drops a
share of assignments that grows with E and shrinks with T (samoe_jax.analysis.drop_floor): with one sequence of 128
tokens (cpu) 1.9 / 4.9 / 9.9 % at E = 8 / 16 / 32, of 256 tokens (gpu) 0.5 / 2.1 / 5.1 %, so drops would rise with E
just as the loss is measured over E and confound the sweep. 1024 is the smallest group of whole sequences the
batch allows (a multiple of data.seq_len dividing data.batch_size * data.seq_len; shorter groups only avoid drops
through moe.min_capacity's padded buffers) at which every MoE config of the gpu suite, at every E of its sweep, has
a uniform-routing floor below 1 % in training and validation (0.68 % at E = 32; 2.2 % at 512); the cpu suite
(E <= 16) keeps the same groups (0.11 % at E = 16).
tests/test_drop_floor.py checks both. The smoke suite keeps one sequence per group (a pipeline check, not a
measurement).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping

import ml_collections

from samoe_jax.config.defaults import get_base_config

SUITES = ('smoke', 'cpu', 'gpu', 'paper', 'calibration', 'calibration_every_other', 'mixing', 'h100')
ROLES = ('dense', 'moe', 'sweep', 'baseline', 'samoe')
# The SaMoE configs' mixing-logit reach (pool.target_reach): short runs at 1x cannot move the mixture (the
# mixing probe: R = 1 left it uniform, R = 10 moved it without collapsing; docs/model.md, "Mixing that learns").
MIXING_REACH = 10.0


@dataclasses.dataclass(frozen=True)
class ConfigSpec:
  """One model of a suite: `name` (its workdirs are NAME_seedS), a table label, a role, and dotted-key overrides.

  role: 'dense' (speedup reference), 'moe' (the standard-MoE baseline every sharing method is compared with),
  'sweep' (standard MoE at another E, for the gradient-flow sweep), 'baseline' (PR-MoE, WideNet, manual) or
  'samoe'.
  """
  name: str
  label: str
  role: str
  overrides: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Suite:
  """A set of model configs trained for `seeds` seeds each on one base config (`base(corpus_dir, cache_dir)`),
  `steps` steps with `evals` validations and `grad_stats` gradient-statistics records per run."""
  name: str
  description: str
  base: Callable[[str, str], ml_collections.ConfigDict]
  configs: tuple[ConfigSpec, ...]
  seeds: int
  steps: int
  evals: int
  grad_stats: int
  needs_corpus: bool
  budget: str                      # what the suite is sized for, in words

  def config(self, spec: ConfigSpec, seed: int, corpus_dir: str = '', cache_dir: str = '',
             steps: int | None = None) -> ml_collections.ConfigDict:
    """The full config of one run of `spec` with `seed` (steps: instead of the suite's)."""
    c = self.base(corpus_dir, cache_dir)
    set_schedule(c, steps or self.steps, self.evals, self.grad_stats)
    c.update_from_flattened_dict(dict(spec.overrides))
    c.train.seed = seed
    c.data.shuffle_seed = seed
    return c

  def spec(self, name: str) -> ConfigSpec:
    for spec in self.configs:
      if spec.name == name:
        return spec
    raise ValueError(f'suite {self.name!r} has no config {name!r}: it has {[s.name for s in self.configs]}')


def run_name(spec: ConfigSpec, seed: int) -> str:
  """The workdir name of one run: NAME_seedS."""
  return f'{spec.name}_seed{seed}'


# ----------------------------------------------------------------------------------------------- the configs
def dense(d_model: int, heads: int, name: str | None = None) -> ConfigSpec:
  return ConfigSpec(name or f'dense_d{d_model}', f'dense d_model={d_model}', 'dense',
                    {'model.layer_plan': 'none', 'model.d_model': d_model, 'model.d_ff': 4 * d_model,
                     'model.num_heads': heads})


def standard_moe(num_experts: int, num_moe: int, role: str = 'sweep') -> ConfigSpec:
  label = f'MoE E={num_experts}' + (' (standard)' if role == 'moe' else '')
  return ConfigSpec(f'moe_e{num_experts}', label, role,
                    {'moe.num_experts': num_experts, 'pool.size': num_moe, 'pool.mixing': 'fixed',
                     'pool.assignment': 'modulo'})


def sharing_configs(num_moe: int, num_experts: int, d_ff: int, pool_sizes: tuple[int, ...]) -> list[ConfigSpec]:
  """PR-MoE, WideNet, manual adjacent sharing and SaMoE at `pool_sizes`, for a model with `num_moe` MoE layers of
  `num_experts` experts (top-1) and FFN width `d_ff`."""
  half = num_moe // 2
  small, large = num_experts // 2, num_experts
  out = [
      ConfigSpec('prmoe', f'PR-MoE {small}/{large} + residual', 'baseline',
                 {'moe.experts_per_layer': f'{small}x{half},{large}x{num_moe - half}', 'moe.num_experts': small,
                  'moe.residual': 'sum', 'moe.expert_d_ff': d_ff // 2, 'pool.size': num_moe,
                  'pool.mixing': 'fixed', 'pool.assignment': 'modulo'}),
      ConfigSpec('widenet', 'WideNet (all shared)', 'baseline',
                 {'pool.size': 1, 'pool.mixing': 'fixed', 'pool.share_router': True,
                  'model.share_attention': True}),
      ConfigSpec('manual', f'manual sharing (adjacent pairs, P={max(num_moe // 2, 1)})', 'baseline',
                 {'pool.size': max(num_moe // 2, 1), 'pool.mixing': 'fixed', 'pool.assignment': 'block'}),
  ]
  for p in pool_sizes:
    label = f'SaMoE P={p}' + (' (tied experts)' if p == 1 else '')
    out.append(ConfigSpec(f'samoe_p{p}', label, 'samoe', {'pool.size': p, 'pool.mixing': 'learned',
                                                          'pool.target_reach': MIXING_REACH}))
  return out


# ------------------------------------------------------------------------------------------------ the bases
def _common(c: ml_collections.ConfigDict) -> None:
  c.model.layer_plan = 'all'
  c.model.dropout_rate = 0.0
  c.moe.top_k = 1


def set_schedule(c: ml_collections.ConfigDict, steps: int, evals: int, grad_stats: int) -> None:
  """train.steps and what follows from it: 10 % warm-up, cosine over the run, ~30 logs, `evals` validations,
  `grad_stats` gradient-statistics records, a checkpoint halfway (for resume) and at the end."""
  c.train.steps = steps
  c.train.warmup_steps = max(1, steps // 10)
  c.train.decay_steps = 0
  c.train.log_every = max(1, steps // 30)
  c.train.eval_every = max(1, steps // evals)
  c.train.checkpoint_every = max(1, steps // 2)
  c.train.keep_checkpoints = 1
  c.train.grad_stats_every = max(1, steps // grad_stats)


def smoke_base(corpus_dir: str = '', cache_dir: str = '') -> ml_collections.ConfigDict:
  """Byte-level 2-block models (d_model 32, E = 4 top-1 on both blocks) on the embedded Shakespeare slice."""
  del corpus_dir, cache_dir
  c = get_base_config()
  c.model.vocab_size, c.model.d_model, c.model.num_layers, c.model.num_heads = 264, 32, 2, 2
  c.model.d_ff, c.model.max_len = 128, 32
  c.moe.num_experts = 4
  c.pool.size, c.pool.mixing = 2, 'fixed'
  c.data.task, c.data.vocabulary, c.data.seq_len, c.data.batch_size = 'shakespeare_tiny', 'byte', 32, 8
  c.data.shuffle_buffer = 100
  c.train.eval_batches = 2
  c.train.async_checkpoint = False
  _common(c)
  return c


def _corpus_data(c: ml_collections.ConfigDict, corpus_dir: str, cache_dir: str) -> None:
  c.data.task = 'text_files'
  c.data.train_files = os.path.join(corpus_dir, 'train.jsonl.gz')
  c.data.validation_files = os.path.join(corpus_dir, 'validation.jsonl.gz')
  c.data.vocabulary = os.path.join(corpus_dir, 'sp4k.model')
  c.data.cache_dir = cache_dir


GROUP_SIZE = 1024   # tokens per routing group of the cpu and gpu suites (module docstring: the drop floor < 1 %)


def gpu_base(corpus_dir: str, cache_dir: str) -> ml_collections.ConfigDict:
  """6 blocks, d_model 256, 4 heads, FFN 1024, 16 experts top-1 on every block, bfloat16, seq 256 x 32, routing
  groups of GROUP_SIZE tokens (4 sequences)."""
  c = get_base_config()
  c.model.vocab_size, c.model.d_model, c.model.num_layers, c.model.num_heads = 4096, 256, 6, 4
  c.model.d_ff, c.model.max_len, c.model.dtype = 1024, 256, 'bfloat16'
  c.moe.num_experts = 16
  c.pool.size, c.pool.mixing = 6, 'fixed'
  _corpus_data(c, corpus_dir, cache_dir)
  c.data.seq_len, c.data.batch_size = 256, 32
  c.moe.group_size = GROUP_SIZE
  c.train.learning_rate = 2e-3
  c.train.eval_batches = 16
  _common(c)
  return c


def _comparison(num_moe: int, d_model: int, heads: int, num_experts: int, d_ff: int, dense_widths: tuple[int, ...],
                sweep: tuple[int, ...], pool_sizes: tuple[int, ...]) -> tuple[ConfigSpec, ...]:
  specs = [dense(d_model, heads, name='dense')]
  specs += [dense(w, heads) for w in dense_widths]
  specs.append(standard_moe(num_experts, num_moe, role='moe'))
  specs += [standard_moe(e, num_moe) for e in sweep if e != num_experts]
  specs += sharing_configs(num_moe, num_experts, d_ff, pool_sizes)
  return tuple(specs)


SMOKE = Suite(
    'smoke', 'CI check of the whole pipeline: tiny byte-level models, one seed, 24 steps each.', smoke_base,
    (dense(32, 2, name='dense'), dense(16, 2), dense(48, 2), standard_moe(4, 2, role='moe'), standard_moe(8, 2),
     ConfigSpec('samoe_p1', 'SaMoE P=1 (tied experts)', 'samoe', {'pool.size': 1, 'pool.mixing': 'learned'})),
    seeds=1, steps=24, evals=3, grad_stats=3, needs_corpus=False, budget='under 3 minutes on 2 CPU cores')
GPU = Suite(
    'gpu', 'The same comparison on one GPU: 6 MoE blocks of 16 experts (top-1), d_model 256, 4.9M tokens per run.',
    gpu_base, _comparison(6, 256, 4, 16, 1024, dense_widths=(128, 384, 512), sweep=(4, 8, 16, 32),
                          pool_sizes=(1, 2, 3)),
    seeds=3, steps=600, evals=6, grad_stats=20, needs_corpus=True,
    budget='about 10 minutes on one H100-class GPU (estimated, not yet timed)')
