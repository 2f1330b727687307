"""Multi-process runs (TPU pods, multi-node GPU, several CPU processes): start jax's distributed runtime.

One process per host (per GPU node, or per local CPU process in tests). After `initialize`, jax.devices() lists
every process's devices, each process reads only its shard of the data (seqio shard info = process index and
count), builds the global batch from its local rows (jax.make_array_from_process_local_data), and only process 0
writes logs and reports; all processes take part in checkpointing (orbax).
"""

from __future__ import annotations

import os

import jax
from absl import logging

# Environment variables by which cluster schedulers announce a multi-process job; jax.distributed.initialize()
# detects the coordinator from them (Cloud TPU pods, SLURM, Open MPI).
_MULTI_PROCESS_HINTS = (('TPU_WORKER_HOSTNAMES', lambda v: ',' in v), ('SLURM_NTASKS', lambda v: int(v) > 1),
                        ('OMPI_COMM_WORLD_SIZE', lambda v: int(v) > 1))


def detected_multi_process() -> bool:
  """Whether the environment announces more than one process (a multi-host TPU slice, SLURM, MPI)."""
  return any(name in os.environ and test(os.environ[name]) for name, test in _MULTI_PROCESS_HINTS)


def initialize(coordinator_address: str = '', num_processes: int = 0, process_id: int = -1) -> bool:
  """Starts the distributed runtime when the run spans several processes; returns whether it did.

  Explicit arguments (e.g. several CPU processes on one machine, or GPU nodes without a scheduler) win; otherwise
  a scheduler-announced job is auto-detected; a single-process run does nothing.
  """
  explicit = bool(coordinator_address) or num_processes > 1
  if explicit:
    if not coordinator_address or num_processes < 2 or not 0 <= process_id < num_processes:
      raise ValueError(
          f'a multi-process run needs coordinator_address (got {coordinator_address!r}), num_processes >= 2 '
          f'(got {num_processes}) and 0 <= process_id < num_processes (got {process_id})')
    # Collectives between CPU devices of different processes (only the CPU backend reads this setting).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  elif detected_multi_process():
    jax.distributed.initialize()
  else:
    return False
  logging.info('distributed: process %d of %d, %d local of %d devices', jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True

