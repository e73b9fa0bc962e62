"""Markov inputs for the learner: where the frozen chunked base is in its open-loop chunk.

A chunked base executes K planned actions open loop, each anchored to the state at which
the chunk was predicted. The same action at the same observation then has very different
effects early and late in a chunk, and the queued base action differs from a freshly
predicted one. Without the position in the chunk the learner's inputs are not Markov.

    feats = BaseFeatures.for_base(base, phase=True, plan=2)
    x = feats.augment(obs, base_state, normalizer)     # obs [E, D] -> [E, D + feats.size]

``phase``: the position of the current action in its chunk, (index - 1) / horizon in
[0, 1) (0 right after a refill). ``plan``: the next m planned base actions (normalized,
[m * A]), clamped at the end of the chunk. The base keeps seeing its own observation; the
features are appended for the learner only, for online, demo and evaluation data alike.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from resfit_jax.base_policy import BasePolicy, ChunkedBase, ChunkQueue
from resfit_jax.normalization import Normalizer
from resfit_jax.observations import append_state, spec_with_state

PyTree = Any


def chunked_base(base: Any) -> ChunkedBase:
    """The ChunkedBase inside ``base`` (through wrappers with a ``.base``), or a clear error."""
    inner = base
    while not isinstance(inner, ChunkedBase):
        inner = getattr(inner, "base", None)
        if inner is None:
            raise ValueError(f"Chunk-phase features need a chunked base (ChunkedBase, e.g. a "
                             f"BC base from bases.frozen); {type(base).__name__} has no chunk "
                             "queue. Turn base_phase / base_plan / offset_bound off for this "
                             "base.")
    return inner


@dataclasses.dataclass(frozen=True)
class BaseFeatures:
    horizon: int
    chunk_size: int
    action_dim: int
    phase: bool = True
    plan: int = 0

    @classmethod
    def for_base(cls, base: Any, phase: bool = True, plan: int = 0) -> "BaseFeatures | None":
        """The features of ``base`` (unwrapping e.g. ObservationPrefix); None if none asked."""
        if not phase and plan == 0:
            return None
        if plan < 0:
            raise ValueError(f"base_plan must be >= 0 (got {plan}).")
        inner = chunked_base(base)
        if inner.temporal_ensemble is not None:
            raise ValueError("Chunk-phase features are not defined for a temporally ensembled "
                             "base (it predicts a new chunk every step).")
        return cls(inner.horizon, inner.chunk_size, inner.action_dim, phase, int(plan))

    @property
    def size(self) -> int:
        return int(self.phase) + self.plan * self.action_dim

    def __call__(self, state: ChunkQueue, normalizer: Normalizer) -> jax.Array:
        """Features [E, size] of base states whose last step popped the current action."""
        parts = []
        if self.phase:
            parts.append(((state.index - 1).astype(jnp.float32) / self.horizon)[:, None])
        if self.plan:
            idx = jnp.clip(state.index[:, None] + jnp.arange(self.plan)[None], 0,
                           self.chunk_size - 1)                                    # [E, m]
            planned = jnp.take_along_axis(state.chunk, idx[..., None], axis=1)      # [E, m, A]
            parts.append(normalizer.normalize_action(planned).reshape(planned.shape[0], -1))
        return jnp.concatenate(parts, axis=-1)

    def augment(self, obs: PyTree, state: ChunkQueue, normalizer: Normalizer) -> PyTree:
        """obs [E, D] -> [E, D + size] (a dict observation: its "state" vector grows)."""
        return append_state(obs, self(state, normalizer))

    def spec(self, obs_spec: PyTree) -> PyTree:
        return spec_with_state(obs_spec, self.size)


def rechunk(base: BasePolicy, execution_horizon: int | None,
            temporal_ensemble: float | None) -> BasePolicy:
    """The base with another execution horizon / temporal ensembling (a ChunkedBase only)."""
    if execution_horizon is None and temporal_ensemble is None:
        return base
    if not isinstance(base, ChunkedBase):
        raise ValueError(f"base_execution_horizon / base_temporal_ensemble need a chunked base; "
                         f"{type(base).__name__} has no chunk queue.")
    kw = {}
    if execution_horizon is not None:
        kw["execution_horizon"] = execution_horizon
    if temporal_ensemble is not None:
        kw["temporal_ensemble"] = temporal_ensemble
    return dataclasses.replace(base, **kw)


def refilled(state: ChunkQueue) -> jax.Array:
    """[E] bool: the base's last step started a new chunk (it re-anchored to the state)."""
    return state.index == 1


def offset_update(bound: float, base_action: jax.Array, executed: jax.Array) -> jax.Array:
    """The persistent offset after a step [E, A]: what the executed action added to the
    base's own (normalized) action, bounded to +-bound."""
    return jnp.clip(executed - base_action, -bound, bound)


def augment(features: BaseFeatures | None, obs: PyTree, state: PyTree,
            normalizer: Normalizer) -> PyTree:
    """``features.augment`` or obs unchanged without features."""
    return obs if features is None else features.augment(obs, state, normalizer)
