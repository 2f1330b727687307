"""A trained run's MoE layers as numpy (source side) and a compressed model written as a real run (output side).

Source: the run's config.json and a checkpoint's parameters; every MoE layer's *effective* experts
(`LanguageModel.materialize`): a standard MoE's own experts, a SaMoE layer's experts mixed from the pool. So a SaMoE
run is compressed through its materialized per-layer experts, and the compressed run is a standard MoE (fixed
mixing, one pool entry per MoE layer) with fewer experts per layer (docs/compression.md says why).

Output: a workdir with config.json, param_summary.json, compression.json and one checkpoint at step 0 holding the
compressed parameters and a fresh optimizer state, so `describe`, `evaluate`, `train`, `finetune` and
`LanguageModel.materialize` work on it as on any run. Per MoE layer it stores E'_l experts
(moe.experts_per_layer) and either keeps the E-output router with moe.expert_map ('map') or stores an E'_l-output
router ('sum').
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from samoe_jax.checkpointing.store import Checkpointer
from samoe_jax.compress.experts import LayerExpertsNP
from samoe_jax.compress.merge import summed_router
from samoe_jax.config import expert_map as expert_map_lib
from samoe_jax.config import pyramid
from samoe_jax.config.defaults import get_base_config
from samoe_jax.config.layer_plan import moe_layer_indices
from samoe_jax.evaluation.checkpoints import available_steps, restore_params, run_config
from samoe_jax.layers.mixing import mixing_for
from samoe_jax.models.model import LanguageModel
from samoe_jax.sharding.mesh import make_mesh
from samoe_jax.sharding.partitioner import Partitioner
from samoe_jax.training import loop, state as state_lib
from samoe_jax.training.init_from import place

Flat = dict[tuple[str, ...], Any]


@dataclasses.dataclass
class SourceRun:
  """A trained run loaded for compression."""
  workdir: str
  step: int
  config: ml_collections.ConfigDict
  model: Any
  params: Any                          # host numpy tree
  layers: list[LayerExpertsNP]         # every MoE layer's effective experts, MoE-layer order
  routers: list[tuple[np.ndarray, np.ndarray | None]]   # (kernel [D, E], bias [E] or None) per MoE layer

  @property
  def moe_blocks(self) -> tuple[int, ...]:
    return self.model.spec.moe_layers


def check_compressible(config: ml_collections.ConfigDict, workdir: str) -> None:
  """A clear error for runs this tool cannot compress (before any work)."""
  if not moe_layer_indices(config.model):
    raise ValueError(f'--workdir={workdir!r} is a dense model (model.layer_plan={config.model.layer_plan!r}): it '
                     'has no experts to prune or merge')
  moe, pool = config.moe, config.pool
  if moe.routing == 'hash':
    raise ValueError(f"--workdir={workdir!r} uses moe.routing='hash': it has no router whose logits could group "
                     'experts')
  if mixing_for(pool).mixes_outputs:
    raise ValueError(f"--workdir={workdir!r} mixes the pool in output space (pool.space={pool.space!r}): its layers "
                     "have no effective experts to compress; only pool.space='weight' runs can be compressed")
  if moe.expert_map:
    raise ValueError(f'--workdir={workdir!r} is already compressed (moe.expert_map is set): compress the original '
                     'run instead')


def run_config_checked(workdir: str, step: int = 0) -> ml_collections.ConfigDict:
  """The run's config (config.json over the defaults), checked compressible, with checkpoint `step` on disk."""
  config = get_base_config()
  config.update(run_config(workdir))
  check_compressible(config, workdir)
  steps = available_steps(workdir)
  if not steps:
    raise ValueError(f'--workdir={workdir!r} holds no checkpoint: train it first')
  if step and step not in steps:
    raise ValueError(f'--step={step}: no such checkpoint in {workdir}; available: {steps}')
  return config


def load_source(workdir: str, step: int = 0) -> SourceRun:
  """The run's config, checkpoint `step` (0 = latest) and per-layer experts and routers (numpy)."""
  config = run_config_checked(workdir, step)
  step = step or max(available_steps(workdir))
  model = LanguageModel(config)
  params = restore_params(model, Partitioner(make_mesh(config.mesh)), workdir, step)
  return source_from_params(config, jax.device_get(params), workdir, step, model)


def source_from_params(config: ml_collections.ConfigDict, params: Any, workdir: str = '', step: int = 0,
                       model: Any = None) -> SourceRun:
  """A SourceRun of parameters in memory (host arrays) of the model `config` describes."""
  check_compressible(config, workdir)
  model = model or LanguageModel(config)
  layers = [LayerExpertsNP.from_weights(w) for w in model.materialize(params)]
  return SourceRun(workdir, step, config, model, params, layers, routers_of(params, model.spec))


def routers_of(params: Any, spec: Any) -> list[tuple[np.ndarray, np.ndarray | None]]:
  """(kernel [D, E], bias or None) of every MoE layer; WideNet's shared router for each layer when shared."""
  out = []
  for block in spec.moe_layers:
    if spec.pool.share_router:
      out.append((np.asarray(params['shared_router']['kernel'], np.float32), None))
      continue
    router = params[f'block_{block}']['moe']['router']
    bias = router.get('bias')
    out.append((np.asarray(router['kernel'], np.float32), None if bias is None else np.asarray(bias, np.float32)))
  return out


@dataclasses.dataclass
class CompressedLayers:
  """The result of a compression method: per MoE layer the stored experts, the router option and the groups."""
  experts: list[LayerExpertsNP]        # E'_l experts per MoE layer
  labels: list[np.ndarray]             # [E] router output -> stored expert, per MoE layer
  router: str                          # 'map' | 'sum' (compress/merge.py)


def compressed_config(source: SourceRun, layers: CompressedLayers) -> ml_collections.ConfigDict:
  """The compressed run's config: the source's, as a standard MoE with E'_l experts per layer."""
  config = ml_collections.ConfigDict(source.config.to_dict())
  counts = tuple(e.num_experts for e in layers.experts)
  moe, pool = config.moe, config.pool
  num_moe = len(counts)
  if layers.router == 'sum':
    small = [c for c in counts if c < moe.top_k]
    if small:
      raise ValueError(f"router='sum' leaves {min(small)} expert(s) in a layer, fewer than moe.top_k={moe.top_k}: "
                       "use router='map' or fewer groups removed")
    if pool.share_router and len(set(counts)) > 1:
      raise ValueError("router='sum' with pool.share_router needs the same group count in every layer; use "
                       "router='map'")
    moe.expert_map = ''
    moe.num_experts = counts[0]
  else:
    moe.expert_map = expert_map_lib.format_expert_map([list(map(int, l)) for l in layers.labels])
  moe.experts_per_layer = pyramid.format_counts(counts)
  if moe.eval_top_k and moe.eval_top_k > min(counts) and layers.router == 'sum':
    moe.eval_top_k = 0
  pool.size, pool.mixing, pool.assignment, pool.init = num_moe, 'fixed', 'modulo', 'uniform'
  pool.granularity, pool.entropy_coef = 'layer', 0.0
  if config.mesh.expert > 1 and any(c % config.mesh.expert for c in counts):
    config.mesh.expert = 1   # a group count the expert axis does not divide: experts replicated instead
  config.init.from_workdir = ''
  config.distill.teacher_workdir = ''
  return config


def compressed_params(source: SourceRun, layers: CompressedLayers, model: Any) -> Any:
  """The compressed model's parameters: every non-expert array copied from the source (same path and shape),
  the pools filled from `layers`, the routers kept ('map') or summed ('sum')."""
  fresh = traverse_util.flatten_dict(jax.device_get(model.init_params(jax.random.key(0))))
  src = traverse_util.flatten_dict(source.params)
  out: Flat = {}
  spec = model.spec
  pools: dict[str, dict[str, list]] = {}
  for group in spec.groups:
    pools[group.pool_name] = {k: [None] * group.pool_size for k in ('w_in', 'b_in', 'w_out', 'b_out')}
    for layer, entry in zip(group.layers, group.entries):
      for k, v in layers.experts[layer].arrays().items():
        pools[group.pool_name][k][entry] = v
  routers = {}
  for i, block in enumerate(spec.moe_layers):
    kernel, bias = source.routers[i]
    if layers.router == 'sum':
      kernel, bias = summed_router(kernel, bias, layers.labels[i])
    routers[block] = (kernel, bias)
  for path, value in fresh.items():
    if path[0] in pools:
      out[path] = np.stack(pools[path[0]][path[1]])
    elif len(path) >= 4 and path[1:3] == ('moe', 'router') and layers.router == 'sum' and not spec.pool.share_router:
      block = int(path[0].split('_')[1])
      out[path] = routers[block][0] if path[3] == 'kernel' else routers[block][1]
    elif path[0] == 'shared_router' and layers.router == 'sum':
      out[path] = routers[spec.moe_layers[0]][0]
    elif path in src and np.shape(src[path]) == np.shape(value):
      out[path] = np.asarray(src[path])
    else:
      raise ValueError(f'compressed model parameter {"/".join(path)} {np.shape(value)} has no source array of that '
                       f'shape in {source.workdir} (source shape {np.shape(src.get(path))})')
    if np.shape(out[path]) != np.shape(value):
      raise ValueError(f'compressed parameter {"/".join(path)}: built {np.shape(out[path])}, the model needs '
                       f'{np.shape(value)}')
  return traverse_util.unflatten_dict(out)


def write_run(out: str, config: ml_collections.ConfigDict, params: Any, record: dict[str, Any]) -> dict[str, int]:
  """Writes the compressed run into `out` (which must not hold a checkpoint): config.json, param_summary.json,
  compression.json and a checkpoint at step 0. Returns the parameter summary."""
  if Checkpointer.steps_on_disk(out):
    raise ValueError(f'{out} already holds a checkpoint: nothing is overwritten; choose a new --out')
  run = loop.build_run(config, out)
  init = jax.jit(lambda rng: state_lib.init_state(run.model, run.optimizer, rng), out_shardings=run.shardings)
  with run.partitioner.activate():
    state = init(jax.random.key(0))
  state = state.replace(params=place(params, run.shardings.params))
  summary = loop.write_run_files(run)
  d = config.data
  data_state = {'epoch': 0, 'batch_in_epoch': 0, 'batches_served': 0, 'task': d.task, 'seq_len': d.seq_len,
                'batch_size': d.batch_size, 'shuffle_seed': d.shuffle_seed}
  run.checkpointer.save(0, state, data_state, run.meta)
  run.checkpointer.wait()
  run.checkpointer.close()
  with open(os.path.join(out, 'compression.json'), 'w') as f:
    json.dump(dict(record, param_summary=summary), f, indent=2)
  return summary
