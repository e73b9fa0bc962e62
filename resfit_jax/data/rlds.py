"""RLDS episodes on disk with tensorflow-datasets (array_record format), without TensorFlow.

Step schema (one dataset = a list of episodes; every field per step):

    observation/state  float32 [O]   the task's state observation
    observation/<cam>  uint8 [H, W, C]  one image per camera (pixel tasks; raw, no codec)
    action             float32 [A]   the action taken at this observation (raw task units)
    reward             float32 []    reward received after ``action``
    discount           float32 []    0 on the last step of a terminated episode, else 1
    is_first           bool    []    first step of the episode
    is_last            bool    []    last step of the episode
    is_terminal        bool    []    last step AND the episode terminated (success)

An episode with T actions has T + 1 steps (the RLDS convention): the last step holds the
final observation, a zero action and reward 0; the success reward 1 sits on step T - 1.
Episode metadata: episode_id int32, success bool, seed int64 (the episode's RNG seed when
known, else -1).
Dataset-level metadata (task name, generator settings) is stored as JSON in
``resfit_metadata.json`` next to the tfds files.

``write_episodes`` builds a tfds dataset directory; ``read_episodes`` loads it (or any tfds
RLDS dataset with this step schema; an observation that is a flat tensor instead of a dict
with "state" is accepted) into numpy arrays, and ``check_compatible`` rejects one whose
shapes do not match a task with an error that names the mismatch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from resfit_jax.data.episode import Episode

METADATA_FILE = "resfit_metadata.json"


def _features(obs_dim: int, action_dim: int, cameras: dict[str, tuple[int, ...]]):
    import tensorflow_datasets as tfds

    f = tfds.features
    images = {c: f.Tensor(shape=shape, dtype=np.uint8) for c, shape in cameras.items()}
    return f.FeaturesDict(
        {
            "steps": f.Dataset(
                {
                    "observation": f.FeaturesDict(
                        {"state": f.Tensor(shape=(obs_dim,), dtype=np.float32), **images}
                    ),
                    "action": f.Tensor(shape=(action_dim,), dtype=np.float32),
                    "reward": f.Scalar(dtype=np.float32),
                    "discount": f.Scalar(dtype=np.float32),
                    "is_first": f.Scalar(dtype=np.bool_),
                    "is_last": f.Scalar(dtype=np.bool_),
                    "is_terminal": f.Scalar(dtype=np.bool_),
                }
            ),
            "episode_metadata": f.FeaturesDict(
                {
                    "episode_id": f.Scalar(dtype=np.int32),
                    "success": f.Scalar(dtype=np.bool_),
                    "seed": f.Scalar(dtype=np.int64),
                }
            ),
        }
    )


def _episode_example(ep: Episode) -> dict:
    cams = ep.images or {}
    steps = [
        {
            "observation": {"state": ep.observation[i], **{c: x[i] for c, x in cams.items()}},
            "action": ep.action[i],
            "reward": ep.reward[i],
            "discount": ep.discount[i],
            "is_first": ep.is_first[i],
            "is_last": ep.is_last[i],
            "is_terminal": ep.is_terminal[i],
        }
        for i in range(ep.observation.shape[0])
    ]
    return {
        "steps": steps,
        "episode_metadata": {"episode_id": ep.episode_id, "success": ep.success, "seed": ep.seed},
    }


def write_episodes(
    directory: str,
    episodes: Sequence[Episode],
    *,
    name: str = "resfit_demos",
    metadata: dict | None = None,
    split: str = "train",
) -> str:
    """Write episodes as a tfds RLDS dataset (array_record) under ``directory``.

    Returns the dataset directory (``directory/name/1.0.0``), which ``read_episodes`` takes.
    Refuses to overwrite an existing dataset: choose a new directory.
    """
    import tensorflow_datasets as tfds

    if not episodes:
        raise ValueError("write_episodes: no episodes to write.")
    for ep in episodes:
        ep.validate()
    obs_dim, action_dim = episodes[0].observation.shape[1], episodes[0].action.shape[1]
    cameras = episodes[0].camera_shapes
    for ep in episodes:
        if ep.observation.shape[1] != obs_dim or ep.action.shape[1] != action_dim:
            raise ValueError(
                f"write_episodes: episode {ep.episode_id} has obs/action dims "
                f"{ep.observation.shape[1]}/{ep.action.shape[1]}, the first has "
                f"{obs_dim}/{action_dim}."
            )
        if ep.camera_shapes != cameras:
            raise ValueError(
                f"write_episodes: episode {ep.episode_id} has cameras "
                f"{ep.camera_shapes}, the first has {cameras}."
            )
    directory = os.path.abspath(directory)
    target = os.path.join(directory, name, "1.0.0")
    if os.path.exists(os.path.join(target, "dataset_info.json")):
        raise FileExistsError(
            f"write_episodes: a dataset already exists at {target}; "
            "write to a new directory (existing data is never overwritten)."
        )
    features = _features(obs_dim, action_dim, cameras)
    description = json.dumps(metadata or {})

    class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, description=description, features=features, disable_shuffling=True
            )

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples()}

        def _generate_examples(self):
            for i, ep in enumerate(episodes):
                yield i, _episode_example(ep)

        # tfds prints "Downloading and preparing dataset ..." around every write; nothing is
        # downloaded here, so the callers report what was written instead
        def _log_download_bytes(self):
            pass

        def _log_download_done(self):
            pass

    _Builder.name = name
    tfds.disable_progress_bar()
    builder = _Builder(data_dir=directory, file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    with open(os.path.join(target, METADATA_FILE), "w") as f:
        json.dump(
            dict(
                metadata or {},
                obs_dim=int(obs_dim),
                action_dim=int(action_dim),
                cameras={c: list(v) for c, v in cameras.items()},
                num_episodes=len(episodes),
                format="rlds/array_record/1",
            ),
            f,
            indent=2,
        )
    return target


def read_metadata(dataset_dir: str) -> dict:
    path = os.path.join(dataset_dir, METADATA_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _recorded_episodes(info: Any, split: str) -> int | None:
    """The episode count dataset_info.json records for ``split`` (None if it does not say)."""
    try:
        for entry in info.get("splits", []):
            if entry.get("name") == split:
                return sum(int(n) for n in entry.get("shardLengths", []))
    except (AttributeError, TypeError, ValueError):
        pass
    return None


def read_episodes(
    dataset_dir: str, split: str = "train", limit: int | None = None
) -> list[Episode]:
    """Load every episode of a tfds RLDS dataset directory into numpy ``Episode`` objects."""
    import tensorflow_datasets as tfds

    dataset_dir = os.path.abspath(dataset_dir)
    if not os.path.exists(os.path.join(dataset_dir, "dataset_info.json")):
        raise FileNotFoundError(
            f"read_episodes: {dataset_dir} is not a tfds dataset directory (no "
            "dataset_info.json); pass the directory write_episodes returned, e.g. "
            "<out>/resfit_demos/1.0.0."
        )
    if not os.path.exists(os.path.join(dataset_dir, "features.json")):
        raise FileNotFoundError(
            f"read_episodes: {dataset_dir} has no features.json (the dataset's schema), so it is "
            "incomplete or damaged; write the demos again (experiments.make_demos)."
        )
    if not any(".array_record" in f for f in os.listdir(dataset_dir)):
        raise FileNotFoundError(
            f"read_episodes: {dataset_dir} has no array_record data files; the dataset is "
            "incomplete (an interrupted write?). Write the demos again."
        )
    try:
        with open(os.path.join(dataset_dir, "dataset_info.json")) as f:
            info = json.load(f)
    except ValueError as e:
        raise ValueError(
            f"read_episodes: {dataset_dir}/dataset_info.json is not valid JSON "
            f"({e}); the dataset is damaged. Write the demos again."
        ) from None
    empty = ValueError(
        f"read_episodes: {dataset_dir} split {split!r} holds no episodes; write the demos "
        "again (experiments.make_demos) or point at another dataset."
    )
    if _recorded_episodes(info, split) == 0:
        raise empty
    try:
        source = tfds.builder_from_directory(dataset_dir).as_data_source(split)
    except Exception as e:  # corrupted metadata or missing files
        raise ValueError(f"read_episodes: cannot open {dataset_dir} split {split!r}: {e}") from e
    if len(source) == 0:
        raise empty
    n = len(source) if limit is None else min(limit, len(source))
    episodes = []
    for i in range(n):
        try:
            ex = source[i]
        except Exception as e:
            raise ValueError(
                f"read_episodes: episode {i} of {dataset_dir} is unreadable (corrupted file?): {e}"
            ) from e
        episodes.append(_to_episode(ex, i))
    return episodes


def _to_episode(ex: dict, index: int) -> Episode:
    steps = ex["steps"]
    rows = [steps[j] for j in range(len(steps))]
    if not rows:
        raise ValueError(f"read_episodes: episode {index} has no steps.")
    obs, images = [r["observation"] for r in rows], None
    if isinstance(obs[0], dict):
        if "state" not in obs[0]:
            raise ValueError(
                f"read_episodes: observation has keys {sorted(obs[0])}; this "
                "reader needs a flat state vector under observation/state."
            )
        cams = [k for k in obs[0] if k != "state"]
        images = {c: np.stack([np.asarray(o[c]) for o in obs]) for c in cams} or None
        obs = [o["state"] for o in obs]
    stack = lambda k, dt: np.stack([np.asarray(r[k], dt) for r in rows])
    meta = ex.get("episode_metadata", {}) or {}
    ep = Episode(
        observation=np.stack(obs).astype(np.float32).reshape(len(rows), -1),
        action=stack("action", np.float32).reshape(len(rows), -1),
        reward=stack("reward", np.float32),
        discount=stack("discount", np.float32),
        is_first=stack("is_first", bool),
        is_last=stack("is_last", bool),
        is_terminal=stack("is_terminal", bool),
        episode_id=int(meta.get("episode_id", index)),
        success=bool(meta.get("success", bool(stack("reward", np.float32).sum() > 0))),
        seed=int(meta.get("seed", -1)),
        images=images,
    )
    ep.validate()
    return ep


def check_compatible(
    episodes: Iterable[Episode],
    obs_dim: int,
    action_dim: int,
    task_name: str = "the task",
    cameras: dict[str, tuple[int, ...]] | None = None,
) -> None:
    """Raise ValueError if any episode's observation or action size, or its cameras (name ->
    image shape; None: a state task, images ignored), differ from the task's."""
    for ep in episodes:
        if cameras is not None and ep.camera_shapes != dict(cameras):
            raise ValueError(
                f"Dataset episode {ep.episode_id} has cameras {ep.camera_shapes}, but "
                f"{task_name} has {dict(cameras)}. Record the demos with the task's cameras "
                "and resolution."
            )
        o, a = ep.observation.shape[1], ep.action.shape[1]
        if o != obs_dim or a != action_dim:
            raise ValueError(
                f"Dataset episode {ep.episode_id} has observation size {o} and action size "
                f"{a}, but {task_name} has observation size {obs_dim} and action size "
                f"{action_dim}. Use demos recorded for this task (experiments/make_demos.py "
                "--task=...)."
            )
