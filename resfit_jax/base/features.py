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

from resfit_jax.base.policy import BasePolicy, ChunkedBase, ChunkQueue
from resfit_jax.normalization import Normalizer
from resfit_jax.observations import append_state, spec_with_state

PyTree = Any


def chunked_base(base: Any) -> ChunkedBase:
    """The ChunkedBase inside ``base`` (through wrappers with a ``.base``), or a clear error."""
    inner = base
    while not isinstance(inner, ChunkedBase):
        inner = getattr(inner, "base", None)
        if inner is None:
            raise ValueError(
                f"Chunk-phase features need a chunked base (ChunkedBase, e.g. a "
                f"BC base from resfit_jax.bc.frozen); {type(base).__name__} has no chunk "
                "queue. Turn base_phase / base_plan / offset_bound off for this "
                "base."
            )
    return inner


@dataclasses.dataclass(frozen=True)
class BaseFeatures:
    horizon: int
    chunk_size: int
    action_dim: int
    phase: bool = True
    plan: int = 0

    @classmethod
    def for_base(cls, base: Any, phase: bool = True, plan: int = 0) -> BaseFeatures | None:
        """The features of ``base`` (unwrapping e.g. ObservationPrefix); None if none asked."""
        if not phase and plan == 0:
            return None
        if plan < 0:
            raise ValueError(f"base_plan must be >= 0 (got {plan}).")
        inner = chunked_base(base)
        if inner.temporal_ensemble is not None:
            raise ValueError(
                "Chunk-phase features are not defined for a temporally ensembled "
                "base (it predicts a new chunk every step)."
            )
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
            idx = jnp.clip(
                state.index[:, None] + jnp.arange(self.plan)[None], 0, self.chunk_size - 1
            )  # [E, m]
            planned = jnp.take_along_axis(state.chunk, idx[..., None], axis=1)  # [E, m, A]
            parts.append(normalizer.normalize_action(planned).reshape(planned.shape[0], -1))
        return jnp.concatenate(parts, axis=-1)

    def augment(self, obs: PyTree, state: ChunkQueue, normalizer: Normalizer) -> PyTree:
        """obs [E, D] -> [E, D + size] (a dict observation: its "state" vector grows)."""
        return append_state(obs, self(state, normalizer))

    def spec(self, obs_spec: PyTree) -> PyTree:
        return spec_with_state(obs_spec, self.size)


def rechunk(
    base: BasePolicy, execution_horizon: int | None, temporal_ensemble: float | None
) -> BasePolicy:
    """The base with another execution horizon / temporal ensembling (a ChunkedBase only)."""
    if execution_horizon is None and temporal_ensemble is None:
        return base
    if not isinstance(base, ChunkedBase):
        raise ValueError(
            f"base_execution_horizon / base_temporal_ensemble need a chunked base; "
            f"{type(base).__name__} has no chunk queue."
        )
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


@dataclasses.dataclass(frozen=True)
class Offsets:
    """Lasting corrections on a chunked base: the learner corrects the effective base action
    clip(a_b + o), where the offset o [E, A] carries corrections along the base's chunk and
    is reset when the base starts a new chunk (or an episode).

    - ``hold=False`` ("accumulate", ``TrainConfig.offset_bound``): every step's residual adds
      to o: a_t = clip(a_b,t + o_t-1 + r_t), o_t = clip(a_t - a_b,t, +-bound).
    - ``hold=True`` (``TrainConfig.residual_hold``): the residual acts only on the first step
      of each chunk and what it chose is held for the rest of it (one decision per chunk;
      exploration noise is held, never summed). The learner's observation also gains the
      0/1 flag "the residual acts here" as its last entry, which the learner multiplies its
      residual with (``ResidualTD3Config.residual_mask``), in acting and in the TD target.

    Learner observations gain ``o`` [A] (and the flag [1]) after the base's chunk features.

    Semi-MDP decisions (``decisions(k)``, ``TrainConfig.residual.decision_steps``): hold
    with decision points every ``every`` = k steps of the chunk (positions 0, k, 2k, ...;
    k divides the execution horizon, so every refill is one) and nothing appended to the
    learner's observation (``observed=False``): the learner sees only decision points, where
    the offset is always 0, and the replay stores one transition per decision.

    Offset + slope (``slope=True``, semi-MDP only): the decision is a residual chunk [k, A]
    with two parameters per action dimension, coefficients c = (o, s) [E, 2A]; step j of the
    window executes clip(a_b,j + o + s * (2j / (k - 1) - 1), -1, 1): o the window's mean
    correction, s half its change over the window. The learner's decision action is
    (clip(a_b + o), s) against the decision base (a_b, 0) (``decision_base``), so it is
    2A-dimensional and a zero residual is still the base.
    """

    bound: float
    hold: bool = False
    every: int = 0  # decision points every this many chunk steps (0: at refills only)
    observed: bool = True  # the learner's observation gains the offset (and flag)
    slope: bool = False  # semi-MDP: an offset + slope residual chunk (2A coefficients)

    def __post_init__(self):
        if self.slope and not (self.hold and not self.observed and self.every >= 2):
            raise ValueError(
                "Offsets(slope=True) is a semi-MDP window shape: build it with "
                "Offsets.decisions(k, slope=True), k >= 2."
            )

    @classmethod
    def decisions(cls, every: int, bound: float = 2.0, slope: bool = False) -> Offsets:
        """Decide every ``every`` steps and hold the correction in between (semi-MDP);
        ``slope``: the held correction is an offset plus a slope over the window."""
        return cls(bound, hold=True, every=int(every), observed=False, slope=bool(slope))

    def decision_size(self, action_dim: int) -> int:
        """Entries of one decision's action (and of the held coefficients)."""
        return action_dim * (2 if self.slope else 1)

    def position(self, state: ChunkQueue) -> jax.Array:
        """[E] int32: the step of its decision window the base's last popped action is on."""
        return (state.index - 1) % max(self.every, 1)

    def decision_base(self, base_action: jax.Array) -> jax.Array:
        """The base's action in decision coordinates: a_b [E, A], or (a_b, 0) [E, 2A] with
        ``slope`` (a zero slope is the base's own plan)."""
        if not self.slope:
            return base_action
        return jnp.concatenate([base_action, jnp.zeros_like(base_action)], axis=-1)

    def window_residual(self, coef: jax.Array, state: ChunkQueue) -> jax.Array:
        """The residual [E, A] the held coefficients give at the current window step:
        o + s * (2j / (k - 1) - 1) with ``slope``, else the offset itself."""
        if not self.slope:
            return coef
        a = coef.shape[-1] // 2
        ramp = 2.0 * self.position(state).astype(coef.dtype) / (self.every - 1) - 1.0
        return coef[..., :a] + coef[..., a:] * ramp[:, None]

    @property
    def semi_mdp(self) -> bool:
        """One replay transition per decision (``replay.decisions.DecisionWriter``)."""
        return self.hold and not self.observed

    def size(self, action_dim: int) -> int:
        return action_dim + int(self.hold) if self.observed else 0

    def decides(self, state: ChunkQueue) -> jax.Array:
        """[E] bool: the action the base popped last starts a decision (hold: a refill, or
        every ``every`` steps into its chunk)."""
        if self.every >= 1:
            return (state.index - 1) % self.every == 0
        return refilled(state)

    def acts(self, state: ChunkQueue) -> jax.Array:
        """[E, 1] float: 1 where the residual acts (hold: decision points)."""
        return self.decides(state)[:, None].astype(jnp.float32)

    def observe(self, obs: PyTree, offset: jax.Array, state: ChunkQueue) -> PyTree:
        """obs [E, D] -> [E, D + size]: the offset (and the acts flag) appended."""
        if not self.observed:
            return obs
        return append_state(obs, offset, *([self.acts(state)] if self.hold else []))

    def effective(self, base_action: jax.Array, offset: jax.Array) -> jax.Array:
        """The base action the learner corrects, clip(a_b + o) [E, A]."""
        return jnp.clip(base_action + offset, -1.0, 1.0)

    def after_step(
        self, offset: jax.Array, base_action: jax.Array, executed: jax.Array, state: ChunkQueue
    ) -> jax.Array:
        """The offset after executing ``executed`` at base state ``state`` (the one that
        produced ``base_action``), before any reset."""
        kept = offset_update(self.bound, base_action, executed)
        return jnp.where(self.decides(state)[:, None], kept, offset) if self.hold else kept

    def reset(self, offset: jax.Array, next_state: ChunkQueue) -> jax.Array:
        """Zero where the base's next step starts a new chunk (or decision)."""
        return jnp.where(self.decides(next_state)[:, None], 0.0, offset)


def make_offsets(offset_bound: float, hold: bool) -> Offsets | None:
    """The offsets of a config (None: per-step residuals). Hold without its own bound keeps
    whatever the residual chose (its bound is the learner's ``action_scale``)."""
    if hold:
        return Offsets(offset_bound if offset_bound > 0 else 2.0, True)
    return Offsets(offset_bound) if offset_bound > 0 else None


def decision_inputs(
    base: Any, every: int, phase: bool = False, plan: int = 0, slope: bool = False
) -> tuple[BaseFeatures | None, Offsets]:
    """The semi-MDP residual's inputs on ``base``: decisions every ``every`` = k env steps
    (k divides the base's execution horizon, so every chunk refill is a decision), the
    learner sees the base's plan for the k steps of its window (``plan`` raised to k - 1)
    and, when k is shorter than the chunk, its phase; ``slope``: offset + slope windows.
    A clear error when k does not fit."""
    horizon = chunked_base(base).horizon
    if every < 2:
        raise ValueError(f"decision_steps={every}: semi-MDP decisions need k > 1.")
    if horizon % every:
        raise ValueError(
            f"decision_steps={every} must divide the base's execution horizon "
            f"({horizon}) so that every chunk refill is a decision; pick a divisor of "
            f"{horizon} or set base.execution_horizon."
        )
    features = BaseFeatures.for_base(base, phase or every < horizon, max(plan, every - 1))
    return features, Offsets.decisions(every, slope=slope)


def augment(
    features: BaseFeatures | None, obs: PyTree, state: PyTree, normalizer: Normalizer
) -> PyTree:
    """``features.augment`` or obs unchanged without features."""
    return obs if features is None else features.augment(obs, state, normalizer)


def learner_obs_spec(
    obs_spec: Any, features: BaseFeatures | None, offsets: Offsets | None, action_dim: int
) -> Any:
    """The learner's observation spec: the task's ``obs_spec``, plus the base's chunk phase /
    plan (``features``), plus the held or summed offset and its flag (``offsets``)."""
    spec = obs_spec if features is None else features.spec(obs_spec)
    return spec_with_state(spec, 0 if offsets is None else offsets.size(action_dim))
