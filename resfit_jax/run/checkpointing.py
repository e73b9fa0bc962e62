"""Run checkpoints with orbax: the whole training pytree (learner, replay, env and base state,
RNG) plus a JSON dict of host-side progress (phase, counters), for exact resume.

    ckpt = RunCheckpointer(directory)
    ckpt.save(step, state_pytree, progress_dict)
    state, progress = ckpt.restore(template_pytree)          # latest step
    state, progress = ckpt.restore(template_pytree, step=k)

Typed PRNG keys (``jax.random.key``) are stored as their raw key data and re-wrapped from the
template on restore, so restored state is bit-identical to the saved state: on CPU a run that
stops after chunk k and resumes equals the uninterrupted run.
Writes are synchronous and atomic (orbax finalizes a step directory only when complete).
Sharded state is written collectively: every process calls ``save`` and writes its own
shards (arrays on one host go as numpy); ``restore`` places each leaf like the template's,
so a run resumes on another device count whenever its layout fits (``sharding``).
Every step also gets a content checksum (SHA-256 over its files, ``checksums/<step>.sha256``);
``restore`` verifies it, and a damaged newest step is reported with its path and the previous
good one is restored instead (with a message). A step that fails to read raises an error
naming the directory and the step.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any


def content_hash(path: str) -> str:
    """SHA-256 over the files under ``path`` (relative names and bytes, in sorted order), or of
    the file itself: a run's identity of its base and demos, and checkpoint checksums."""
    h = hashlib.sha256()
    path = os.path.abspath(path)
    if os.path.isfile(path):
        files = [path]
    else:
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
    for f in files:
        h.update(os.path.relpath(f, path).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _global(x) -> bool:
    """Whether orbax should get the jax.Array itself (each process writes its shards): on one
    host every array; on several, those that span hosts (host-local ones go as numpy)."""
    return isinstance(x, jax.Array) and (jax.process_count() == 1 or not x.is_fully_addressable)


class DamagedCheckpointError(ValueError):
    """No checkpoint step of a run passed its checksum and could be read."""


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_storable(tree: PyTree) -> PyTree:
    """Typed PRNG keys -> raw uint32 key data; everything else unchanged."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def from_storable(stored: PyTree, template: PyTree) -> PyTree:
    """Inverse of ``to_storable``: re-wrap key data where the template holds typed keys."""

    def back(s, t):
        if _is_key(t):
            return jax.random.wrap_key_data(jnp.asarray(s), impl=jax.random.key_impl(t))
        return jnp.asarray(s, dtype=t.dtype) if hasattr(t, "dtype") else s

    return jax.tree.map(back, stored, template)


class RunCheckpointer:
    """Keeps the newest ``max_to_keep`` run checkpoints under ``directory``."""

    def __init__(self, directory: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        opts = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=False
        )
        self.manager = ocp.CheckpointManager(self.directory, options=opts)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def _checksum_path(self, step: int) -> str:
        return os.path.join(self.directory, "checksums", f"{step}.sha256")

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def verify(self, step: int) -> bool | None:
        """True / False whether step's files match their checksum; None if it has none."""
        path = self._checksum_path(step)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return f.read().strip() == content_hash(self._step_dir(step))

    @staticmethod
    def _flat(leaves: list) -> dict[str, Any]:
        """Leaves by index; zero-size leaves (e.g. MJX's empty act) are left out (orbax cannot
        store them) and come back from the template."""
        return {f"{i:06d}": x for i, x in enumerate(leaves) if np.size(x) > 0}

    def save(self, step: int, state: PyTree, progress: dict) -> None:
        """Every process calls it (multi-host: each writes its own shards of the arrays);
        the primary process writes the checksum once the step is complete."""
        stored = {
            k: v if _global(v) else np.asarray(v)
            for k, v in self._flat(jax.tree.leaves(to_storable(state))).items()
        }
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(stored), progress=ocp.args.JsonSave(progress)
            ),
            force=True,
        )
        self.manager.wait_until_finished()
        if jax.process_index() == 0:
            self._write_checksum(step)
        if jax.process_count() > 1:  # every process sees the finished step
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"resfit_jax checkpoint {step}")

    def _write_checksum(self, step: int) -> None:
        path = self._checksum_path(step)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            f.write(content_hash(self._step_dir(step)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
        keep = {str(s) for s in self.manager.all_steps()}
        for name in os.listdir(os.path.dirname(path)):
            if name.endswith(".sha256") and name[: -len(".sha256")] not in keep:
                os.remove(os.path.join(os.path.dirname(path), name))

    def restore(self, template: PyTree, step: int | None = None) -> tuple[PyTree, dict]:
        """The newest step whose checksum matches (or ``step``); a damaged newer one is
        reported on stderr and skipped."""
        if step is not None:
            if self.verify(step) is False:
                raise DamagedCheckpointError(
                    f"Run checkpoint {self._step_dir(step)} is damaged: its files do not match "
                    "their checksum."
                )
            return self._restore(template, step)
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(
                f"No run checkpoint under {self.directory}; start without "
                "--resume or point --out at the run to continue."
            )
        damaged, bad_steps = [], []
        for s in steps:
            if self.verify(s) is False:
                damaged.append(f"{self._step_dir(s)} (checksum mismatch)")
                bad_steps.append(s)
                continue
            try:
                out = self._restore(template, s)
            except ValueError as e:
                if "does not match this configuration" in str(e):
                    raise
                damaged.append(f"{self._step_dir(s)} ({e})")
                bad_steps.append(s)
                continue
            if damaged:
                moved = self._move_aside(bad_steps)
                print(
                    f"warning: damaged run checkpoint {'; '.join(damaged)}; resuming from the "
                    f"previous good one, {self._step_dir(s)}. The damaged step is kept for "
                    f"inspection in {moved} (the run writes its steps again).",
                    file=sys.stderr,
                )
            return out
        raise DamagedCheckpointError(
            f"No readable run checkpoint under {self.directory}: {'; '.join(damaged)}. Start "
            "the run again in a new directory."
        )

    def _move_aside(self, steps: list[int]) -> str:
        """Move damaged steps out of the manager's directory (to <directory>_damaged/,
        stamped), drop their checksums and reload the manager, so the run can save those
        steps again. Returns the folder they went to."""
        aside = f"{self.directory}_damaged"
        if jax.process_index() == 0:
            os.makedirs(aside, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for step in steps:
                if os.path.exists(self._step_dir(step)):
                    os.replace(self._step_dir(step), os.path.join(aside, f"{step}-{stamp}"))
                if os.path.exists(self._checksum_path(step)):
                    os.remove(self._checksum_path(step))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("resfit_jax damaged checkpoints moved")
        self.manager.reload()
        return aside

    def _restore(self, template: PyTree, step: int) -> tuple[PyTree, dict]:
        leaves, treedef = jax.tree.flatten(to_storable(template))
        # restored arrays are placed like the template's (any device count the layout fits)
        abstract = {
            k: jax.ShapeDtypeStruct(
                np.shape(x), x.dtype, sharding=(x.sharding if _global(x) else None)
            )
            for k, x in self._flat(leaves).items()
        }
        try:
            out = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:  # orbax raises several types for missing / corrupt files
            raise ValueError(
                f"Run checkpoint step {step} in {self.directory} could not be read "
                f"(corrupted, or written by a different configuration): {e}"
            ) from e
        for k, want in abstract.items():
            got = out["state"][k]
            if np.shape(got) != want.shape or got.dtype != want.dtype:
                raise ValueError(
                    f"Run checkpoint step {step} in {self.directory} does not match "
                    f"this configuration: leaf {k} is {got.dtype}"
                    f"{list(np.shape(got))}, expected {want.dtype}{list(want.shape)}"
                    ". Resume with the flags the run was started with."
                )
        stored = [out["state"].get(f"{i:06d}", x) for i, x in enumerate(leaves)]
        return from_storable(jax.tree.unflatten(treedef, stored), template), dict(out["progress"])

    def close(self) -> None:
        self.manager.close()
