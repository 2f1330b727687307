"""Initialising a fresh run's parameters from another run's checkpoint (config.init, docs/methods/upcycling.md).

Modes (init.mode), applied only when the run has no checkpoint of its own (a resumed run never re-initialises):

  'same'           every parameter copied from the same path of the source; shapes must match and the two
                   parameter trees must have the same paths.
  'bottom_layers'  a student of reduced depth L' <= L (Mixture-of-Students, docs/methods/distillation.md: 24 -> 21 layers;
                   DeepSpeed's layer reduction keeps the bottom layers): block i <- source block i for i < L';
                   embeddings, positions and final norm copied; routers of the kept MoE blocks copied (same path).
                   The kept MoE blocks must be exactly the source's MoE blocks among 0..L'-1, so the student's MoE
                   layer l is the source's MoE layer l. Learned mixing: the pool is copied whole (same P) and the
                   mixing logits' rows 0..L'_moe-1. Fixed mixing: student pool entry j <- the source entry that the
                   student's MoE layers on entry j used in the source (it must be one entry).
  'upcycle'        sparse upcycling (Komatsuzaki et al. 2022) of a dense checkpoint: every expert of MoE block b =
                   the source's dense MLP of block b (+ init.noise_std Gaussian noise, drawn per expert); a pool
                   entry j used by several MoE blocks (SaMoE, pool.assignment) = the average of their dense MLPs;
                   an entry no block is assigned to = the average over all MoE blocks. Routers and mixing logits
                   keep their fresh initialisation (learned mixing needs pool.init='one_hot', so layer l starts near
                   its own entry: weight softmax(s e_j)_j = e^s / (e^s + P - 1) with s = pool.one_hot_scale).
                   Attention, norms, embeddings and the remaining dense FFNs are copied.

Parameters are classified by their logical axes ('pool' = expert pool, 'mixing' = mixing logits, 'router' =
routers), never by name patterns. Every error names the parameter path and the shapes involved. The source's
parameters are restored onto the run's mesh (evaluation/checkpoints.restore_params), assembled on the host, and
placed with the run's shardings; the optimizer state stays freshly initialised (Adam moments are zero).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from samoe_jax.config.checks import Problems, is_int, register
from samoe_jax.config.sections import complete_config
from samoe_jax.evaluation.checkpoints import available_steps, restore_params
from samoe_jax.layers.mixing import is_learned
from samoe_jax.models.model import LanguageModel

MODES = ('same', 'bottom_layers', 'upcycle')
Flat = dict[tuple[str, ...], Any]


@register('init')
def check_init(c: ml_collections.ConfigDict, problems: Problems) -> None:
  """config.init (a registered check, config/checks.py); an absent section or an empty init.from_workdir is off."""
  if 'init' not in c or not c.init.from_workdir:
    return
  i, num_moe = c.init, problems.num_moe
  problems.one_of('init.mode', i.mode, MODES)
  problems.non_negative('init.noise_std', i.noise_std)
  if not is_int(i.step) or i.step < 0:
    problems.add('init.step', i.step, 'must be an integer >= 0 (0 = latest checkpoint)')
  if i.mode == 'upcycle' and not num_moe:
    problems.add('init.mode', i.mode, "'upcycle' needs MoE layers in this model (model.layer_plan is dense)")
  if i.mode == 'upcycle' and num_moe and is_learned(c.pool.mixing) and c.pool.init != 'one_hot':
    problems.add('pool.init', c.pool.init, "init.mode='upcycle' with learned mixing needs 'one_hot' (each layer "
                 'starts near its own upcycled pool entry)')


def enabled(config: ml_collections.ConfigDict) -> bool:
  return 'init' in config and bool(config.init.from_workdir)


def source_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """FROM_WORKDIR/config.json, checked: the directory, its config and the wanted checkpoint exist."""
  workdir, step = config.init.from_workdir, config.init.step
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise ValueError(f'init.from_workdir={workdir!r}: {path} does not exist (train the source run first)')
  steps = available_steps(workdir)
  if not steps:
    raise ValueError(f'init.from_workdir={workdir!r} holds no checkpoint')
  if step and step not in steps:
    raise ValueError(f'init.step={step}: no such checkpoint in {workdir}; available: {steps}')
  with open(path) as f:
    src = complete_config(json.load(f))
  if src.model.vocab_size != config.model.vocab_size or src.data.vocabulary != config.data.vocabulary:
    raise ValueError(f'init.from_workdir={workdir!r}: the source vocabulary (model.vocab_size={src.model.vocab_size}, '
                     f'data.vocabulary={src.data.vocabulary!r}) differs from this run\'s '
                     f'({config.model.vocab_size}, {config.data.vocabulary!r})')
  return src


def _name(path: tuple[str, ...]) -> str:
  return '/'.join(path)


def _check_shape(path: tuple[str, ...], src: Flat, want_shape: tuple[int, ...], mode: str) -> None:
  """The source has `path` with `want_shape` (arrays, or ShapeDtypeStructs in check_source)."""
  if path not in src:
    raise ValueError(f'init.mode={mode!r}: the source checkpoint has no parameter {_name(path)} (shape '
                     f'{want_shape} in this model)')
  if np.shape(src[path]) != tuple(want_shape):
    raise ValueError(f'init.mode={mode!r}: parameter {_name(path)} has shape {np.shape(src[path])} in the source '
                     f'but {tuple(want_shape)} in this model')


def _copy(path: tuple[str, ...], src: Flat, want_shape: tuple[int, ...], mode: str) -> np.ndarray:
  _check_shape(path, src, want_shape, mode)
  return np.asarray(src[path])


def _check_same(fresh: Flat, src: Flat) -> None:
  """init.mode='same': the source has exactly this model's parameter paths, each of the same shape."""
  extra = sorted(set(src) - set(fresh))
  if extra:
    raise ValueError(f"init.mode='same': the source has parameters this model lacks: "
                     f'{", ".join(map(_name, extra[:5]))}')
  for path, leaf in fresh.items():
    _check_shape(path, src, tuple(leaf.shape), 'same')


def _axes(model: Any) -> Flat:
  """{path: logical axis names} of the model's parameters (PartitionSpecs are leaves of the nested dict)."""
  return {path: tuple(names) for path, names in traverse_util.flatten_dict(model.param_logical_axes()).items()}


def _upcycled_pool(name: str, shape: tuple[int, ...], spec: Any, src: Flat, noise_std: float,
                   rng: np.random.Generator) -> np.ndarray:
  """Pool leaf [P, E, ...] from the dense MLPs: entry j = mean of the MLPs of the MoE blocks assigned to j."""
  p, e = shape[:2]
  mlps = {}
  for block in spec.moe_layers:
    path = (f'block_{block}', 'ffn', name)
    if path not in src:
      raise ValueError(f"init.mode='upcycle': MoE block {block} needs a dense MLP in the source, but it has no "
                       f'parameter {_name(path)} (upcycle a dense checkpoint)')
    mlps[block] = np.asarray(src[path])
    if mlps[block].shape != tuple(shape[2:]):
      raise ValueError(f"init.mode='upcycle': source parameter {_name(path)} has shape {mlps[block].shape}, but "
                       f'expert_pool/{name} needs {tuple(shape[2:])} per expert (moe.expert_d_ff must equal the '
                       "source's model.d_ff)")
  out = np.empty(shape, np.float32)
  for j in range(p):
    blocks = [b for b, entry in zip(spec.moe_layers, spec.pool_entry) if entry == j] or list(spec.moe_layers)
    out[j] = np.mean([mlps[b] for b in blocks], axis=0)[None]
  if noise_std:
    out = out + rng.normal(0.0, noise_std, size=shape).astype(np.float32)
  return out


def _bottom_pool(path: tuple[str, ...], shape: tuple[int, ...], spec: Any, src_spec: Any, src: Flat) -> np.ndarray:
  value = np.asarray(src[path]) if path in src else None
  if value is None:
    raise ValueError(f"init.mode='bottom_layers': the source has no parameter {_name(path)}")
  if spec.mixing.learned:
    return _copy(path, src, shape, 'bottom_layers')
  out = np.empty(shape, np.float32)
  for j in range(shape[0]):
    sources = {src_spec.pool_entry[l] for l, entry in enumerate(spec.pool_entry) if entry == j}
    if len(sources) != 1:
      raise ValueError(f"init.mode='bottom_layers': pool entry {j} of this model is used by MoE layers that used "
                       f'source entries {sorted(sources)}; expected exactly one')
    if value.shape[1:] != tuple(shape[1:]):
      raise ValueError(f"init.mode='bottom_layers': parameter {_name(path)} has shape {value.shape} in the source "
                       f'but {tuple(shape)} in this model')
    out[j] = value[sources.pop()]
  return out


def build_params(mode: str, model: Any, src_model: Any, fresh: Any, src_params: Any, noise_std: float = 0.0,
                 seed: int = 0) -> Any:
  """The initial parameters of `model` (host numpy tree) from `src_params` of `src_model`; `fresh` supplies the
  routers and mixing logits that 'upcycle' initialises anew (only the leaves it keeps are read: arrays or, for a
  check without data, ShapeDtypeStructs)."""
  if mode not in MODES:
    raise ValueError(f'init.mode={mode!r}: must be one of {", ".join(map(repr, MODES))}')
  spec, src_spec = model.spec, src_model.spec
  fresh_flat = traverse_util.flatten_dict(fresh)
  src = traverse_util.flatten_dict(jax.device_get(src_params))
  axes = _axes(model)
  rng = np.random.default_rng(seed)
  if mode == 'bottom_layers':
    if spec.model.num_layers > src_spec.model.num_layers:
      raise ValueError(f"init.mode='bottom_layers': model.num_layers={spec.model.num_layers} exceeds the source's "
                       f'{src_spec.model.num_layers}')
    kept = tuple(b for b in src_spec.moe_layers if b < spec.model.num_layers)
    if kept != spec.moe_layers:
      raise ValueError(f"init.mode='bottom_layers': this model's MoE blocks {list(spec.moe_layers)} must be the "
                       f"source's MoE blocks below {spec.model.num_layers}: {list(kept)} (model.layer_plan)")
    if spec.moe_layers and spec.mixing.name != src_spec.mixing.name:
      raise ValueError(f"init.mode='bottom_layers': pool.mixing={spec.pool.mixing!r} but the source's is "
                       f'{src_spec.pool.mixing!r}')
  if mode == 'same':
    _check_same(fresh_flat, src)
  out = {}
  for path, leaf in fresh_flat.items():
    shape, names = tuple(leaf.shape), axes[path]
    if mode == 'upcycle' and 'pool' in names:
      out[path] = _upcycled_pool(path[-1], shape, spec, src, noise_std, rng)
    elif mode == 'upcycle' and ('router' in names or 'mixing' in names):
      out[path] = (np.zeros(shape) if isinstance(leaf, jax.ShapeDtypeStruct) else np.asarray(jax.device_get(leaf)))
    elif mode == 'bottom_layers' and 'pool' in names:
      out[path] = _bottom_pool(path, shape, spec, src_spec, src)
    elif mode == 'bottom_layers' and 'mixing' in names:
      if path not in src or np.shape(src[path])[1:] != shape[1:]:
        raise ValueError(f"init.mode='bottom_layers': mixing logits {_name(path)} of shape {shape} need the "
                         f'source\'s with the same pool size, got {np.shape(src.get(path))}')
      out[path] = np.asarray(src[path])[:shape[0]]
    else:
      out[path] = _copy(path, src, shape, mode)
    out[path] = out[path].astype(leaf.dtype)
  return traverse_util.unflatten_dict(out)


def _source_model(config: ml_collections.ConfigDict) -> Any:
  """The LanguageModel of init.from_workdir's config (at this run's data.seq_len)."""
  src_config = ml_collections.ConfigDict(source_config(config).to_dict())
  src_config.data.seq_len = config.data.seq_len
  return LanguageModel(src_config)


def check_source(config: ml_collections.ConfigDict) -> None:
  """The checks a fresh run makes before it writes anything: source_config, and for init.mode='same' the two
  models' parameter paths and shapes (abstract: no checkpoint is read, nothing is allocated)."""
  source_config(config)
  if config.init.mode == 'same':
    fresh = traverse_util.flatten_dict(LanguageModel(config).abstract_params())
    _check_same(fresh, traverse_util.flatten_dict(_source_model(config).abstract_params()))


def load_source(config: ml_collections.ConfigDict, partitioner: Any) -> tuple[Any, Any, int]:
  """(source model, its params on the mesh, step) of init.from_workdir."""
  src_model = _source_model(config)
  step = config.init.step or available_steps(config.init.from_workdir)[-1]
  return src_model, restore_params(src_model, partitioner, config.init.from_workdir, step), step


def place(tree: Any, shardings: Any) -> Any:
  """Host arrays -> global arrays with `shardings` (every process holds the whole host tree)."""
  return jax.tree.map(lambda a, s: jax.make_array_from_callback(a.shape, s, lambda idx: a[idx]), tree, shardings)


def initial_params(config: ml_collections.ConfigDict, model: Any, partitioner: Any, fresh: Any,
                   shardings: Any) -> Any:
  """The run's initial params from init.from_workdir (placed with `shardings`)."""
  src_model, src_params, _ = load_source(config, partitioner)
  host = build_params(config.init.mode, model, src_model, fresh, src_params, float(config.init.noise_std),
                      int(config.train.seed))
  return place(host, shardings)


def describe(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The init settings for samoe_jax.describe (None when off)."""
  if not enabled(config):
    return None
  i = config.init
  return {'from_workdir': i.from_workdir, 'step': i.step or 'latest', 'mode': i.mode, 'noise_std': i.noise_std}
