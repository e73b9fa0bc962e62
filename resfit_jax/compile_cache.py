"""JAX's persistent compilation cache for scripts: MJX and learner compiles take tens of
seconds on CPU, and a second run of the same script reuses them from disk."""
from __future__ import annotations

import os

import jax

DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".cache", "resfit_jax", "xla")


def enable_compilation_cache(directory: str | None = None) -> str:
    """Turn on the cache at ``directory`` (default $RESFIT_JAX_CACHE_DIR or ~/.cache/...)."""
    directory = directory or os.environ.get("RESFIT_JAX_CACHE_DIR", DEFAULT_DIR)
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
