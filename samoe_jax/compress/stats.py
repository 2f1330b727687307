"""Routing statistics of a trained run: one pass without gradients over task or validation data (MC-SMoE step 2).

Per MoE layer, over the real tokens T of the pass (decoder inputs that are not padding):
  router_logits  H [T, E]: the router's logits x W_r (+ b) of the layer's input x (its ffn_norm output)
  counts [E]     how many of the T x top_k (token, choice) pairs chose expert e (the top_k largest logits: the
                 routing of moe.gate 'softmax' / 'topk_softmax'; capacity and graph routing are not applied)
  frequency [E]  counts / (T x top_k): the usage frequency f_e
  output_norm [E] mean over the tokens choosing e of ||FFN_e(x)||_2 (NaN for an expert no token chose)
Data: `--task`: a seeded sample of the task's training documents, each written as the evaluator's prompt plus the
gold continuation (evaluation/task_finetune.py); `--split`: the run's own validation batches (data.eval_split).
Saved as stats.json (counts, frequencies, norms), stats.npz (also the logits) and usage.png (heatmap per layer).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from samoe_jax.compress.experts import LayerExpertsNP, gelu
from samoe_jax.data import pipeline
from samoe_jax.evaluation import task_finetune
from samoe_jax.layers.mlp import LayerNorm
from samoe_jax.models.model import LanguageModel
from samoe_jax.models.model import token_mask


@dataclasses.dataclass
class LayerStats:
  """Routing statistics of one MoE layer (module doc)."""
  block: int
  logits_TE: np.ndarray
  counts_E: np.ndarray
  output_norm_E: np.ndarray

  @property
  def tokens(self) -> int:
    return int(self.logits_TE.shape[0])

  @property
  def frequency_E(self) -> np.ndarray:
    return self.counts_E / max(int(self.counts_E.sum()), 1)


def _is_ffn_norm(module: nn.Module, method_name: str) -> bool:
  return isinstance(module, LayerNorm) and module.name == 'ffn_norm' and method_name == '__call__'


def moe_inputs(model: Any, params: Any, tokens_BL: np.ndarray) -> dict[int, np.ndarray]:
  """Every MoE block's FFN input x_BLD (the ffn_norm output) for decoder inputs tokens_BL (evaluation pass)."""
  blocks = model.spec.moe_layers

  @jax.jit
  def run(p, t):
    _, state = model.module.apply({'params': p}, t, token_mask(t), train=False,
                                  capture_intermediates=_is_ffn_norm, mutable=['intermediates'])
    return {b: state['intermediates'][f'block_{b}']['ffn_norm']['__call__'][0] for b in blocks}
  return {b: np.asarray(x) for b, x in jax.device_get(run(params, jnp.asarray(tokens_BL))).items()}


def layer_stats(block: int, x_TD: np.ndarray, router: tuple[np.ndarray, np.ndarray | None],
                experts: LayerExpertsNP, top_k: int) -> LayerStats:
  """LayerStats of one MoE layer from its inputs x_TD (real tokens only)."""
  kernel, bias = router
  logits = x_TD.astype(np.float32) @ kernel
  if bias is not None:
    logits = logits + bias
  e = kernel.shape[1]
  order = np.argsort(-logits, axis=-1, kind='stable')[:, :top_k]    # ties: the lower expert index first
  counts = np.bincount(order.reshape(-1), minlength=e).astype(np.int64)
  norms = np.full(e, np.nan)
  for expert in range(e):
    rows = np.flatnonzero((order == expert).any(axis=-1))
    if len(rows):
      x = x_TD[rows].astype(np.float32)
      y = gelu(x @ experts.w_in[expert] + experts.b_in[expert]) @ experts.w_out[expert] + experts.b_out[expert]
      norms[expert] = float(np.mean(np.linalg.norm(y, axis=-1)))
  return LayerStats(block, logits.astype(np.float32), counts, norms)


def collect(source: Any, batches: list[dict[str, np.ndarray]]) -> list[LayerStats]:
  """Statistics of every MoE layer of `source` (compress/runs.SourceRun) over `batches` (decoder features)."""
  per_block: dict[int, list[np.ndarray]] = {b: [] for b in source.moe_blocks}
  stats_model = stats_model_of(source)
  for batch in batches:
    tokens = np.asarray(batch['decoder_input_tokens'])
    mask = np.asarray(token_mask(jnp.asarray(tokens)))
    for block, x_BLD in moe_inputs(stats_model, source.params, tokens).items():
      per_block[block].append(x_BLD[mask])
  top_k = source.model.spec.moe.top_k
  return [layer_stats(b, np.concatenate(per_block[b]), source.routers[i], source.layers[i], top_k)
          for i, b in enumerate(source.moe_blocks)]


def stats_model_of(source: Any) -> Any:
  """The source's model without activation rematerialisation (same parameters; captures see every block)."""
  if source.model.spec.model.remat == 'none':
    return source.model
  config = source.config.copy_and_resolve_references()
  config.model.remat = 'none'
  return LanguageModel(config)


def task_batches(config: Any, task: str, data_dir: str, num_samples: int, batch_size: int, seed: int = 0
                 ) -> list[dict[str, np.ndarray]]:
  """`num_samples` documents of the task's training split (a seeded sample; all when fewer), as batches."""
  data = config.data.copy_and_resolve_references()
  data.task, data.finetune_task, data.finetune_data_dir = task_finetune.TASK, task, data_dir
  examples = task_finetune.load_split(data, task_finetune.TRAIN_SPLIT)
  n = len(examples.rows)
  index = np.sort(np.random.default_rng(seed).permutation(n)[:min(num_samples, n)])
  rows = examples.rows[index]
  return [{'decoder_input_tokens': rows[i:i + batch_size, :-1]} for i in range(0, len(rows), batch_size)]


def validation_batches(config: Any, num_batches: int) -> list[dict[str, np.ndarray]]:
  """The run's own validation batches (pretraining data.eval_split)."""
  return pipeline.make_eval_batches(config.data, num_batches, examples=task_finetune.eval_rows(config.data))


def save(stats: list[LayerStats], out: str, meta: dict[str, Any]) -> dict[str, Any]:
  """stats.json, stats.npz and usage.png in `out`; returns the JSON record."""
  os.makedirs(out, exist_ok=True)
  record = dict(meta, layers=[{
      'block': s.block, 'tokens': s.tokens, 'counts': s.counts_E.tolist(),
      'frequency': [round(float(f), 6) for f in s.frequency_E],
      'output_norm': [None if np.isnan(v) else round(float(v), 6) for v in s.output_norm_E]} for s in stats])
  with open(os.path.join(out, 'stats.json'), 'w') as f:
    json.dump(record, f, indent=2)
  arrays = {}
  for i, s in enumerate(stats):
    arrays.update({f'layer{i}_logits': s.logits_TE, f'layer{i}_counts': s.counts_E,
                   f'layer{i}_frequency': s.frequency_E, f'layer{i}_output_norm': s.output_norm_E})
  np.savez_compressed(os.path.join(out, 'stats.npz'), blocks=np.asarray([s.block for s in stats]), **arrays)
  plot_usage(stats, os.path.join(out, 'usage.png'), meta.get('data', ''))
  return record


def plot_usage(stats: list[LayerStats], path: str, title: str = '') -> None:
  """Heatmap of the usage frequency, one row per MoE layer (layers of fewer experts padded blank)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  e_max = max(len(s.counts_E) for s in stats)
  grid = np.full((len(stats), e_max), np.nan)
  for i, s in enumerate(stats):
    grid[i, :len(s.counts_E)] = s.frequency_E
  fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * e_max + 2), max(2.0, 0.45 * len(stats) + 1.2)))
  image = ax.imshow(grid, aspect='auto', cmap='viridis', vmin=0.0)
  ax.set_xlabel('expert')
  ax.set_ylabel('MoE block')
  ax.set_yticks(range(len(stats)), [str(s.block) for s in stats])
  ax.set_xticks(range(e_max))
  ax.set_title(f'expert usage frequency {title}'.strip(), fontsize=9)
  fig.colorbar(image, ax=ax, fraction=0.046)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
