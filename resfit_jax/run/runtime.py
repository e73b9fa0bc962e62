"""Script set-up: JAX's persistent compilation cache, a quiet terminal, SIGTERM as Ctrl-C.

    from resfit_jax.run.runtime import setup_script
    setup_script()        # first line of an absl main()

MJX and learner compiles take tens of seconds on CPU; the cache lets a second run of the
same script reuse them from disk. Libraries log at INFO (orbax's checkpoint save / finalize
/ delete messages, JAX's backend probes); a script shows only its own progress, results and
warnings unless absl's ``--verbosity`` flag is given (``--verbosity=0`` brings INFO back).
XLA's C++ "Very slow compile?" alarm (a multi-line ERROR that a busy CPU triggers whenever a
compile takes minutes, though nothing is wrong) is filtered out of the process's stderr the
same way. A SIGTERM (``kill``, a cluster's preemption) is raised as ``KeyboardInterrupt``, so
a run checkpoints on it as it does on Ctrl-C.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import signal
import sys
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


# one message of XLA's slow-operation alarm: the log line naming slow_operation_alarm.cc, then
# (optionally a blank line and) a block of stars, "[Compiling module ...] Very slow compile?
# ...", stars; the second form starts "The operation took ..."
SLOW_COMPILE_ALARM = re.compile(
    rb"[^\n\r]*slow_operation_alarm\.cc:\d+\][^\n]*\n(?:\n?\*+\n[^\n]*\n\*+\n)?"
)
_stderr_filter: dict = {}


def filter_native_stderr(pattern: re.Pattern = SLOW_COMPILE_ALARM) -> bool:
    """Route file descriptor 2 (where C++ libraries log) through a thread that drops every
    match of ``pattern`` and passes everything else on at once, partial lines included
    (progress bars). Idempotent; restored at exit. Returns False where it cannot be set up."""
    if _stderr_filter:
        return True
    try:
        sys.stderr.flush()
        original = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
    except OSError:
        return False

    def pump() -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(read_end, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            pending += chunk
            # hold back a possibly incomplete alarm (it arrives in one write, rarely split)
            cut = pending.rfind(b"slow_operation_alarm")
            if cut >= 0 and pending.count(b"\n", cut) < 4 and len(pending) - cut < 4096:
                start = max(pending.rfind(b"\n", 0, cut), pending.rfind(b"\r", 0, cut)) + 1
                out, pending = pattern.sub(b"", pending[:start]), pending[start:]
            else:
                out, pending = pattern.sub(b"", pending), b""
            if out:
                os.write(original, out)
        if pending:
            os.write(original, pattern.sub(b"", pending))
        os.close(read_end)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(original, 2)  # closes the pipe's last write end: the pump drains
        thread.join(timeout=2.0)

    atexit.register(restore)
    _stderr_filter.update(original=original, thread=thread, restore=restore)
    return True


def _terminate_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_sigterm() -> bool:
    """Raise SIGTERM as ``KeyboardInterrupt`` in the main thread (the trainers' Ctrl-C path:
    checkpoint, then stop). Returns False where no handler can be set (not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    return True


@contextlib.contextmanager
def interrupts_deferred():
    """Hold Ctrl-C and SIGTERM for the duration of the block (e.g. while a finished episode
    is journaled) and raise ``KeyboardInterrupt`` at its end if one arrived, so the block
    is never cut in half. Outside the main thread it defers nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    handler = lambda signum, frame: caught.append(signum)
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    if caught:
        raise KeyboardInterrupt(f"signal {caught[0]} (held until the block finished)")


def setup_script(cache_dir: str | None = None) -> None:
    """Compilation cache + quiet library logs (XLA's slow-compile alarm filtered out of
    stderr) + SIGTERM as Ctrl-C: call first in a script's main()."""
    if not quiet_logging():
        filter_native_stderr()
    enable_compilation_cache(cache_dir)
    interrupt_on_sigterm()
