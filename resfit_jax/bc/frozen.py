"""Freezing a trained BC base: the archival checkpoint (orbax params + JSON config and
normalisation) and the BasePolicy built from it.

    save_base(directory, step, params, config, normalizer, meta)   # keeps the best by success
    base, info = load_base(directory, obs_dim=..., action_dim=...)  # a ChunkedBase
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from resfit_jax.base.policy import ChunkedBase
from resfit_jax.bc.data import ChunkNormalizer, sample_obs
from resfit_jax.bc.networks import BCConfig, make_network
from resfit_jax.bc.train import make_predict

INFO_FILE = "base_info.json"


def checkpoint_manager(directory: str) -> ocp.CheckpointManager:
    """Keeps the single best checkpoint by eval success (ties: the later one)."""
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=1,
        best_fn=lambda m: m["success_rate"],
        best_mode="max",
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(os.path.abspath(directory), options=opts)


def save_base(
    manager: ocp.CheckpointManager,
    step: int,
    params: Any,
    config: BCConfig,
    normalizer: ChunkNormalizer,
    meta: dict,
    metrics: dict,
) -> None:
    manager.save(step, args=ocp.args.StandardSave(params), metrics=metrics)
    manager.wait_until_finished()
    info = dict(
        meta,
        config=config.to_dict(),
        normalizer=normalizer.to_dict(),
        best_step=manager.best_step(),
    )
    path = os.path.join(manager.directory, INFO_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(info, f, indent=2)
    os.replace(path + ".tmp", path)


def load_params(directory: str) -> tuple[Any, dict]:
    directory = os.path.abspath(directory)
    info_path = os.path.join(directory, INFO_FILE)
    if not os.path.exists(info_path):
        raise FileNotFoundError(
            f"load_base: {info_path} is missing; {directory} is not a base "
            "checkpoint written by experiments/train_bc.py."
        )
    try:
        with open(info_path) as f:
            info = json.load(f)
        missing = {"config", "obs_dim", "action_dim", "normalizer"} - set(info)
        if missing:
            raise ValueError(f"missing {sorted(missing)}")
        config = BCConfig.from_dict(info["config"])
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(
            f"load_base: {info_path} is damaged ({e}); train the base again or restore the file."
        ) from None
    net = make_network(config, info["action_dim"])
    obs = sample_obs(info["obs_dim"], info.get("cameras"))
    abstract = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), obs)["params"])
    # every process reads the whole (small) base onto its own first device (multi-host too)
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=local), abstract
    )
    manager = checkpoint_manager(directory)
    step = manager.best_step()
    if step is None:
        raise FileNotFoundError(
            f"load_base: {directory} has base_info.json but no saved "
            "parameters (training stopped before its first evaluation?); "
            "train the base again."
        )
    try:
        params = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:
        raise ValueError(
            f"load_base: checkpoint step {step} in {directory} is unreadable or "
            f"does not match its config (corrupted?): {e}"
        ) from e
    return params, info


def load_base(
    directory: str,
    obs_dim: int | None = None,
    action_dim: int | None = None,
    execution_horizon: int | None = None,
    temporal_ensemble: float | None = None,
    cameras: dict | None = None,
) -> tuple[ChunkedBase, dict]:
    """The frozen base of a train_bc checkpoint as a ChunkedBase (raw units in and out).
    ``cameras`` (the task's, name -> image shape; None: not checked) must match a pixel
    base's."""
    params, info = load_params(directory)
    check_cameras(info, cameras, directory)
    for name, want in (("obs_dim", obs_dim), ("action_dim", action_dim)):
        if want is not None and info[name] != want:
            raise ValueError(
                f"Base in {directory} has {name} {info[name]}, but the task has "
                f"{want}; it was trained for {info.get('task')!r}."
            )
    config = BCConfig.from_dict(info["config"])
    normalizer = ChunkNormalizer.from_dict(info["normalizer"])
    predict = make_predict(config, info["action_dim"], normalizer)
    base = ChunkedBase(
        lambda obs: predict(params, obs),
        info["action_dim"],
        config.chunk_size,
        execution_horizon or config.execution_horizon,
        temporal_ensemble,
    )
    return base, dict(info, params=params)


def check_cameras(info: dict, cameras: dict | None, directory: str) -> None:
    """A clear error when a base's cameras (``info["cameras"]``) are not the task's."""
    if cameras is None:
        return
    have = {c: list(v) for c, v in (info.get("cameras") or {}).items()}
    want = {c: list(v) for c, v in cameras.items()}
    if have != want:
        raise ValueError(
            f"Base in {directory} sees cameras {have or 'none (a state base)'}, "
            f"but the task gives {want or 'none (a state task)'}; train the base "
            "on this task's observations (cameras and resolution)."
        )


def open_base(
    path: str,
    obs_dim: int,
    action_dim: int,
    execution_horizon: int | None = None,
    cameras: dict | None = None,
) -> tuple[ChunkedBase, dict]:
    """A base from either format: a train_bc checkpoint directory (``base_info.json``), a
    jax.export directory (``base.json``), or a train_bc run directory holding either.
    Returns (base, info); info["demos"] is the base's demo dataset when known."""
    from resfit_jax.base.policy import METADATA_FILE, load_exported_base

    path = os.path.abspath(path)
    for candidate in (path, os.path.join(path, "checkpoint"), os.path.join(path, "export")):
        if os.path.exists(os.path.join(candidate, INFO_FILE)):
            base, info = load_base(
                candidate, obs_dim, action_dim, execution_horizon, cameras=cameras
            )
            return base, dict(info, format="checkpoint", path=candidate)
        if os.path.exists(os.path.join(candidate, METADATA_FILE)):
            base = load_exported_base(candidate, obs_dim, action_dim, execution_horizon)
            with open(os.path.join(candidate, METADATA_FILE)) as f:
                info = json.load(f)
            check_cameras(info, cameras, candidate)
            return base, dict(info, format="export", path=candidate)
    raise FileNotFoundError(
        f"No base at {path}: expected a train_bc checkpoint "
        f"({INFO_FILE}) or export ({METADATA_FILE}) directory; train one "
        "with `python -m experiments.train_bc --task=<task>`."
    )


def open_base_and_demos(
    base_dir: str, demos: str | None, obs_dim: int, action_dim: int, cameras: dict | None = None
) -> tuple[ChunkedBase, dict, str, list]:
    """What a training script needs: (base, info, demos directory, demo episodes). The demos
    default to the ones the base was trained on. FileNotFoundError / ValueError name the
    directories (``--base``, ``--demos``) when either is missing, damaged or mismatched."""
    from resfit_jax.data import read_episodes

    try:
        base, info = open_base(base_dir, obs_dim, action_dim, cameras=cameras)
        demos_dir = demos or info.get("demos")
        if demos_dir is None:
            raise ValueError(f"The base in {info['path']} does not name its demos; pass --demos.")
        episodes = read_episodes(demos_dir)
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"{e} (--base={base_dir}, --demos={demos})") from None
    return base, info, demos_dir, episodes
