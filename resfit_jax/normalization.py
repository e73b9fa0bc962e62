"""Action scaler and state standardizer: pytrees with exact inverse maps.

ActionScaler maps raw actions [..., A] to the normalized space the learner works in. The
dataset half-range is floored (``min_half_range``) and widened by ``1 + action_scale`` so
demo actions sit inside +-1 / (1 + s) and a residual of size s still fits inside [-1, 1].

StateStandardizer maps raw observation vectors [..., D] to zero mean and unit variance with
the standard deviation floored (``min_std``), so near-constant dimensions do not blow up.

``Normalizer`` holds both. It is the one way a run builds its normalization (``fit`` from
demo actions and observations) and it travels in the learner state, so every checkpoint (and
every policy rebuilt from one) uses the statistics its parameters were trained under.
``normalize_action`` is the one place where raw base actions are mapped into the learner's
space and clipped to [-1, 1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


def _as_2d_finite(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 1 or x.size == 0:
        raise ValueError(f"{name}: need a non-empty array [N, D] to fit, got shape {x.shape}.")
    x = x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x.reshape(-1, 1)
    if not np.all(np.isfinite(x)):
        bad = np.argwhere(~np.isfinite(x))[:3].tolist()
        raise ValueError(
            f"{name}: data contains NaN/inf (first [row, dim] indices {bad}); "
            "clean the dataset before fitting normalization statistics."
        )
    return x


@struct.dataclass
class ActionScaler:
    """Affine map raw <-> normalized actions. Fields: center [A], half_range [A] (raw units)."""

    center: jax.Array
    half_range: jax.Array

    @classmethod
    def fit(
        cls, actions, action_scale: float = 0.1, min_half_range: float = 0.05, margin: float = 0.0
    ) -> ActionScaler:
        """Fit from raw actions [N, A]: per-dim [min, max], half-range floored, then widened
        by ``1 + margin`` (room for base actions beyond the data) and ``1 + action_scale``."""
        if action_scale < 0 or margin < 0:
            raise ValueError(f"action_scale and margin must be >= 0, got {action_scale}, {margin}.")
        a = _as_2d_finite(actions, "ActionScaler.fit(actions)")
        lo, hi = a.min(axis=0), a.max(axis=0)
        half = np.maximum((hi - lo) / 2.0, min_half_range) * (1.0 + margin) * (1.0 + action_scale)
        return cls(
            center=jnp.asarray((hi + lo) / 2.0, jnp.float32),
            half_range=jnp.asarray(half, jnp.float32),
        )

    @classmethod
    def from_bounds(cls, low, high, action_scale: float = 0.0) -> ActionScaler:
        """From known raw bounds [A] (e.g. actuator limits), widened by 1 + action_scale."""
        low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        if low.shape != high.shape or np.any(high <= low):
            raise ValueError(
                f"from_bounds needs low < high with equal shapes, got {low} and {high}."
            )
        return cls(
            center=jnp.asarray((high + low) / 2, jnp.float32),
            half_range=jnp.asarray((high - low) / 2 * (1 + action_scale), jnp.float32),
        )

    @property
    def action_dim(self) -> int:
        return int(self.center.shape[-1])

    def normalize(self, raw: jax.Array) -> jax.Array:
        """Raw actions [..., A] -> normalized [..., A]."""
        return (raw - self.center) / self.half_range

    def unnormalize(self, normalized: jax.Array) -> jax.Array:
        """Normalized actions [..., A] -> raw [..., A] (exact inverse of normalize)."""
        return normalized * self.half_range + self.center


@struct.dataclass
class StateStandardizer:
    """Standardize observation vectors. Fields: mean [D], std [D] (std already floored)."""

    mean: jax.Array
    std: jax.Array

    @classmethod
    def fit(cls, states, min_std: float = 0.1) -> StateStandardizer:
        """Fit from raw states [N, D]; std is floored at ``min_std``."""
        if min_std <= 0:
            raise ValueError(f"min_std must be > 0, got {min_std}.")
        x = _as_2d_finite(states, "StateStandardizer.fit(states)")
        return cls(
            mean=jnp.asarray(x.mean(axis=0), jnp.float32),
            std=jnp.asarray(np.maximum(x.std(axis=0), min_std), jnp.float32),
        )

    @classmethod
    def identity(cls, dim: int) -> StateStandardizer:
        return cls(mean=jnp.zeros((dim,), jnp.float32), std=jnp.ones((dim,), jnp.float32))

    @property
    def dim(self) -> int:
        return int(self.mean.shape[-1])

    def normalize(self, x: jax.Array) -> jax.Array:
        """Raw [..., D] -> standardized [..., D]."""
        return (x - self.mean) / self.std

    def unnormalize(self, z: jax.Array) -> jax.Array:
        """Standardized [..., D] -> raw [..., D] (exact inverse of normalize)."""
        return z * self.std + self.mean


@struct.dataclass
class Normalizer:
    """A run's normalization: obs [D] standardizer and action [A] scaler (a pytree)."""

    obs: StateStandardizer
    action: ActionScaler

    @classmethod
    def fit(
        cls, actions, observations, action_scale: float, margin: float = 0.0, min_std: float = 0.1
    ) -> Normalizer:
        """From raw demo actions [N, A] and observations [M, D] (see ActionScaler.fit and
        StateStandardizer.fit)."""
        return cls(
            obs=StateStandardizer.fit(observations, min_std),
            action=ActionScaler.fit(actions, action_scale, margin=margin),
        )

    @classmethod
    def identity(cls, obs_dim: int, action_dim: int) -> Normalizer:
        """No standardization; actions already in [-1, 1]."""
        return cls(
            obs=StateStandardizer.identity(obs_dim),
            action=ActionScaler(
                center=jnp.zeros((action_dim,), jnp.float32),
                half_range=jnp.ones((action_dim,), jnp.float32),
            ),
        )

    def normalize_action(self, raw: jax.Array) -> jax.Array:
        """Raw actions [..., A] -> normalized and clipped to [-1, 1]."""
        return jnp.clip(self.action.normalize(raw), -1.0, 1.0)

    def unnormalize_action(self, normalized: jax.Array) -> jax.Array:
        """Normalized actions [..., A] -> raw [..., A]."""
        return self.action.unnormalize(normalized)
