"""The mixing probe (issue 25, part 1): does SaMoE's learned mixing move, and what moves it?

  python -m samoe_jax.experiments.reproduce --suite=mixing --out=DIR

A learned pool of P = 2 entries shared by 4 MoE blocks (E = 4 top-1, d_model 64, byte-level, the shipped
Shakespeare corpus: nothing to download), 600 steps of 16 x 128 tokens at learning rate 3e-3, so the logits'
reach sum_t lr_t is about 1 (docs/model.md, "Mixing that learns"). It varies the knobs of layers/mixing.py one at
a time: the logits' learning-rate multiplier (1, 10, 100) from the uniform init, then the one-hot and random
inits at 10x; the standard MoE (P = L_moe, fixed) and tied experts (P = 1, fixed) are the references. The suite
report's "Did the mixing move?" table and mixing_trajectories.png answer the first question; the perplexity table
says what it cost or bought.
"""

from __future__ import annotations

import ml_collections

from samoe_jax.config.defaults import get_base_config
from samoe_jax.experiments import suites
from samoe_jax.experiments.suites import ConfigSpec, Suite

NUM_LAYERS = 4
POOL = 2


def probe_base(corpus_dir: str = '', cache_dir: str = '') -> ml_collections.ConfigDict:
  """4 blocks, d_model 64, 2 heads, FFN 256, E = 4 top-1 on every block, bytes, Shakespeare, seq 128 x 16."""
  del corpus_dir, cache_dir
  c = get_base_config()
  c.model.vocab_size, c.model.d_model, c.model.num_layers, c.model.num_heads = 264, 64, NUM_LAYERS, 2
  c.model.d_ff, c.model.max_len = 256, 128
  c.moe.num_experts = 4
  c.moe.group_size = 1024          # uniform routing drops < 1 % (samoe_jax/analysis/drop_floor.py)
  c.pool.size, c.pool.mixing = POOL, 'learned'
  c.data.task, c.data.vocabulary, c.data.seq_len, c.data.batch_size = 'shakespeare', 'byte', 128, 16
  c.data.shuffle_buffer = 1000
  c.train.learning_rate = 3e-3
  c.train.eval_batches = 16
  suites._common(c)   # pylint: disable=protected-access
  return c


def _samoe(name: str, label: str, **pool) -> ConfigSpec:
  return ConfigSpec(name, label, 'samoe', {'pool.size': POOL, 'pool.mixing': 'learned',
                                           **{f'pool.{k}': v for k, v in pool.items()}})


CONFIGS = (
    suites.standard_moe(4, NUM_LAYERS, role='moe'),
    ConfigSpec('tied', 'tied experts (P=1, fixed)', 'baseline', {'pool.size': 1, 'pool.mixing': 'fixed'}),
    _samoe('samoe_lr1', 'SaMoE P=2, uniform init, logits lr x1', lr_multiplier=1.0),
    _samoe('samoe_lr10', 'SaMoE P=2, uniform init, logits lr x10', lr_multiplier=10.0),
    _samoe('samoe_lr100', 'SaMoE P=2, uniform init, logits lr x100', lr_multiplier=100.0),
    _samoe('samoe_onehot_lr10', 'SaMoE P=2, one-hot init, logits lr x10', init='one_hot', lr_multiplier=10.0),
    _samoe('samoe_random_lr10', 'SaMoE P=2, random init, logits lr x10', init='random', lr_multiplier=10.0),
)
MIXING_PROBE = Suite('mixing', 'The mixing probe: what lets SaMoE\'s learned mixing move (P = 2 over 4 MoE blocks, '
                     'E = 4 top-1, d_model 64, bytes of Shakespeare, 1.2M tokens per run).', probe_base, CONFIGS,
                     seeds=2, steps=600, evals=4, grad_stats=1, needs_corpus=False,
                     budget='about 20 minutes on 2 CPU cores')
