"""Zero/few-shot evaluation tasks scored exactly as lm-evaluation-harness 0.4.13 scores them, on local JSONL data.

  get_task(name, data_dir) -> Task        TASK_NAMES (registry.py: data layout and where to get each set)
  evaluate_task(task, backend, num_fewshot=..., fewshot_seeds=..., limit=..., split=...) -> dict
  seqio_tasks.register_seqio_task(name, data_dir)   (imports seqio/TensorFlow; not imported here)
"""

from samoe_jax.evaluation.tasks.base import Task
from samoe_jax.evaluation.tasks.task_scoring import evaluate_task
from samoe_jax.evaluation.tasks.fewshot import ShotSampler, fewshot_context
from samoe_jax.evaluation.tasks.registry import TASK_NAMES, get_task

__all__ = ['TASK_NAMES', 'ShotSampler', 'Task', 'evaluate_task', 'fewshot_context', 'get_task']
