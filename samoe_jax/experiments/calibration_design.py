"""The calibration designs (issue 25): the shape of each 2-core CPU design, its base config, its runs and its Suite
(the conditions and the report on them: samoe_jax/experiments/calibration.py; the cpu suite in the every-other
design: cpu_comparison.py)."""

from __future__ import annotations

import dataclasses
import os

import ml_collections

from samoe_jax.config.defaults import get_base_config
from samoe_jax.config.layer_plan import moe_layer_indices
from samoe_jax.experiments import suites
from samoe_jax.experiments.suites import ConfigSpec, Suite

VOCABS = {1024: 'sp1k.model', 2048: 'sp2k.model'}


@dataclasses.dataclass(frozen=True)
class Design:
  """One calibration design: a 4-block GPT of width d_model (FFN 4 d_model, heads of 32), SentencePiece vocab,
  seq 128 x batch, `steps` steps at `lr`, the MoE on the blocks of `layer_plan` (model.layer_plan: 'all', or
  'every_other' as in GShard and Switch); `wide` the wider dense model's d_model."""
  d_model: int = 64
  wide: int = 128
  vocab: int = 1024
  batch: int = 64
  steps: int = 1200
  lr: float = 3e-3
  num_layers: int = 4
  seq_len: int = 128
  experts: tuple[int, ...] = (4, 8, 16)
  evals: int = 6
  eval_tokens: int = 65536     # per validation (>= 64k: eval noise well below seed noise)
  layer_plan: str = 'all'

  @property
  def num_moe(self) -> int:
    """MoE blocks under layer_plan."""
    return len(moe_layer_indices(ml_collections.ConfigDict({'num_layers': self.num_layers,
                                                            'layer_plan': self.layer_plan})))

  @property
  def tokens(self) -> int:
    return self.steps * self.batch * self.seq_len


def heads(d_model: int) -> int:
  """Heads of width 32."""
  return max(1, d_model // 32)


def make_base(design: Design):
  """The base config builder (corpus_dir, cache_dir) -> ConfigDict of `design` (the dense model's shape; the
  specs set the MoE)."""
  def base(corpus_dir: str, cache_dir: str) -> ml_collections.ConfigDict:
    c = get_base_config()
    d = design.d_model
    c.model.vocab_size, c.model.d_model, c.model.num_layers = design.vocab, d, design.num_layers
    c.model.num_heads, c.model.d_ff, c.model.max_len = heads(d), 4 * d, design.seq_len
    c.moe.num_experts = max(design.experts)
    c.pool.size, c.pool.mixing = design.num_moe, 'fixed'
    suites._corpus_data(c, corpus_dir, cache_dir)   # pylint: disable=protected-access
    c.data.vocabulary = os.path.join(corpus_dir, VOCABS[design.vocab])
    c.data.seq_len, c.data.batch_size = design.seq_len, design.batch
    c.moe.group_size = suites.GROUP_SIZE
    c.train.learning_rate = design.lr
    c.train.eval_batches = max(1, -(-design.eval_tokens // (design.batch * design.seq_len)))
    suites._common(c)   # pylint: disable=protected-access
    c.model.layer_plan = design.layer_plan
    return c
  return base


def specs(design: Design) -> tuple[ConfigSpec, ...]:
  """dense (base), dense_dWIDE, moe_eE for E in design.experts (the largest: role 'moe')."""
  out = [suites.dense(design.d_model, heads(design.d_model), name='dense'),
         suites.dense(design.wide, heads(design.wide))]
  top = max(design.experts)
  out += [suites.standard_moe(e, design.num_moe, role='moe' if e == top else 'sweep') for e in design.experts]
  return tuple(out)


def make_suite(name: str, design: Design, seeds: int = 3, budget: str = '') -> Suite:
  """The calibration Suite of `design` (grad_stats: one record, the gradient-flow analysis is not its point)."""
  return Suite(name, f'Calibration: d_model {design.d_model} vs {design.wide}, MoE E = '
               f'{"/".join(map(str, design.experts))} top-1 on {PLACEMENT.get(design.layer_plan, design.layer_plan)}, '
               f'vocab {design.vocab}, '
               f'{design.tokens / 1e6:.1f}M tokens per run.', make_base(design), specs(design), seeds=seeds,
               steps=design.steps, evals=design.evals, grad_stats=1, needs_corpus=True, budget=budget)


PLACEMENT = {'all': 'every block', 'every_other': 'every other block'}
DESIGN = Design(batch=32, steps=400, evals=5)
CALIBRATION = make_suite('calibration', DESIGN, seeds=3, budget='about 45 minutes on 2 idle CPU cores')
# The second design: the MoE on every other block (GShard, Lepikhin et al. 2020; Switch, Fedus et al. 2022), after
# a probe found the all-blocks top-1 MoE behind dense with or without drops (docs/results/calibration_every_other).
DESIGN_EVERY_OTHER = dataclasses.replace(DESIGN, layer_plan='every_other')
CALIBRATION_EVERY_OTHER = make_suite('calibration_every_other', DESIGN_EVERY_OTHER, seeds=3,
                                     budget='about 45 minutes on 2 idle CPU cores')
