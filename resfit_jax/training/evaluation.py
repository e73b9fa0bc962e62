"""Evaluate a BasePolicy on a task: exactly N full episodes, in rounds of E parallel envs.

Each env plays one episode per round and is frozen once it ends, so every episode counts
once and runs to its own end (success or time limit). The round function is jitted once.
Episode i uses the key ``fold_in(key, i)``: the same key gives the same initial conditions
for every policy (matched seeds).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from resfit_jax.base_policy import BasePolicy
from resfit_jax.envs.core import Env, EpisodeWrapper


def make_episode_runner(task: Env, make_base: Callable[[Any], BasePolicy], num_envs: int):
    """Jitted ``run(params, keys [E, 2]) -> (success [E] bool, steps [E] int32)``.

    ``make_base(params)`` builds the policy inside the trace, so evaluating new parameters
    (e.g. during BC training) reuses the compiled function.
    """
    env = EpisodeWrapper(task)

    def run(params, keys):
        base = make_base(params)
        s = jax.vmap(env.reset)(keys)
        bstate = base.init_state(num_envs)

        def body(carry, _):
            s, bstate, done = carry
            a, bstate = base.step(bstate, s.obs)
            s2 = jax.vmap(env.step)(s, a)
            s2 = jax.tree.map(lambda n, o: jnp.where(
                jnp.reshape(done, done.shape + (1,) * (n.ndim - 1)), o, n), s2, s)
            return (s2, bstate, done | s2.done), None

        (s, _, _), _ = jax.lax.scan(body, (s, bstate, jnp.zeros((num_envs,), bool)), None,
                                    env.horizon)
        return s.info["success"], s.info["steps"]

    return jax.jit(run)


def evaluate_base(task: Env, base: BasePolicy | None, num_episodes: int, key: jax.Array,
                  num_envs: int = 50, runner: Any = None, params: Any = None) -> dict:
    """Success rate, Wilson 95% CI and mean steps of successful episodes over exactly
    ``num_episodes`` episodes. Pass ``runner`` (from make_episode_runner, built for
    ``num_envs``) and ``params`` to reuse a compile; then ``base`` may be None."""
    num_envs = min(num_envs, num_episodes)
    runner = runner or make_episode_runner(task, lambda _: base, num_envs)
    succ, steps = [], []
    for r in range(math.ceil(num_episodes / num_envs)):
        ids = jnp.arange(r * num_envs, (r + 1) * num_envs)
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)
        s, t = jax.device_get(runner(params, keys))
        succ.append(s)
        steps.append(t)
    succ = np.concatenate(succ)[:num_episodes].astype(bool)
    steps = np.concatenate(steps)[:num_episodes]
    n, k = len(succ), int(succ.sum())
    lo, hi = wilson_interval(k, n)
    return {"episodes": n, "successes": k, "success_rate": k / n, "ci95": (lo, hi),
            "mean_steps_success": float(steps[succ].mean()) if k else float("nan"),
            "success": succ, "steps": steps}


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))
