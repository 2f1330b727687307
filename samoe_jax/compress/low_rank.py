"""MC-SMoE's compression stage: a trained run's experts rewritten as low-rank plus sparse, W = U V + S.

MC-SMoE (Li et al., ICLR 2024) follows LoSparse (Li et al., ICML 2023): U V is the rank-R truncated SVD of the
trained matrix W (U = U_R sqrt(s_R), V = sqrt(s_R) V_R^T) and S = W - U V starts dense, so the compressed model
computes exactly the function of the source model; S is then pruned during (distillation) fine-tuning
(training/sparse_pruning.py). At R = min(M, N), S is zero up to rounding and U V alone is W.

Every expert matrix of every pool is factorised (a standard MoE's, a merged run's or a SaMoE pool's entries, the
mixing then combining low-rank + sparse entries); non-expert parameters are copied unchanged. The result is a
real run (config.json with low_rank_sparse.rank / sparsity, a checkpoint at step 0), like the other compressed
runs (compress/runs.py).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np

from samoe_jax.compress.runs import write_run
from samoe_jax.compress.sweep import run_config
from samoe_jax.config.defaults import get_base_config
from samoe_jax.config.layer_plan import moe_layer_indices
from samoe_jax.evaluation.checkpoints import available_steps, restore_params
from samoe_jax.layers.low_rank_experts import MATRICES, SPARSE_SUFFIX
from samoe_jax.models.model import LanguageModel
from samoe_jax.sharding.mesh import make_mesh
from samoe_jax.sharding.partitioner import Partitioner
from samoe_jax.training.sparse_pruning import config_problems


def factorize(w_MN: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(U [.., M, R], V [.., R, N], S [.., M, N]) with U V the rank-R truncated SVD of w and S = w - U V (float32;
  the SVD in float64). Entries of S below float32's resolution of the matrix (eps * max |w|) are rounding noise
  and stored as zeros, so at full rank S is zero. Any leading axes are batched."""
  w = np.asarray(w_MN, np.float64)
  u, s, vt = np.linalg.svd(w, full_matrices=False)
  root = np.sqrt(s[..., :rank])
  left = u[..., :, :rank] * root[..., None, :]
  right = root[..., :, None] * vt[..., :rank, :]
  sparse = w - left @ right
  noise = np.finfo(np.float32).eps * np.abs(w).max(axis=(-2, -1), keepdims=True)
  sparse = np.where(np.abs(sparse) <= noise, 0.0, sparse)
  return left.astype(np.float32), right.astype(np.float32), sparse.astype(np.float32)


def check_low_rank(config: ml_collections.ConfigDict, workdir: str, rank: int, sparsity: float,
                   finetune_steps: int | None = None) -> None:
  """A clear error before any work: a dense or already low-rank run, a bad rank or sparsity, or (finetune_steps
  given) a sparsity > 0 without fine-tuning steps to prune in."""
  if not moe_layer_indices(config.model):
    raise ValueError(f'{workdir!r} is a dense model (model.layer_plan={config.model.layer_plan!r}): it has no '
                     'experts to compress')
  if config.low_rank_sparse.rank:
    raise ValueError(f'{workdir!r} already stores low-rank experts (low_rank_sparse.rank='
                     f'{config.low_rank_sparse.rank}): compress its source run instead')
  if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
    raise ValueError(f'--rank={rank!r}: give the rank of U V, an integer >= 1 (at most min(d_model, expert width))')
  target = low_rank_config(config, rank, sparsity)
  expert_ff = config.moe.expert_d_ff or config.model.d_ff
  problems = config_problems(target, len(moe_layer_indices(config.model)), config.model.d_model, expert_ff)
  if problems:
    raise ValueError('low-rank compression: ' + '; '.join(p.replace('low_rank_sparse.rank', '--rank').replace(
        'low_rank_sparse.sparsity', '--sparsity') for p in problems))
  if finetune_steps is not None and sparsity > 0 and finetune_steps <= 0:
    raise ValueError(f'--sparsity={sparsity} needs --finetune_steps > 0: the sparse residual is pruned '
                     'progressively during fine-tuning (use --sparsity=0 for the low-rank + dense residual only)')


def low_rank_config(config: ml_collections.ConfigDict, rank: int, sparsity: float) -> ml_collections.ConfigDict:
  """The source config with low-rank experts of rank `rank`, S pruned to `sparsity` during fine-tuning."""
  out = ml_collections.ConfigDict(config.to_dict())
  if 'low_rank_sparse' not in out:
    out.low_rank_sparse = get_base_config().low_rank_sparse
  out.low_rank_sparse.rank, out.low_rank_sparse.sparsity = rank, sparsity
  out.init.from_workdir, out.distill.teacher_workdir = '', ''
  return out


def low_rank_params(params: Any, pool_names: list[str], rank: int) -> Any:
  """`params` with every pool's w_in / w_out ([P, E, M, N]) replaced by their U, V and S (module doc)."""
  out = dict(params)
  for name in pool_names:
    pool = dict(params[name])
    for matrix in MATRICES:
      left, right, sparse = factorize(np.asarray(pool.pop(matrix)), rank)
      pool.update({matrix + '_left': left, matrix + '_right': right, matrix + SPARSE_SUFFIX: sparse})
    out[name] = pool
  return out


def write_low_rank_run(source_dir: str, out: str, rank: int, sparsity: float, step: int = 0) -> str:
  """Writes the low-rank + sparse version of run `source_dir` (checkpoint `step`, 0 = latest) into `out`
  (compress/runs.write_run: a new directory; a written one from the same source is reused). Returns `out`."""
  import json  # pylint: disable=g-import-not-at-top
  config = run_config(source_dir)
  check_low_rank(config, source_dir, rank, sparsity)
  steps = available_steps(source_dir)
  if not steps:
    raise ValueError(f'{source_dir!r} holds no checkpoint: train it first')
  step = step or max(steps)
  record_path = os.path.join(out, 'compression.json')
  if os.path.isfile(record_path):
    with open(record_path) as f:
      old = json.load(f)
    if (old.get('source_workdir'), old.get('source_step'), old.get('rank'), old.get('sparsity')) != (
        os.path.abspath(source_dir), step, rank, sparsity):
      raise ValueError(f'{out} holds a different compressed run ({old.get("summary")}): choose a new --out')
    return out
  model = LanguageModel(config)
  params = jax.device_get(restore_params(model, Partitioner(make_mesh(config.mesh)), source_dir, step))
  target = low_rank_config(config, rank, sparsity)
  new_params = low_rank_params(params, [g.pool_name for g in model.spec.groups], rank)
  summary = f'experts as rank-{rank} U V + S, S pruned to sparsity {sparsity} during fine-tuning'
  write_run(out, target, new_params, {'method': 'low_rank_sparse', 'rank': rank, 'sparsity': sparsity,
                                      'source_workdir': os.path.abspath(source_dir), 'source_step': step,
                                      'summary': summary})
  return out
