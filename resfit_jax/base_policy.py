"""BasePolicy protocol: the frozen BC policy as a black box with explicit, jittable state.

    bstate      = base.init_state(num_envs)
    bstate      = base.reset(bstate, done_mask)   # done_mask [E] bool: clear ended episodes
    a_b, bstate = base.step(bstate, obs)          # obs [E, ...] -> raw action [E, A]

Actions are in RAW env units; the training loop normalizes them with the task's
``ActionScaler``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp

PyTree = Any


class BasePolicy(Protocol):
    action_dim: int

    def init_state(self, num_envs: int) -> PyTree: ...

    def reset(self, state: PyTree, done: jax.Array) -> PyTree: ...

    def step(self, state: PyTree, obs: PyTree) -> tuple[jax.Array, PyTree]: ...


@dataclasses.dataclass(frozen=True)
class FunctionBase:
    """A stateless, jittable policy ``fn(obs [E, ...]) -> raw action [E, A]`` as a BasePolicy."""

    fn: Callable[[PyTree], jax.Array]
    action_dim: int

    def init_state(self, num_envs: int) -> PyTree:
        return jnp.zeros((num_envs,), jnp.int32)  # step counter per env (for inspection)

    def reset(self, state, done):
        return jnp.where(done, 0, state)

    def step(self, state, obs):
        a = self.fn(obs)
        if a.shape[-1] != self.action_dim:
            raise ValueError(f"FunctionBase: the policy returned actions of size {a.shape[-1]}, "
                             f"but action_dim is {self.action_dim}.")
        return a, state + 1
