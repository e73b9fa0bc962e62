"""Script set-up: JAX's persistent compilation cache, a quiet terminal, SIGTERM as Ctrl-C.

    from resfit_jax.run.runtime import setup_script
    setup_script()        # first line of an absl main()

MJX and learner compiles take tens of seconds on CPU; the cache lets a second run of the
same script reuse them from disk. Libraries log at INFO (orbax's checkpoint save / finalize
/ delete messages, JAX's backend probes); a script shows only its own progress, results and
warnings unless absl's ``--verbosity`` flag is given (``--verbosity=0`` brings INFO back).
A SIGTERM (``kill``, a cluster's preemption) is raised as ``KeyboardInterrupt``, so a run
checkpoints on it as it does on Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import warnings

import jax

DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".cache", "resfit_jax", "xla")
QUIET_LOGGERS = ("jax", "orbax", "absl", "tensorflow_datasets", "etils", "matplotlib")


def enable_compilation_cache(directory: str | None = None) -> str:
    """Turn on the cache at ``directory`` (default $RESFIT_JAX_CACHE_DIR or ~/.cache/...)."""
    directory = directory or os.environ.get("RESFIT_JAX_CACHE_DIR", DEFAULT_DIR)
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


def quiet_logging(verbose: bool | None = None) -> bool:
    """Libraries log at WARNING and above only, unless ``verbose`` (default: absl's
    --verbosity flag was given on the command line). Returns whether logs stay verbose."""
    if verbose is None:
        from absl import flags

        verbose = "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present
    if verbose:
        return True
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # orbax and tfds announce deprecations on every call; they are not the user's to fix
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    return False


def _terminate_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_sigterm() -> bool:
    """Raise SIGTERM as ``KeyboardInterrupt`` in the main thread (the trainers' Ctrl-C path:
    checkpoint, then stop). Returns False where no handler can be set (not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    return True


def setup_script(cache_dir: str | None = None) -> None:
    """Compilation cache + quiet library logs + SIGTERM as Ctrl-C: call first in a script's
    main()."""
    quiet_logging()
    enable_compilation_cache(cache_dir)
    interrupt_on_sigterm()
