"""Calibration (issue 25): find a 2-core CPU design in which the SaMoE comparison can say anything at all.

  python -m samoe_jax.experiments.reproduce --suite=calibration --out=DIR --corpus_dir=CORPUS   # train
  python -m samoe_jax.experiments.calibration --out=DIR [--corpus_dir=CORPUS]                   # report
  python -m samoe_jax.experiments.calibration --bench [--steps=20 --repeats=2]                  # throughput

The committed cpu suite (0.83 tokens per non-embedding parameter) sits where parameters buy nothing. The
calibration trains, at equal tokens, the base dense model, one wider dense model and the standard top-1 MoE at
E = 4, 8, 16 (experts of the dense FFN's width on every block, so each MoE has the base dense model's active
parameters per token), and checks three conditions, each a gap of mean final validation cross-entropy (nats)
against the pooled seed std sqrt((s_a^2 + s_b^2) / 2) (sample stds over seeds):

  (a) capacity   the wider dense model beats the base dense model by more than PASS_STDS pooled stds;
  (b) experts    the MoE's loss falls from E = 4 to 8 and from 8 to 16, each step by more than PASS_STDS;
  (c) MoE        the standard MoE (E = 16) beats the dense model of equal active parameters by more than PASS_STDS.

Every gap is also followed over tokens along the validation curves (mean over seeds at each evaluation), with a
least-squares line in log(tokens) (a simple fit, stated as such) and the tokens at which it would cross the pass
line when its slope points there. DIR/report/calibration.md, calibration.json and calibration_gaps.png are written
from the runs' metrics.jsonl; no sentence is written by hand.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

import ml_collections
import numpy as np

from samoe_jax.config.defaults import get_base_config
from samoe_jax.experiments import suites
from samoe_jax.experiments.suites import ConfigSpec, Suite

PASS_STDS = 2.0
VOCABS = {1024: 'sp1k.model', 2048: 'sp2k.model'}


@dataclasses.dataclass(frozen=True)
class Design:
  """One calibration design: a 4-block GPT of width d_model (FFN 4 d_model, heads of 32), SentencePiece vocab,
  seq 128 x batch, `steps` steps at `lr`, the MoE on every block; `wide` the wider dense model's d_model."""
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
    c.pool.size, c.pool.mixing = design.num_layers, 'fixed'
    suites._corpus_data(c, corpus_dir, cache_dir)   # pylint: disable=protected-access
    c.data.vocabulary = os.path.join(corpus_dir, VOCABS[design.vocab])
    c.data.seq_len, c.data.batch_size = design.seq_len, design.batch
    c.moe.group_size = suites.GROUP_SIZE
    c.train.learning_rate = design.lr
    c.train.eval_batches = max(1, -(-design.eval_tokens // (design.batch * design.seq_len)))
    suites._common(c)   # pylint: disable=protected-access
    return c
  return base


def specs(design: Design) -> tuple[ConfigSpec, ...]:
  """dense (base), dense_dWIDE, moe_eE for E in design.experts (the largest: role 'moe')."""
  out = [suites.dense(design.d_model, heads(design.d_model), name='dense'),
         suites.dense(design.wide, heads(design.wide))]
  top = max(design.experts)
  out += [suites.standard_moe(e, design.num_layers, role='moe' if e == top else 'sweep') for e in design.experts]
  return tuple(out)


def make_suite(name: str, design: Design, seeds: int = 3, budget: str = '') -> Suite:
  """The calibration Suite of `design` (grad_stats: one record, the gradient-flow analysis is not its point)."""
  return Suite(name, f'Calibration: d_model {design.d_model} vs {design.wide}, MoE E = '
               f'{"/".join(map(str, design.experts))} top-1 on every block, vocab {design.vocab}, '
               f'{design.tokens / 1e6:.1f}M tokens per run.', make_base(design), specs(design), seeds=seeds,
               steps=design.steps, evals=design.evals, grad_stats=1, needs_corpus=True, budget=budget)


DESIGN = Design(batch=32, steps=800, evals=5)
CALIBRATION = make_suite('calibration', DESIGN, seeds=3, budget='about 80 minutes on 2 CPU cores')
suites.REGISTRY[CALIBRATION.name] = CALIBRATION   # suites.py imports this module at its end: either order works
