"""The one episode evaluator: exactly N full episodes of any ``BasePolicy`` (a BC base, or
base + residual through ``ResidualPolicy``), on initial states fixed by a key.

    out = run_episodes(task, policy, episode_keys(key, N), record=False)     # jittable
    res = evaluate_policy(task, policy, N, key, num_envs=50)                # host, in rounds

``Evaluator`` (``make_evaluator``) is what every simulated trainer holds on top of it:
per-seed periodic and held-out starts and the matched base / base + residual evaluations.

Episode i starts from ``EpisodeWrapper(task).reset(fold_in(key, i))``: the same key gives
the same initial states for every policy (matched, paired comparisons), whatever the number
of episodes run in parallel. Each episode runs to its own end (success or time limit) and
is then frozen, so every episode counts once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resfit_jax.base.policy import BasePolicy
from resfit_jax.base.residual import ResidualPolicy
from resfit_jax.envs.core import Env, EpisodeWrapper
from resfit_jax.run.stats import wilson_interval

PyTree = Any


def episode_keys(key: jax.Array, num_episodes: int, start: int = 0) -> jax.Array:
    """Keys [N] of episodes start .. start + N - 1 of ``key``."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(start, start + num_episodes))


def scan_episodes(
    task: Env,
    policy: BasePolicy,
    keys: jax.Array,
    record: Callable[[Any, jax.Array, Any, jax.Array], Any] | None = None,
    policy_state: bool = False,
) -> tuple[Any, ...]:
    """Jittable: one full episode per key [N], all in parallel, each frozen once it ends.
    Returns the final env state [N] and, with ``record(state, action, next_state, done)``,
    its outputs stacked over the horizon [T, N, ...] (``done``: the episode had already
    ended before this step); with ``policy_state`` also the policy's final state (it keeps
    stepping after an episode ends; only the env state is frozen)."""
    env = EpisodeWrapper(task)
    n = keys.shape[0]
    s = jax.vmap(env.reset)(keys)
    pstate = policy.init_state(n)

    def body(carry, _):
        s, pstate, done = carry
        a, pstate = policy.step(pstate, s.obs)
        s2 = jax.vmap(env.step)(s, a)
        s2 = jax.tree.map(
            lambda new, old: jnp.where(
                jnp.reshape(done, done.shape + (1,) * (new.ndim - 1)), old, new
            ),
            s2,
            s,
        )
        return (s2, pstate, done | s2.done), (None if record is None else record(s, a, s2, done))

    (s, pstate, _), out = jax.lax.scan(body, (s, pstate, jnp.zeros((n,), bool)), None, env.horizon)
    return (s, out, pstate) if policy_state else (s, out)


def record_episodes(task: Env, policy: BasePolicy, keys: jax.Array) -> dict[str, jax.Array]:
    """Jittable: one full episode per key [N], recorded: obs [T, N, ...] (acted on), action
    [T, N, A] (raw, executed), next_obs [T, N, ...], alive [T, N] (step t is part of the
    episode), success [N] and length [N] (steps to the episode's end: its first success or
    the time limit)."""
    s, (obs, action, next_obs, alive) = scan_episodes(
        task, policy, keys, lambda s, a, s2, done: (s.obs, a, s2.obs, ~done)
    )
    return {
        "obs": obs,
        "action": action,
        "next_obs": next_obs,
        "alive": alive,
        "success": s.info["success"],
        "length": s.info["steps"],
    }


def run_episodes(
    task: Env, policy: BasePolicy, keys: jax.Array, record: bool = False
) -> dict[str, jax.Array]:
    """Jittable: one full episode per key [N], all in parallel.

    Returns success [N] bool, length [N] int32 (steps to the episode's end), success_rate,
    mean_success_length (NaN without a success); with ``record`` also obs [T, N, ...], the
    observation after each step (row ``length - 1`` ends an episode; later rows repeat it).
    """
    s, obs = scan_episodes(task, policy, keys, (lambda s, a, s2, done: s2.obs) if record else None)
    success, length = s.info["success"], s.info["steps"]
    n_succ = success.sum()
    mean_len = jnp.where(
        n_succ > 0, jnp.where(success, length, 0).sum() / jnp.maximum(n_succ, 1), jnp.nan
    )
    out = {
        "success": success,
        "length": length,
        "success_rate": success.mean(),
        "mean_success_length": mean_len,
    }
    return (out | {"obs": obs}) if record else out


def make_episode_runner(task: Env, make_policy: Callable[[Any], BasePolicy], num_envs: int):
    """Jitted ``run(params, keys [E]) -> (success [E] bool, steps [E] int32)``.

    ``make_policy(params)`` builds the policy inside the trace, so evaluating new parameters
    (e.g. during BC training) reuses the compiled function.
    """
    del num_envs  # the batch comes from the keys

    def run(params, keys):
        out = run_episodes(task, make_policy(params), keys)
        return out["success"], out["length"]

    return jax.jit(run)


def evaluate_policy(
    task: Env,
    policy: BasePolicy | None,
    num_episodes: int,
    key: jax.Array,
    num_envs: int = 50,
    runner: Any = None,
    params: Any = None,
) -> dict:
    """Success rate, Wilson 95% CI and mean steps of successful episodes over exactly
    ``num_episodes`` episodes, run ``num_envs`` at a time. Pass ``runner`` (from
    make_episode_runner) and ``params`` to reuse a compile; then ``policy`` may be None."""
    num_envs = min(num_envs, num_episodes)
    runner = runner or make_episode_runner(task, lambda _: policy, num_envs)
    succ, steps = [], []
    for r in range(math.ceil(num_episodes / num_envs)):
        s, t = jax.device_get(runner(params, episode_keys(key, num_envs, r * num_envs)))
        succ.append(s)
        steps.append(t)
    succ = np.concatenate(succ)[:num_episodes].astype(bool)
    steps = np.concatenate(steps)[:num_episodes]
    n, k = len(succ), int(succ.sum())
    lo, hi = wilson_interval(k, n)
    return {
        "episodes": n,
        "successes": k,
        "success_rate": k / n,
        "ci95": (lo, hi),
        "mean_steps_success": float(steps[succ].mean()) if k else float("nan"),
        "success": succ,
        "steps": steps,
    }


EVAL_SALT = 0xE7A1
FINAL_SALT = 0xF17A1


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """The matched evaluations of one run, vmapped over its S seeds (``make_evaluator``):

        evaluate(learner_state [S], keys [S])   base + residual, eval_episodes per seed
        evaluate_base(normalizer, keys [S])     the reference base alone, on the same starts
        evaluate_final / evaluate_base_final    the same on the held-out count of episodes

    Each returns ``run_episodes``' dict with a leading seed axis. ``eval_keys()`` are the
    periodic evaluations' starts, ``final_keys()`` held-out ones that no selection sees."""

    seeds: tuple[int, ...]
    evaluate: Callable
    evaluate_base: Callable
    evaluate_final: Callable
    evaluate_base_final: Callable

    def keys(self) -> jax.Array:
        """One typed key per seed, the root of everything the seed draws."""
        return jnp.stack([jax.random.key(s) for s in self.seeds])

    def eval_keys(self) -> jax.Array:
        """Per seed: the starts of every periodic evaluation."""
        return jax.vmap(lambda k: jax.random.fold_in(k, EVAL_SALT))(self.keys())

    def final_keys(self) -> jax.Array:
        """Per seed: held-out starts, used once, by the final evaluation."""
        return jax.vmap(lambda k: jax.random.fold_in(k, FINAL_SALT))(self.keys())


def make_evaluator(
    task: Env,
    seeds: Sequence[int],
    eval_episodes: int,
    final_episodes: int,
    base: BasePolicy,
    learner: Any = None,
    features: Any = None,
    offsets: Any = None,
    reference: BasePolicy | None = None,
    policy_of: Callable[[Any], BasePolicy] | None = None,
) -> Evaluator:
    """``base``: what the learner acts with; ``reference``: the base the paired comparison
    runs alone (default ``base``; the BC base for a base-free learner);
    ``policy_of(learner_state)``: the evaluated policy (default base + residual through
    ``ResidualPolicy`` with the learner's ``features`` and ``offsets``)."""
    reference = base if reference is None else reference
    if policy_of is None:
        policy_of = lambda lstate: ResidualPolicy(
            base, lstate.normalizer, learner, lstate, features, offsets
        )

    def evaluators(n):
        residual = jax.jit(
            jax.vmap(
                lambda lstate, key: run_episodes(task, policy_of(lstate), episode_keys(key, n))
            )
        )
        base_only = jax.jit(
            jax.vmap(
                lambda nz, key: run_episodes(
                    task, ResidualPolicy(reference, nz), episode_keys(key, n)
                ),
                in_axes=(None, 0),
            )
        )
        return residual, base_only

    periodic = evaluators(eval_episodes)
    final = periodic if final_episodes == eval_episodes else evaluators(final_episodes)
    return Evaluator(tuple(int(s) for s in seeds), *periodic, *final)
