"""Functional env protocol (MuJoCo Playground style, off-policy ready) and wrappers.

    state = env.reset(key)           # one env; vmap for many (``VmapWrapper``)
    state = env.step(state, action)  # raw action [A]

``State`` fields: data (env internals), obs (pytree), reward [] (sparse 0/1), done [] (bool:
terminated or truncated), info (dict). Wrapped by ``AutoReset``, info also holds:
    success [] bool     the episode ended by success (reward 1 terminates it)
    truncated [] bool   the episode hit the time limit without success
    final_obs (pytree)  the TRUE observation produced by this step, before any reset
    steps [] int32      steps taken in the current episode (0 right after a reset)
    rng [2] uint32      key for the next reset (each episode is re-randomised)
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

PyTree = Any


@struct.dataclass
class State:
    data: PyTree
    obs: PyTree
    reward: jax.Array
    done: jax.Array
    info: dict


class Env(abc.ABC):
    """A single environment; subclasses implement reset/step, sizes and horizon."""

    @abc.abstractmethod
    def reset(self, key: jax.Array) -> State: ...

    @abc.abstractmethod
    def step(self, state: State, action: jax.Array) -> State:
        """Advance one control step. Must set reward (1.0 on success, else 0.0), done
        (= success) and info["success"]; the time limit is the wrapper's job."""

    @property
    @abc.abstractmethod
    def action_size(self) -> int: ...

    @property
    @abc.abstractmethod
    def horizon(self) -> int:
        """Episode length limit in control steps."""

    @property
    def action_low(self) -> jax.Array:
        return -jnp.ones((self.action_size,), jnp.float32)

    @property
    def action_high(self) -> jax.Array:
        return jnp.ones((self.action_size,), jnp.float32)

    @property
    def observation_spec(self) -> PyTree:
        """Per-env observation spec (pytree of ShapeDtypeStruct, no batch axis)."""
        return jax.eval_shape(self.reset, jax.random.PRNGKey(0)).obs

    @property
    def unwrapped(self) -> Env:
        return self


class Wrapper(Env):
    def __init__(self, env: Env):
        self.env = env

    def reset(self, key):
        return self.env.reset(key)

    def step(self, state, action):
        return self.env.step(state, action)

    @property
    def action_size(self):
        return self.env.action_size

    @property
    def horizon(self):
        return self.env.horizon

    @property
    def action_low(self):
        return self.env.action_low

    @property
    def action_high(self):
        return self.env.action_high

    @property
    def unwrapped(self):
        return self.env.unwrapped

    def __getattr__(self, name):
        return getattr(self.env, name)


_EPISODE_KEYS = ("success", "truncated", "diverged", "final_obs", "steps", "rng")


class TimeFeature(Wrapper):
    """Appends the elapsed fraction of the episode, t / horizon in [0, 1], to a flat
    observation [D] -> [D + 1]. Wrap the bare task (inside EpisodeWrapper / AutoReset).

    With a time limit and no time in the observation, a state near the limit looks like the
    same state early on, so a critic cannot learn that a slow episode is about to fail.
    With the feature, truncation is a true terminal of the time-aware MDP: pair it with
    ``bootstrap_truncation=False`` (``TrainConfig.time_feature`` does).
    """

    def reset(self, key):
        s = self.env.reset(key)
        return s.replace(
            data={"env": s.data, "t": jnp.zeros((), jnp.int32)},
            obs=self._append(s.obs, jnp.zeros((), jnp.int32)),
        )

    def step(self, state, action):
        s = self.env.step(state.replace(data=state.data["env"], obs=state.obs[..., :-1]), action)
        t = state.data["t"] + 1
        return s.replace(data={"env": s.data, "t": t}, obs=self._append(s.obs, t))

    def _append(self, obs, t):
        if not isinstance(obs, jax.Array) or obs.ndim != 1:
            raise ValueError(
                "TimeFeature needs a flat observation vector [D]; got "
                f"{jax.tree.map(jnp.shape, obs)}."
            )
        frac = (t / self.env.horizon).astype(obs.dtype)
        return jnp.concatenate([obs, frac[None]])

    @property
    def observation_spec(self):
        spec = self.env.observation_spec
        return jax.ShapeDtypeStruct((spec.shape[0] + 1,), spec.dtype)


def _all_finite(obs) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(obs)]
    return jnp.stack(leaves).all() if leaves else jnp.ones((), bool)


class EpisodeWrapper(Wrapper):
    """Time limit and episode bookkeeping, without reset: done = success or truncated.

    A step whose observation is not finite (the simulation diverged, e.g. an exploding
    contact) ends the episode as a failure: ``done`` and ``truncated`` and
    ``info["diverged"]`` are set, so loops reset the env and drop its transitions instead
    of feeding NaNs to a learner.
    """

    def reset(self, key):
        key, k_reset = jax.random.split(key)
        s = self.env.reset(k_reset)
        info = dict(
            s.info,
            success=jnp.zeros((), bool),
            truncated=jnp.zeros((), bool),
            diverged=jnp.zeros((), bool),
            final_obs=s.obs,
            steps=jnp.zeros((), jnp.int32),
            rng=key,
        )
        return s.replace(info=info, done=jnp.zeros((), bool), reward=jnp.zeros((), jnp.float32))

    def step(self, state, action):
        s = self.env.step(state, action)
        steps = state.info["steps"] + 1
        diverged = ~_all_finite(s.obs)
        success = s.info["success"].astype(bool) & ~diverged
        truncated = ((steps >= self.horizon) & ~success) | diverged
        info = dict(
            s.info,
            success=success,
            truncated=truncated,
            diverged=diverged,
            final_obs=s.obs,
            steps=steps,
            rng=state.info["rng"],
        )
        return s.replace(
            info=info,
            done=success | truncated,
            reward=jnp.where(diverged, 0.0, s.reward).astype(s.reward.dtype),
        )


class AutoReset(EpisodeWrapper):
    """EpisodeWrapper that re-randomises finished episodes on the same step.

    After a done step, obs/data belong to the NEW episode; info keeps success, truncated and
    final_obs of the one that ended, so off-policy learners see the true last observation.
    """

    def step(self, state, action):
        s = super().step(state, action)
        key, k_reset = jax.random.split(s.info["rng"])
        fresh = self.env.reset(k_reset)
        pick = lambda new, old: jnp.where(s.done, new, old)
        # Wrapper keys describe the episode that just ended; the task's own info entries
        # (if any) belong to the new episode after a reset.
        info = {
            k: (
                jax.tree.map(pick, fresh.info[k], v)
                if k in fresh.info and k not in _EPISODE_KEYS
                else v
            )
            for k, v in s.info.items()
        }
        info["steps"] = jnp.where(s.done, 0, s.info["steps"])
        info["rng"] = key
        return s.replace(
            data=jax.tree.map(pick, fresh.data, s.data),
            obs=jax.tree.map(pick, fresh.obs, s.obs),
            info=info,
        )


class VmapWrapper(Wrapper):
    """Batch of E envs: reset(key) -> State [E, ...]; step(State [E], action [E, A])."""

    def __init__(self, env: Env, num_envs: int):
        super().__init__(env)
        self.num_envs = int(num_envs)

    def reset(self, key):
        return jax.vmap(self.env.reset)(jax.random.split(key, self.num_envs))

    def step(self, state, action):
        if action.shape != (self.num_envs, self.action_size):
            raise ValueError(
                f"VmapWrapper.step: action has shape {action.shape}, expected "
                f"{(self.num_envs, self.action_size)} [E, A]."
            )
        return jax.vmap(self.env.step)(state, action)

    @property
    def observation_spec(self):
        return self.env.observation_spec


def auto_reset_envs(task: Env, num_envs: int) -> Env:
    """E auto-resetting envs of ``task`` with a leading [E] on state and obs: the task's own
    batch form when its class defines ``auto_reset_batch(num_envs)`` (a camera task renders
    all its envs in one call), else ``VmapWrapper(AutoReset(task), E)``."""
    batch = getattr(type(task), "auto_reset_batch", None)
    return batch(task, num_envs) if batch is not None else VmapWrapper(AutoReset(task), num_envs)
