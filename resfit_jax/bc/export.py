"""Export a trained BC base as a jax.export artifact plus JSON metadata.

    export_base(directory, predict, params, obs_dim=..., action_dim=..., chunk_size=...,
                normalizer=..., task="PickPlace")
    base = resfit_jax.base.policy.load_exported_base(directory, obs_dim, action_dim)

The artifact (``base.jaxexport``) takes raw observations [b, O] (a pixel base: the dict
{"state": [b, O], camera: uint8 [b, H, W, C]}) with a symbolic batch b and returns raw action
chunks [b, K, A]; parameters and normalisation are baked in. Export
artifacts expire across JAX versions (serialization compatibility window), so the archival
format of a base is its params + architecture config (the orbax checkpoint that
experiments/train_bc.py writes); regenerate the artifact from it when JAX moves on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export

from resfit_jax.base.policy import ARTIFACT_FILE, EXPORT_FORMAT_VERSION, METADATA_FILE


def export_base(
    directory: str,
    predict: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    *,
    obs_dim: int,
    action_dim: int,
    chunk_size: int,
    execution_horizon: int | None = None,
    normalizer: Any = None,
    task: str | None = None,
    extra: dict | None = None,
    cameras: dict | None = None,
) -> str:
    """Serialize ``obs -> predict(params, obs)`` and write metadata; returns the directory.
    ``cameras``: name -> image shape [H, W, C] of a pixel base."""
    os.makedirs(directory, exist_ok=True)
    fn = jax.jit(lambda obs: predict(params, obs))
    (b,) = export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((b, obs_dim), jnp.float32)
    if cameras:
        spec = {
            "state": spec,
            **{c: jax.ShapeDtypeStruct((b,) + tuple(v), jnp.uint8) for c, v in cameras.items()},
        }
    exp = export.export(fn)(spec)
    out = exp.out_avals[0].shape
    if tuple(out[1:]) != (chunk_size, action_dim):
        raise ValueError(
            f"export_base: predict returns [b, {list(out[1:])}], expected "
            f"[b, {chunk_size}, {action_dim}]."
        )
    meta = {
        "format_version": EXPORT_FORMAT_VERSION,
        "task": task,
        "obs_dim": obs_dim,
        "action_dim": action_dim,
        "chunk_size": chunk_size,
        "execution_horizon": execution_horizon,
        "observation_spec": {"shape": [obs_dim], "dtype": "float32"},
        "cameras": {c: list(v) for c, v in (cameras or {}).items()},
        "action_units": "raw task units",
        "jax_version": jax.__version__,
        "normalization": normalizer.to_dict() if normalizer is not None else None,
    }
    meta.update(extra or {})
    tmp = os.path.join(directory, ARTIFACT_FILE + ".tmp")
    with open(tmp, "wb") as f:
        f.write(exp.serialize())
    os.replace(tmp, os.path.join(directory, ARTIFACT_FILE))
    with open(os.path.join(directory, METADATA_FILE), "w") as f:
        json.dump(meta, f, indent=2, default=lambda x: np.asarray(x).tolist())
    return directory
