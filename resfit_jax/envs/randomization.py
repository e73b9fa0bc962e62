"""Domain randomisation: a batch of MJX models with randomised friction and object masses.

    env = DomainRandomization(AutoReset(task), num_envs=E, key=key,
                              config=RandomizationConfig(friction_scale=(0.7, 1.3)))
    state = env.reset(key); state = env.step(state, action [E, A])

It replaces ``VmapWrapper``: env slot e always simulates with model e (like MuJoCo
Playground), and ``resample(key)`` draws a new batch between training chunks. Object pose
ranges are task constructor arguments (e.g. ``envs.make("PickPlace", cube_x_range=...)``)
and are re-drawn at every reset.

Contacts in the project's scenes come from explicit <pair> elements, so friction is scaled
on ``pair_friction`` (sliding components); masses (and inertias, by the same factor) are
scaled on the bodies of free objects.
The per-env wrappers inside (EpisodeWrapper, AutoReset) run unchanged: the randomised model
is swapped into the task for the duration of each traced call (``MjxTask.using_model``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from resfit_jax.envs._mjx import mjx
from resfit_jax.envs.core import Env, Wrapper


@dataclasses.dataclass(frozen=True)
class RandomizationConfig:
    friction_scale: tuple[float, float] = (0.7, 1.3)  # x sliding friction of contact pairs
    mass_scale: tuple[float, float] = (0.7, 1.5)  # x mass of free (object) bodies


def randomize_model(
    model: mjx.Model, key: jax.Array, config: RandomizationConfig, free_bodies: np.ndarray
) -> mjx.Model:
    """One randomised copy of ``model`` (pair_friction, body_mass, body_inertia)."""
    k_f, k_m = jax.random.split(key)
    f = jax.random.uniform(
        k_f, (), minval=config.friction_scale[0], maxval=config.friction_scale[1]
    )
    pair_friction = jnp.asarray(model.pair_friction).at[:, :2].multiply(f)
    m = jax.random.uniform(
        k_m, (len(free_bodies),), minval=config.mass_scale[0], maxval=config.mass_scale[1]
    )
    body_mass = jnp.asarray(model.body_mass).at[free_bodies].multiply(m)
    body_inertia = jnp.asarray(model.body_inertia).at[free_bodies].multiply(m[:, None])
    return model.tree_replace(
        {"pair_friction": pair_friction, "body_mass": body_mass, "body_inertia": body_inertia}
    )


class DomainRandomization(Wrapper):
    """Batch of E envs, env e simulated with randomised model e (see module docstring)."""

    FIELDS = ("pair_friction", "body_mass", "body_inertia")

    def __init__(
        self,
        env: Env,
        num_envs: int,
        key: jax.Array,
        config: RandomizationConfig = RandomizationConfig(),
    ):
        super().__init__(env)
        task = env.unwrapped
        if not hasattr(task, "using_model"):
            raise TypeError(f"DomainRandomization needs an MJX task; got {type(task).__name__}.")
        self.num_envs, self.config = int(num_envs), config
        m = task.mj_model
        self._free = np.array([m.jnt_bodyid[j] for j in range(m.njnt) if m.jnt_type[j] == 0])
        self._in_axes = jax.tree.map(lambda _: None, task.mjx_model).tree_replace(
            {k: 0 for k in self.FIELDS}
        )
        self.resample(key)

    def resample(self, key: jax.Array) -> None:
        """Draw a new batch of models (host side; call between jitted chunks). Only the
        randomised fields get the leading [E] axis; the rest stay shared."""
        task = self.env.unwrapped
        batched = jax.vmap(lambda k: randomize_model(task.mjx_model, k, self.config, self._free))(
            jax.random.split(key, self.num_envs)
        )
        self.models = task.mjx_model.tree_replace({k: getattr(batched, k) for k in self.FIELDS})

    def reset(self, key):
        task = self.env.unwrapped

        def one(model, k):
            with task.using_model(model):
                return self.env.reset(k)

        return jax.vmap(one, in_axes=(self._in_axes, 0))(
            self.models, jax.random.split(key, self.num_envs)
        )

    def step(self, state, action):
        if action.shape != (self.num_envs, self.action_size):
            raise ValueError(
                f"DomainRandomization.step: action has shape {action.shape}, "
                f"expected {(self.num_envs, self.action_size)} [E, A]."
            )
        task = self.env.unwrapped

        def one(model, s, a):
            with task.using_model(model):
                return self.env.step(s, a)

        return jax.vmap(one, in_axes=(self._in_axes, 0, 0))(self.models, state, action)

    @property
    def observation_spec(self):
        return self.env.observation_spec
