"""Tuned RLPD (the ResFiT paper's baseline): residual TD3 with no base.

The learner is residual TD3 itself (``agents.residual_td3``) with a full-range output
(action_scale 1.0, default last-layer init); the recipe is ``sim.presets.with_method(cfg,
"rlpd")``. What makes it base-free is ``NoBase``: the "base action" it acts around is the
middle of the action range (0 in normalized units), everywhere, so the actor's output is
the whole action, the critic's input is the executed action, and demo transitions keep
their demo actions. The BC base stays the paired reference of every evaluation.
"""
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
    def for_normalizer(cls, normalizer: Normalizer) -> "NoBase":
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


__all__ = ["NoBase"]
