"""The trainer's periodic zero/few-shot task evaluation (config section `eval`, docs/evaluation.md).

Every eval.every steps and after the last step, the configured tasks are scored on the live parameters through
the same backend as `python -m samoe_jax.evaluate` (compiled scoring shapes are reused between evaluations).
Results go to metrics.jsonl (kind 'tasks'), TensorBoard ('tasks/<task>/<metric>') and WORKDIR/eval/step_<N>/.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
from absl import logging

from samoe_jax.evaluation import outputs
from samoe_jax.evaluation.backend import ModelBackend
from samoe_jax.evaluation.runner import EvalSettings, run_evaluation
from samoe_jax.evaluation.task_specs import parse_seeds, parse_tasks
from samoe_jax.evaluation.tokenization import EvalTokenizer


def settings_from_config(config: ml_collections.ConfigDict) -> EvalSettings | None:
  """The eval section as EvalSettings, or None when no tasks are configured (or the section is absent)."""
  if 'eval' not in config or not parse_tasks(config.eval.tasks):
    return None
  v = config.eval
  return EvalSettings(tasks=parse_tasks(v.tasks), data_dir=v.data_dir, num_fewshot=int(v.num_fewshot),
                      fewshot_seeds=parse_seeds(v.fewshot_seeds), limit=int(v.limit) or None,
                      bootstrap_iters=0)


def check_task_data(config: ml_collections.ConfigDict) -> None:
  """Fails before training starts when a configured task's data cannot be scored (one error listing every
  problem: missing or malformed files, gold answers outside the choices, too few documents for the shots)."""
  settings = settings_from_config(config)
  if settings is None:
    return
  try:
    settings.check_data()
  except ValueError as err:
    raise ValueError(f'eval.tasks={config.eval.tasks!r}: {err} (docs/evaluation.md says where to get each data '
                     'set)') from None


class PeriodicTaskEval:
  """Scores the configured tasks on demand; the backend is built on first use."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, model: Any, partitioner: Any):
    self.settings = settings_from_config(config)
    self.config, self.workdir, self.model, self.partitioner = config, workdir, model, partitioner
    self.every = int(config.eval.every) if self.settings else 0
    self._backend = None

  def due(self, step: int, last_step: int) -> bool:
    return self.settings is not None and ((self.every and step % self.every == 0) or step == last_step)

  def __call__(self, step: int, params: Any, writer: Any) -> dict[str, dict[str, float]]:
    start = time.time()
    if self._backend is None:
      self._backend = ModelBackend(self.model, params, EvalTokenizer.from_config(self.config),
                                   batch_size=int(self.config.eval.batch_size), partitioner=self.partitioner)
    else:
      self._backend.set_params(params)
    scores, details = run_evaluation(self._backend, self.settings)
    if jax.process_index() == 0:
      outputs.write_step_results(self.workdir, step, scores, details, self.settings.setting(),
                                 f'samoe_jax.train periodic evaluation (eval.tasks={self.config.eval.tasks!r})')
      writer.write_tasks(step, outputs.tensorboard_scalars(scores))
    logging.info('task evaluation at step %d took %.1fs', step, time.time() - start)
    return scores
