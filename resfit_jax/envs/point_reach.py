"""PointReach: a tiny pure-JAX continuous-control task for fast learner tests.

A point in the plane must reach a random goal within ``tolerance`` before the horizon.
obs = [pos (2), goal (2)]; action [2] in [-1, 1] moves the point by ``step_size * action``;
reward 1 (and the episode ends) when |pos - goal| < tolerance.

``expert_action`` is a saturated proportional controller that always succeeds.
``biased_base_action`` undershoots whenever goal_x > ``bias_threshold`` (60% of goals by
default, so the base succeeds on about 40%): it stalls short of the goal, outside the
tolerance. The push needed (> 0.04 raw) is within what a residual of action_scale 0.1 can
give (0.11 raw), so a residual learner can fix every episode.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from resfit_jax.envs.core import Env, State


@dataclasses.dataclass(frozen=True)
class PointReach(Env):
    episode_length: int = 50
    step_size: float = 0.1
    tolerance: float = 0.05
    start_range: float = 0.3
    goal_range: float = 1.0

    def reset(self, key):
        k_pos, k_goal = jax.random.split(key)
        pos = jax.random.uniform(k_pos, (2,), minval=-self.start_range, maxval=self.start_range)
        goal = jax.random.uniform(k_goal, (2,), minval=-self.goal_range, maxval=self.goal_range)
        return State(data={"pos": pos, "goal": goal}, obs=jnp.concatenate([pos, goal]),
                     reward=jnp.zeros((), jnp.float32), done=jnp.zeros((), bool),
                     info={"success": jnp.zeros((), bool)})

    def step(self, state, action):
        a = jnp.clip(action, -1.0, 1.0)
        pos = state.data["pos"] + self.step_size * a
        goal = state.data["goal"]
        success = jnp.linalg.norm(pos - goal) < self.tolerance
        return State(data={"pos": pos, "goal": goal}, obs=jnp.concatenate([pos, goal]),
                     reward=success.astype(jnp.float32), done=success,
                     info={"success": success})

    @property
    def action_size(self):
        return 2

    @property
    def horizon(self):
        return self.episode_length


def expert_action(obs: jax.Array, gain: float = 2.0) -> jax.Array:
    """Raw action [..., 2] of a saturated P-controller toward the goal."""
    pos, goal = obs[..., :2], obs[..., 2:4]
    return jnp.clip(gain * (goal - pos), -1.0, 1.0)


def biased_base_action(obs: jax.Array, gain: float = 2.0, bias: float = 0.14,
                       bias_threshold: float = -0.2) -> jax.Array:
    """Raw action [..., 2] of an undershooting controller (fails where the bias is active).

    Where goal_x > bias_threshold it subtracts ``bias`` along the goal direction, so it
    approaches radially and stalls ``bias / gain`` short of the goal (0.07 > tolerance 0.05
    by default), like a BC policy that stops just before the target.
    """
    pos, goal = obs[..., :2], obs[..., 2:4]
    err = goal - pos
    unit = err / jnp.maximum(jnp.linalg.norm(err, axis=-1, keepdims=True), 1e-6)
    active = (goal[..., 0] > bias_threshold)[..., None]
    return jnp.clip(gain * err - jnp.where(active, bias * unit, 0.0), -1.0, 1.0)
