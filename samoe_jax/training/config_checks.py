"""validate_config: early, clear errors for a config, before anything is built.

The one pass over a config's settings. It sits on the lowest floor above every module that registers checks
(config/checks.py: one signature `check(config, problems)`; the highest of them are the trainer's), imports each of
them explicitly, so no method's rules can be missing, and runs them all; the trainer's preflight, the analyses, the
experiment suites and the entry points call it. Every problem is collected and one ValueError lists them all, one
per line, each naming the key, the bad value and what is allowed. A dense model (no MoE layers after resolving
model.layer_plan) ignores the moe and pool sections. Checks that need the device count (what mesh -1 resolves to)
are the trainer's (training/loop.py check_mesh_fits, calling config/mesh_checks.py again); here only the sizes
given explicitly are checked. Runtime checks on data (files, checkpoints, a teacher run) stay with the code that
reads it.
"""

from __future__ import annotations

import ml_collections

from samoe_jax.config import checks, mesh_checks, section_checks
from samoe_jax.data import text_files
from samoe_jax.evaluation import task_finetune, task_specs
from samoe_jax.layers import (attention_kernel, dispatch, graph_routing, k_schedule, mixing, momentum, ragged,
                              residual_moe, routing_checks)
from samoe_jax.models import remat
from samoe_jax.training import distill, init_from, optimizer, sparse_pruning

# Every module that registers checks (config/checks.register): importing them is what registers their rules.
CHECK_MODULES = (section_checks, mesh_checks, text_files, task_finetune, task_specs, attention_kernel, dispatch,
                 graph_routing, k_schedule, mixing, momentum, ragged, residual_moe, routing_checks, remat, distill,
                 init_from, optimizer, sparse_pruning)


def config_errors(config: ml_collections.ConfigDict) -> list[str]:
  """All problems found in config, one line each (empty when valid)."""
  return checks.run_checks(config)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises one ValueError listing every problem in config (one per line); returns None when valid."""
  problems = checks.Problems()
  for line in config_errors(config):
    problems.line(line)
  problems.raise_if_any()
