"""An exclusive lock per run directory, so two processes never write one run.

    with RunLock(out):            # raises RunLockedError naming the holder
        ...

The lock is ``fcntl.flock`` on ``<dir>/.lock``: the kernel drops it when the holding process
ends, however it ends (even SIGKILL), so a stale lock from a crash never blocks a restart;
the file records who holds it (pid, host, start time, command) for the error message.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time

import jax


class RunLockedError(RuntimeError):
    """The run directory cannot be taken: another live process holds it, or it is not a
    writable directory (a file, read-only, a symlink loop)."""


class RunLock:
    def __init__(self, directory: str, what: str = "run"):
        self.directory = os.path.abspath(directory)
        # a multi-host run: one lock per process slot (process 0 keeps the plain name)
        index = jax.process_index() if jax.process_count() > 1 else 0
        self.path = os.path.join(self.directory, ".lock" + (f".{index}" if index else ""))
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            os.makedirs(self.directory, exist_ok=True)
            if os.path.isdir(self.path):
                raise IsADirectoryError(f"{self.path} is a directory")
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            why = {
                FileExistsError: "it exists and is not a directory",
                NotADirectoryError: "a part of the path is a file, not a directory",
                PermissionError: "it is not writable",
                IsADirectoryError: f"its lock path {self.path} is a directory",
            }.get(type(e), f"{type(e).__name__}: {e.strerror or e}")
            if getattr(e, "errno", None) == 40:  # ELOOP
                why = "its path loops through symbolic links"
            raise RunLockedError(
                f"{self.directory} cannot be used as a {self.what} directory: {why}. Choose "
                "another output directory."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"{self.directory} is in use by another {self.what} ({holder}). Wait for it to "
                "finish or stop it, or choose another output directory."
            ) from None
        os.ftruncate(fd, 0)
        os.write(
            fd,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "command": " ".join(sys.argv)[:300],
                }
            ).encode(),
        )
        os.fsync(fd)
        self._fd = fd
        return self

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            return (
                f"pid {info.get('pid')} on {info.get('host')}, since {info.get('started')}: "
                f"{info.get('command')}"
            )
        except (OSError, ValueError):
            return "holder unknown"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
