"""Environments: functional protocol, wrappers and a registry (``make(name, **overrides)``)."""
from __future__ import annotations

from typing import Callable

from resfit_jax.envs.core import AutoReset, Env, EpisodeWrapper, State, VmapWrapper, Wrapper
from resfit_jax.envs.point_reach import PointReach

_REGISTRY: dict[str, Callable[..., Env]] = {"PointReach": PointReach}


def register(name: str, factory: Callable[..., Env]) -> None:
    _REGISTRY[name] = factory


def make(name: str, **overrides) -> Env:
    """Build a registered task by name; keyword overrides go to its constructor."""
    if name not in _REGISTRY:
        raise KeyError(f"Unknown task {name!r}; registered: {sorted(_REGISTRY)}.")
    return _REGISTRY[name](**overrides)


__all__ = ["AutoReset", "Env", "EpisodeWrapper", "State", "VmapWrapper", "Wrapper", "make",
           "register", "PointReach"]
