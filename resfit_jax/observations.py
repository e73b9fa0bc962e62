"""Observation layouts: a flat state vector, or a dict of a state vector and camera images.

    obs = x                                  # state task: float [..., D]
    obs = {"state": x, "top": img, ...}      # pixel task: x float [..., D],
                                             #             img uint8 [..., H, W, 3]

What the loops add to the learner's observation (the base's chunk features, the persistent
offset, the time feature) is appended to the state vector, so the learner's ``Normalizer``
always standardizes one vector, whichever layout the task has.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
STATE = "state"


def is_dict(obs: PyTree) -> bool:
    return isinstance(obs, dict)


def state_of(obs: PyTree) -> Any:
    """The state vector [..., D] of an observation (flat or dict)."""
    if is_dict(obs):
        if STATE not in obs:
            raise ValueError(
                f"A dict observation needs a {STATE!r} vector next to its camera "
                f"fields; got keys {sorted(obs)}."
            )
        return obs[STATE]
    return obs


def map_state(obs: PyTree, fn: Callable[[Any], Any]) -> PyTree:
    """The observation with its state vector replaced by ``fn(state)``; cameras unchanged."""
    if is_dict(obs):
        return dict(obs, **{STATE: fn(state_of(obs))})
    return fn(obs)


def append_state(obs: PyTree, *parts: jax.Array) -> PyTree:
    """Append vectors [..., F_i] to the state vector [..., D] (in the state's dtype)."""
    if not parts:
        return obs
    return map_state(
        obs, lambda x: jnp.concatenate([x] + [p.astype(x.dtype) for p in parts], axis=-1)
    )


def state_size(spec: PyTree) -> int:
    """D of an observation spec (no batch axis)."""
    return int(state_of(spec).shape[0])


def spec_with_state(spec: PyTree, extra: int) -> PyTree:
    """The spec with ``extra`` entries appended to its state vector."""
    if extra == 0:
        return spec
    grow = lambda s: jax.ShapeDtypeStruct((s.shape[0] + extra,), s.dtype)
    return map_state(spec, grow)


def cameras_of(obs: PyTree) -> dict:
    """The camera fields of an observation ({} for a state observation)."""
    return {k: v for k, v in obs.items() if k != STATE} if is_dict(obs) else {}


def camera_shapes(spec: PyTree) -> dict[str, tuple[int, ...]]:
    """Camera name -> image shape [H, W, C] of an observation spec ({} for a state task)."""
    return {k: tuple(v.shape) for k, v in cameras_of(spec).items()}
