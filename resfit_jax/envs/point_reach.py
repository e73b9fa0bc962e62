"""PointReach: a tiny pure-JAX continuous-control task for fast learner tests.

A point in the plane must reach a random goal within ``tolerance`` before the horizon.
obs = [pos (2), goal (2)]; action [2] in [-1, 1] moves the point by ``step_size * action``;
reward 1 (and the episode ends) when |pos - goal| < tolerance.

``expert_action`` is a saturated proportional controller that always succeeds.
``biased_base_action`` adds a constant, goal-dependent bias, so its controller settles
outside the tolerance; it succeeds on about 45% of episodes (approach paths that cross the
goal region). The correction is within reach of a residual with action_scale 0.1.
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
        return State(
            data={"pos": pos, "goal": goal},
            obs=jnp.concatenate([pos, goal]),
            reward=jnp.zeros((), jnp.float32),
            done=jnp.zeros((), bool),
            info={"success": jnp.zeros((), bool)},
        )

    def step(self, state, action):
        a = jnp.clip(action, -1.0, 1.0)
        pos = state.data["pos"] + self.step_size * a
        goal = state.data["goal"]
        success = jnp.linalg.norm(pos - goal) < self.tolerance
        return State(
            data={"pos": pos, "goal": goal},
            obs=jnp.concatenate([pos, goal]),
            reward=success.astype(jnp.float32),
            done=success,
            info={"success": success},
        )

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


def biased_base_action(
    obs: jax.Array, gain: float = 2.0, bias: float = 0.14, bias_threshold: float = -1.0
) -> jax.Array:
    """Raw action [..., 2] of the expert plus a goal-dependent bias.

    Where goal_x > bias_threshold (everywhere by default) a bias of size ``bias`` in the
    direction pi * goal_y is added, so the controller settles bias / gain = 0.07 from the goal,
    outside the tolerance (0.05); it still succeeds when its approach path happens to cross
    the goal region (about 45% of episodes). Cancelling the bias (0.14 raw, of which 0.04 is
    enough) is within reach of a residual with action_scale 0.1 (0.11 raw).
    """
    goal = obs[..., 2:4]
    theta = jnp.pi * goal[..., 1]
    direction = jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=-1)
    active = (goal[..., 0] > bias_threshold)[..., None]
    return jnp.clip(expert_action(obs, gain) + jnp.where(active, bias * direction, 0.0), -1.0, 1.0)


class PointReachExpert:
    """Scripted-expert interface (init / act / reset) around ``expert_action``; the style's
    ``action_noise`` adds Gaussian noise (other style knobs do not apply here)."""

    def __init__(self, env: PointReach, style=None):
        self.noise = 0.0 if style is None else float(style.action_noise) * 10.0

    def init(self, key: jax.Array) -> jax.Array:
        return key

    def reset(self, key: jax.Array, done: jax.Array) -> jax.Array:
        return key

    def act(self, key: jax.Array, env_state: State) -> tuple[jax.Array, jax.Array]:
        key, k = jax.random.split(key)
        a = expert_action(env_state.obs) + self.noise * jax.random.normal(k, (2,))
        return jnp.clip(a, -1.0, 1.0), key
