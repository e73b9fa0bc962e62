"""``NoBase``: the base Tuned RLPD acts around, the middle of the action range everywhere."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from resfit_jax.normalization import Normalizer


@dataclasses.dataclass(frozen=True, eq=False)
class NoBase:
    """A BasePolicy whose action is ``center`` [A] (raw units) at every step."""

    center: jax.Array

    @classmethod
    def for_normalizer(cls, normalizer: Normalizer) -> NoBase:
        """The base that acts at normalized 0 of ``normalizer``'s action range."""
        return cls(jnp.asarray(normalizer.action.center, jnp.float32))

    @property
    def action_dim(self) -> int:
        return int(self.center.shape[-1])

    def init_state(self, num_envs: int) -> jax.Array:
        return jnp.zeros((num_envs,), jnp.int32)

    def reset(self, state: jax.Array, done: jax.Array) -> jax.Array:
        return jnp.where(done, 0, state)

    def step(self, state: jax.Array, obs) -> tuple[jax.Array, jax.Array]:
        batch = jax.tree.leaves(obs)[0].shape[:-1]
        return jnp.broadcast_to(self.center, batch + self.center.shape), state + 1
