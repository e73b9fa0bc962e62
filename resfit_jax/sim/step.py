"""One vectorized env step of base + residual, as a pure function both training loops call
(the off-policy loop stores its output in replay; an on-policy loop can keep a rollout).

    out = residual_env_step(env, base, normalizer, env_state, base_state, base_action, residual)

    action = clip(a_b + r, -1, 1) -> unnormalize -> env.step (auto-reset)
    -> base.step on the TRUE next observation (the pre-reset final observation for ended
       episodes, whose base action an n-step target needs when bootstrapping through
       truncation) -> for ended episodes: base state reset, base queried again on the first
       observation of the new episode.

Shapes: env_state and base_state have a leading [E]; base_action and residual are [E, A],
normalized; the env must be ``VmapWrapper(AutoReset(task), E)`` (or give the same info).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from resfit_jax.base.policy import BasePolicy
from resfit_jax.envs.core import Env
from resfit_jax.normalization import Normalizer

PyTree = Any


def select(mask: jax.Array, a: PyTree, b: PyTree) -> PyTree:
    """where(mask [E], a, b) over pytrees with leading axis E."""

    def pick(x, y):
        m = mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
        return jnp.where(m, x, y)

    return jax.tree.map(pick, a, b)


@struct.dataclass
class ResidualStep:
    """The result of one step for E envs.

    env_state, base_state: after the step (new episodes already started where one ended);
    base_action [E, A]: the normalized base action for ``env_state.obs``;
    next_base_state: the base state after querying ``next_obs`` (before any reset).
    The step itself: obs (the observation acted on), prev_base_action, action (executed,
    normalized) [E, A], reward [E], next_obs (true next observation), next_base_action
    [E, A] (the base at next_obs, before any reset), terminated / truncated / diverged /
    done / success [E] bool.
    """

    env_state: PyTree
    base_state: PyTree
    base_action: jax.Array
    next_base_state: PyTree
    obs: PyTree
    prev_base_action: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: PyTree
    next_base_action: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    diverged: jax.Array
    done: jax.Array
    success: jax.Array


def residual_env_step(
    env: Env,
    base: BasePolicy,
    normalizer: Normalizer,
    env_state: PyTree,
    base_state: PyTree,
    base_action: jax.Array,
    residual: jax.Array,
) -> ResidualStep:
    action = jnp.clip(base_action + residual, -1.0, 1.0)
    s = env.step(env_state, normalizer.unnormalize_action(action))
    done, final_obs, truncated = s.done, s.info["final_obs"], s.info["truncated"]
    a_next_raw, b_next = base.step(base_state, final_obs)
    a_next = normalizer.normalize_action(a_next_raw)
    a_new_raw, b_new = base.step(base.reset(b_next, done), s.obs)
    return ResidualStep(
        env_state=s,
        base_state=select(done, b_new, b_next),
        base_action=select(done, normalizer.normalize_action(a_new_raw), a_next),
        next_base_state=b_next,
        obs=env_state.obs,
        prev_base_action=base_action,
        action=action,
        reward=s.reward,
        next_obs=final_obs,
        next_base_action=a_next,
        terminated=done & ~truncated,
        truncated=truncated,
        diverged=s.info["diverged"],
        done=done,
        success=done & s.info["success"],
    )


def check_action_sizes(
    task: Env, base: BasePolicy, learner: Any = None, decision_size: int | None = None
) -> None:
    """A clear error when the base's or the learner's action size is not the task's (the
    learner's: ``decision_size`` where one decision holds more, e.g. offset + slope)."""
    if base.action_dim != task.action_size:
        raise ValueError(
            f"The base policy's action size ({base.action_dim}) does not match the "
            f"task's ({task.action_size})."
        )
    want = task.action_size if decision_size is None else decision_size
    if learner is not None and learner.action_dim != want:
        what = "task's" if decision_size is None else "decision's (offset + slope: 2 x the task's)"
        raise ValueError(
            f"The learner's action_dim ({learner.action_dim}) does not match the {what} ({want})."
        )


def initial_base_action(
    base: BasePolicy, normalizer: Normalizer, env_state: PyTree, num_envs: int
) -> tuple[PyTree, jax.Array]:
    """(base_state, normalized base action [E, A]) for the first observation of E envs."""
    bstate = base.init_state(num_envs)
    a_b, bstate = base.step(bstate, env_state.obs)
    return bstate, normalizer.normalize_action(a_b)
