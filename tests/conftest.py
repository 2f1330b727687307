"""Fixtures shared by several test modules."""

from __future__ import annotations

import jax
import pytest


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
