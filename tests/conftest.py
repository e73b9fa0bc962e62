"""Shared test set-up: JAX's persistent compilation cache (MJX and learner compiles are slow
on CPU) and markers."""

import os

import jax

_CACHE = os.environ.get(
    "RESFIT_JAX_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".jax_cache")
)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow: end-to-end learning runs and the heaviest compiles (CI runs them; leave them out "
        'while working with -m "not slow")',
    )
