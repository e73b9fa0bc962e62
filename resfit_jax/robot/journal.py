"""The robot episode journal: every finished episode on disk, atomically, before it is used.

Layout under the journal directory, one RLDS dataset per episode:

    episode_000000/        tfds RLDS (array_record), one episode; resfit_metadata.json holds
                           the label and loop statistics
    episode_000000/extras.npz   per-step arrays that RLDS has no field for: base_action
                           [T+1, A] (raw), residual [T, A] (normalized), clipped [T] bool,
                           step_s [T] (control-step wall time)
    .tmp-episode_000001-<pid>/  an episode being written (ignored and removed on open)

An episode is written into a temporary directory, flushed to disk (fsync), then renamed to
its final name: a crash leaves either the whole episode or nothing of it. ``entries`` lists
only complete episodes, in order.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil

import numpy as np

from resfit_jax.data.rlds import Episode, read_episodes, read_metadata, write_episodes
from resfit_jax.robot.operator import Label

_NAME = re.compile(r"^episode_(\d{6})$")
DATASET = "robot_episode"


@dataclasses.dataclass
class JournalEntry:
    index: int
    path: str  # the episode directory
    metadata: dict

    @property
    def dataset_dir(self) -> str:
        return os.path.join(self.path, DATASET, "1.0.0")

    @property
    def label(self) -> str:
        label = self.metadata.get("label", "")
        return label if isinstance(label, str) else ""


def _entry_metadata(dataset_dir: str) -> dict:
    """An entry's metadata; a damaged file (garbage, truncated, not an object) gives
    {"metadata_error": why} instead of ending the run: the episode data stays usable."""
    try:
        meta = read_metadata(dataset_dir)
    except (OSError, ValueError) as e:
        return {"metadata_error": f"unreadable ({type(e).__name__}: {e})"}
    if not isinstance(meta, dict):
        return {"metadata_error": f"not a JSON object (a {type(meta).__name__})"}
    return meta


def _fsync_tree(root: str) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(dirpath)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """Append-only store of robot episodes (see the module docstring)."""

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise ValueError(
                f"The robot journal {self.directory} is a file, not a directory; move it "
                "away (it is not a journal this library wrote) or choose another --out."
            )
        os.makedirs(self.directory, exist_ok=True)
        for name in os.listdir(self.directory):  # leftovers of a crash mid-write
            if name.startswith(".tmp-"):
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        # metadata read before, by entry name and the identity of its directory (an entry
        # moved out and another written under its name is read again); unreadable metadata
        # is never kept, so a repaired file is read again
        self._metadata: dict[str, tuple[tuple[int, int], dict]] = {}

    def _entry(self, name: str, index: int) -> JournalEntry:
        path = os.path.join(self.directory, name)
        st = os.stat(path)
        stamp = (st.st_ino, st.st_mtime_ns)
        cached = self._metadata.get(name)
        if cached is not None and cached[0] == stamp:
            return JournalEntry(index, path, cached[1])
        meta = _entry_metadata(os.path.join(path, DATASET, "1.0.0"))
        if "metadata_error" not in meta:
            self._metadata[name] = (stamp, meta)
        return JournalEntry(index, path, meta)

    def _names(self) -> list[tuple[str, int]]:
        """(directory name, index) of every entry, in index order."""
        found = ((n, _NAME.match(n)) for n in sorted(os.listdir(self.directory)))
        return [(n, int(m.group(1))) for n, m in found if m]

    def entries(self) -> list[JournalEntry]:
        """Every journaled episode in index order (each entry's metadata read once)."""
        return [self._entry(name, index) for name, index in self._names()]

    def next_index(self) -> int:
        names = self._names()
        return names[-1][1] + 1 if names else 0

    def write(
        self, episode: Episode, extras: dict[str, np.ndarray], metadata: dict
    ) -> JournalEntry:
        """Write one finished episode atomically; returns its entry."""
        index = self.next_index()
        name = f"episode_{index:06d}"
        tmp = os.path.join(self.directory, f".tmp-{name}-{os.getpid()}")
        meta = dict(metadata, index=index)
        episode = dataclasses.replace(episode, episode_id=index)
        write_episodes(tmp, [episode], name=DATASET, metadata=meta)
        np.savez(os.path.join(tmp, "extras.npz"), **{k: np.asarray(v) for k, v in extras.items()})
        _fsync_tree(tmp)
        final = os.path.join(self.directory, name)
        os.rename(tmp, final)
        _fsync_dir(self.directory)
        return JournalEntry(index, final, read_metadata(os.path.join(final, DATASET, "1.0.0")))

    @staticmethod
    def read(entry: JournalEntry) -> tuple[Episode, dict[str, np.ndarray]]:
        """The episode and its extras; a damaged entry raises ValueError naming its path."""
        try:
            (episode,) = read_episodes(entry.dataset_dir)
            with np.load(os.path.join(entry.path, "extras.npz")) as z:
                extras = {k: z[k] for k in z.files}
        except Exception as e:
            raise ValueError(
                f"Journal episode {entry.path} is unreadable ({e}); move it out "
                "of the journal to continue without it."
            ) from e
        n = episode.observation.shape[0]
        if extras.get("base_action", np.zeros((n, 0))).shape[0] != n:
            raise ValueError(
                f"Journal episode {entry.path}: extras.npz base_action does not have {n} rows."
            )
        return episode, extras

    def counts(self) -> dict:
        """Episodes, usable ones (success or failure), their env steps and successes, and
        robot time ``robot_s``: the reset, control and labelling of every journaled episode
        (aborted ones included), not the work between episodes nor a learner thread's."""
        entries = self.entries()
        usable = [e for e in entries if e.label in (Label.SUCCESS.value, Label.FAILURE.value)]
        return {
            "episodes": len(entries),
            "usable_episodes": len(usable),
            "env_steps": int(sum(e.metadata.get("steps", 0) for e in usable)),
            "successes": sum(e.label == Label.SUCCESS.value for e in usable),
            "robot_s": float(sum(e.metadata.get("wall_s", 0.0) for e in entries)),
        }

    def summary(self) -> dict:
        labels = [e.label for e in self.entries()]
        return {k: labels.count(k) for k in sorted(set(labels))} | {"total": len(labels)}


def metadata_json(meta: dict) -> str:
    return json.dumps(meta, indent=2, sort_keys=True)
