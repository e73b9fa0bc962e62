"""The n-step writer: keeps the last n steps of every one of E env streams and emits finished
n-step ``Transition``s as a fixed-shape block [E, n] with a validity mask (jittable, no dynamic
shapes). A window that an episode end cuts short shrinks k; terminated episodes get
``nonterminal = 0``; truncated (time-limit) episodes bootstrap from the true last observation
unless ``bootstrap_truncation=False`` (the reference release's behaviour).

Transition fields (per sample): obs (pytree), base_action [A] (normalized base action at
obs), action [A] (executed normalized action), reward [] (n-step return
sum_i gamma^i r_{t+i}), discount [] (gamma^k), nonterminal [] (1.0 = bootstrap from next_obs),
next_obs (pytree, the observation k steps later), next_base_action [A]; optionally
mc_return [] (a Monte-Carlo lower bound on the value, -inf where unknown; the semi-MDP
writer's ``mc_bound``), None otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

PyTree = Any


@struct.dataclass
class Transition:
    obs: PyTree
    base_action: jax.Array
    action: jax.Array
    reward: jax.Array
    discount: jax.Array
    nonterminal: jax.Array
    next_obs: PyTree
    next_base_action: jax.Array
    mc_return: jax.Array | None = None


def transition_spec(obs_spec: PyTree, action_dim: int, mc_return: bool = False) -> Transition:
    """A Transition of ShapeDtypeStructs for one sample (no batch axis); ``mc_return``: with
    the Monte-Carlo bound field."""
    obs_spec = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), obs_spec)
    act = jax.ShapeDtypeStruct((action_dim,), jnp.float32)
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    return Transition(
        obs=obs_spec,
        base_action=act,
        action=act,
        reward=scalar,
        discount=scalar,
        nonterminal=scalar,
        next_obs=obs_spec,
        next_base_action=act,
        mc_return=scalar if mc_return else None,
    )


# ----------------------------------------------------------------------------- n-step writer
@struct.dataclass
class NStepState:
    """Per-stream window of the last n steps, oldest first, right-aligned.

    obs: pytree [E, n, ...]; base_action, action: [E, n, A]; reward: [E, n];
    count: [E] int32, how many of the window's slots belong to the current episode.
    """

    obs: PyTree
    base_action: jax.Array
    action: jax.Array
    reward: jax.Array
    count: jax.Array


@dataclasses.dataclass(frozen=True)
class NStepWriter:
    """n-step return writer for E parallel streams (each stream has its own window)."""

    n: int = 3
    gamma: float = 0.99
    bootstrap_truncation: bool = True

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"NStepWriter.n must be >= 1, got {self.n}.")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"NStepWriter.gamma must be in (0, 1], got {self.gamma}.")

    def init(self, num_envs: int, obs_spec: PyTree, action_dim: int) -> NStepState:
        n = self.n
        obs = jax.tree.map(lambda s: jnp.zeros((num_envs, n) + tuple(s.shape), s.dtype), obs_spec)
        return NStepState(
            obs=obs,
            base_action=jnp.zeros((num_envs, n, action_dim), jnp.float32),
            action=jnp.zeros((num_envs, n, action_dim), jnp.float32),
            reward=jnp.zeros((num_envs, n), jnp.float32),
            count=jnp.zeros((num_envs,), jnp.int32),
        )

    def step(
        self,
        state: NStepState,
        obs: PyTree,
        base_action: jax.Array,
        action: jax.Array,
        reward: jax.Array,
        next_obs: PyTree,
        next_base_action: jax.Array,
        terminated: jax.Array,
        truncated: jax.Array,
    ) -> tuple[NStepState, Transition, jax.Array]:
        """Push one env step for every stream; return (state, candidates [E, n], valid [E, n]).

        obs/next_obs: pytrees [E, ...] (next_obs must be the TRUE next observation, i.e. the
        pre-reset final observation when the episode ended); base_action, action,
        next_base_action: [E, A]; reward, terminated, truncated: [E].
        Slot j of the window, once emitted, covers k = n - j steps.
        """
        n = self.n
        num_envs = state.count.shape[0]
        if reward.shape != (num_envs,):
            raise ValueError(
                f"NStepWriter.step: reward must be [E={num_envs}], got {reward.shape}."
            )
        push = lambda win, x: jnp.concatenate([win[:, 1:], x[:, None].astype(win.dtype)], axis=1)
        new = NStepState(
            obs=jax.tree.map(push, state.obs, obs),
            base_action=push(state.base_action, base_action),
            action=push(state.action, action),
            reward=push(state.reward, reward),
            count=jnp.minimum(state.count + 1, n),
        )
        terminated = terminated.astype(bool)
        done = terminated | truncated.astype(bool)
        slot = jnp.arange(n)
        in_episode = slot[None, :] >= (n - new.count)[:, None]  # [E, n]
        k = n - slot  # [n]

        # returns[e, j] = sum_{i >= j} gamma^(i-j) r_i over the window (reverse discounted cumsum)
        def backward(carry, r):
            g = r + self.gamma * carry
            return g, g

        _, ret = jax.lax.scan(
            backward,
            jnp.zeros((num_envs,), jnp.float32),
            jnp.where(in_episode, new.reward, 0.0).T,
            reverse=True,
        )
        ret = ret.T  # [E, n]
        full = new.count == n
        valid = jnp.where(done[:, None], in_episode, (slot[None, :] == 0) & full[:, None])
        if self.bootstrap_truncation:
            nonterminal = jnp.where(done, ~terminated, True)
        else:
            nonterminal = ~done
        bcast = lambda x: jnp.broadcast_to(x[:, None], (num_envs, n) + x.shape[1:])
        cands = Transition(
            obs=new.obs,
            base_action=new.base_action,
            action=new.action,
            reward=ret,
            discount=jnp.broadcast_to(self.gamma ** k.astype(jnp.float32), (num_envs, n)),
            nonterminal=bcast(nonterminal.astype(jnp.float32)),
            next_obs=jax.tree.map(bcast, next_obs),
            next_base_action=bcast(next_base_action),
        )
        new = new.replace(count=jnp.where(done, 0, new.count))
        return new, cands, valid
