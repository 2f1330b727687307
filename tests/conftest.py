"""Settings and fixtures shared by the test modules.

The suite runs XLA's CPU backend at LLVM optimisation level 0 (XLA_FLAGS, set here before any backend starts and
inherited by the tests' subprocesses). At the tiny shapes of the tests, compilation dominates: level 0 compiles a
train step about 1.7x and a parameter initialisation about 3.5x faster, and runs them about 1.3x slower. It
sets the CPU backend's code-generation optimisation level; the tests that inspect compiled HLO (collectives,
all-gather shapes, golden shardings) pass under it. Benchmarks, runs and the CLI keep XLA's defaults.
"""

from __future__ import annotations

import os

TEST_XLA_FLAGS = '--xla_backend_optimization_level=0'
if TEST_XLA_FLAGS not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + TEST_XLA_FLAGS).strip()

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402


@pytest.fixture(scope='module')
def compilation_cache(tmp_path_factory):
  """A persistent compilation cache for one module: its later runs load the first run's executables."""
  from jax._src import compilation_cache as cc  # pylint: disable=g-import-not-at-top
  options = {'jax_compilation_cache_dir': str(tmp_path_factory.mktemp('jax_cache')),
             'jax_persistent_cache_min_compile_time_secs': 0.0, 'jax_persistent_cache_min_entry_size_bytes': 0}
  saved = {k: getattr(jax.config, k) for k in options}
  for key, value in options.items():
    jax.config.update(key, value)
  cc.reset_cache()
  yield
  for key, value in saved.items():
    jax.config.update(key, value)
  cc.reset_cache()
