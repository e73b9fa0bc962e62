"""PixelPointReach: PointReach seen through a top-down camera, the cheapest pixel task.

The goal is only in the image: obs = {"state": pos [2], "top": uint8 [R, R, 3]}, where the
camera sees the plane [-extent, extent]^2 from above, the point as a red blob and the goal
as a green blob (Gaussian, ``blob`` world units wide). A policy must read the goal from the
pixels to succeed, as a manipulation policy must read an object's pose from its cameras.
The image is drawn in pure JAX (no renderer), so the task runs and compiles as fast as
PointReach, on any backend, under jit / vmap / scan.

Dynamics, reward and time limit are PointReach's; the default tolerance (0.1) is wider, as
a pixel is 2 * extent / R = 0.075 world units at R = 32.
``PixelPointReachExpert`` is the scripted demonstrator: it reads the true goal from the
env's state (privileged), not from the image.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from resfit_jax.envs.core import State
from resfit_jax.envs.point_reach import PointReach, PointReachExpert

CAMERA = "top"


@dataclasses.dataclass(frozen=True)
class PixelPointReach(PointReach):
    tolerance: float = 0.1
    goal_range: float = 0.8
    resolution: int = 32
    extent: float = 1.2  # the image covers [-extent, extent]^2
    blob: float = 0.06  # blob std (world units)

    def __post_init__(self):
        if self.resolution < 8:
            raise ValueError(f"PixelPointReach: resolution must be >= 8 (got {self.resolution}).")
        if self.goal_range >= self.extent:
            raise ValueError(
                f"PixelPointReach: goal_range {self.goal_range} must be inside "
                f"the image (extent {self.extent})."
            )

    def render(self, pos: jax.Array, goal: jax.Array) -> jax.Array:
        """uint8 [R, R, 3] top view (row 0 at y = +extent): red = point, green = goal."""
        r = self.resolution
        c = (jnp.arange(r) + 0.5) / r * 2 * self.extent - self.extent  # pixel centers
        x, y = c[None, :], c[::-1, None]
        blob = lambda p: jnp.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2) / (2 * self.blob**2))
        img = jnp.stack([blob(pos), blob(goal), jnp.zeros((r, r))], axis=-1)
        return jnp.round(jnp.clip(img, 0.0, 1.0) * 255.0).astype(jnp.uint8)

    def _observe(self, s: State) -> State:
        pos, goal = s.data["pos"], s.data["goal"]
        return s.replace(obs={"state": pos, CAMERA: self.render(pos, goal)})

    def reset(self, key):
        return self._observe(super().reset(key))

    def step(self, state, action):
        return self._observe(super().step(state, action))


class PixelPointReachExpert(PointReachExpert):
    """PointReach's expert (P-controller, Gaussian action noise) on the true goal, read
    from the env state: the image is not parsed."""

    def act(self, key: jax.Array, env_state: State) -> tuple[jax.Array, jax.Array]:
        obs = jnp.concatenate([env_state.data["pos"], env_state.data["goal"]])
        return super().act(key, env_state.replace(obs=obs))
