"""Demo generation: roll a scripted expert in vectorised MJX envs and cut RLDS episodes.

``collect_episodes`` runs batches of ``num_envs`` episodes in one jitted ``lax.scan`` per
batch (each env plays exactly one episode; finished envs are frozen until the batch ends), so
the rollout function compiles once. Episode i uses the key ``fold_in(PRNGKey(seed), i)``
for its initial state and the expert's style draws, so any episode can be replayed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resfit_jax.data.rlds import Episode
from resfit_jax.envs.core import Env, EpisodeWrapper


@dataclasses.dataclass
class DemoStats:
    attempted: int
    succeeded: int
    mean_steps_success: float

    @property
    def success_rate(self) -> float:
        return self.succeeded / max(self.attempted, 1)


def make_rollout(
    task: Env,
    policy_init: Callable[[jax.Array], Any],
    policy_act: Callable[[Any, Any], tuple[jax.Array, Any]],
):
    """Jitted ``rollout(keys [E, 2]) -> (obs [H+1, E, ...] (the task's obs pytree), act
    [H, E, A], steps [E], success [E])`` of one episode per env with a per-env policy (e.g. a
    scripted expert)."""
    env = EpisodeWrapper(task)

    def one(key):
        k_env, k_pol = jax.random.split(key)
        s0 = env.reset(k_env)
        p0 = policy_init(k_pol)

        def body(carry, _):
            s, p, done = carry
            a, p2 = policy_act(p, s)
            s2 = env.step(s, a)
            keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(done, o, n), new, old)
            s2, p2 = keep(s2, s), keep(p2, p)
            return (s2, p2, done | s2.done), (s2.obs, a)

        (s, _, _), (obs, act) = jax.lax.scan(body, (s0, p0, jnp.zeros((), bool)), None, env.horizon)
        obs = jax.tree.map(lambda x0, x: jnp.concatenate([x0[None], x], axis=0), s0.obs, obs)
        return obs, act, s.info["steps"], s.info["success"]

    def rollout(keys):
        obs, act, steps, success = jax.vmap(one)(keys)
        return (
            jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), obs),
            jnp.swapaxes(act, 0, 1),
            steps,
            success,
        )

    return jax.jit(rollout)


def collect_episodes(
    rollout,
    num_episodes: int,
    num_envs: int,
    seed: int = 0,
    successful_only: bool = True,
    max_attempts: int | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> tuple[list[Episode], DemoStats]:
    """Collect ``num_episodes`` episodes (only successful ones if ``successful_only``).

    ``rollout`` comes from ``make_rollout``. Stops after ``max_attempts`` episodes
    (default 4 x num_episodes) and raises if too few succeeded, naming the success rate.
    ``progress(kept, attempted, succeeded)`` is called after each batch.
    """
    max_attempts = max_attempts or 4 * num_episodes
    base = jax.random.PRNGKey(seed)
    episodes: list[Episode] = []
    attempted = succeeded = 0
    steps_ok: list[int] = []
    while len(episodes) < num_episodes and attempted < max_attempts:
        ids = np.arange(attempted, attempted + num_envs)
        keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(ids))
        obs, act, steps, success = jax.device_get(rollout(keys))
        for e in range(num_envs):
            attempted += 1
            t = int(steps[e])
            ok = bool(success[e])
            succeeded += ok
            if ok:
                steps_ok.append(t)
            if (ok or not successful_only) and len(episodes) < num_episodes:
                frames = jax.tree.map(lambda x: x[: t + 1, e], obs)
                episodes.append(
                    Episode.from_rollout(
                        frames, act[:t, e], ok, episode_id=len(episodes), seed=int(ids[e])
                    )
                )
        if progress is not None:
            progress(len(episodes), attempted, succeeded)
    stats = DemoStats(attempted, succeeded, float(np.mean(steps_ok)) if steps_ok else float("nan"))
    if len(episodes) < num_episodes:
        raise RuntimeError(
            f"collect_episodes: only {len(episodes)} of {num_episodes} episodes kept after "
            f"{attempted} attempts (expert success {stats.success_rate:.1%}); lower the demo "
            "noise or raise max_attempts."
        )
    return episodes, stats


def make_demos(
    task_name: str,
    episodes: int,
    noise: float,
    out: str,
    seed: int = 0,
    num_envs: int = 32,
    keep_failures: bool = False,
    verbose: bool = True,
):
    """Roll the expert, write RLDS, return (dataset_dir, DemoStats)."""
    import math
    import time

    if episodes < 1 or num_envs < 1:
        raise ValueError(
            f"make_demos: episodes and num_envs must be >= 1 (got {episodes}, {num_envs})."
        )
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"make_demos: noise must be a finite number >= 0 (got {noise}).")

    import tqdm

    from resfit_jax import envs
    from resfit_jax.data.rlds import write_episodes

    task = envs.make(task_name)
    style = envs.ExpertStyle.human(noise) if noise > 0 else envs.ExpertStyle()
    expert = envs.make_expert(task_name, task, style)
    rollout = make_rollout(task, expert.init, expert.act)
    bar = tqdm.tqdm(total=episodes, desc=f"{task_name} demos", disable=not verbose)

    def progress(kept, attempted, succeeded):
        bar.n = kept
        bar.set_postfix(expert_success=f"{succeeded / attempted:.1%}", attempted=attempted)
        bar.refresh()

    t0 = time.time()
    eps, stats = collect_episodes(
        rollout,
        episodes,
        min(num_envs, episodes),
        seed=seed,
        successful_only=not keep_failures,
        progress=progress,
    )
    bar.close()
    path = write_episodes(
        out,
        eps,
        metadata={
            "task": task_name,
            "noise": noise,
            "seed": seed,
            "expert_success": stats.success_rate,
            "attempted": stats.attempted,
            "style": repr(style),
        },
    )
    if verbose:
        print(
            f"{task_name}: expert success {stats.succeeded}/{stats.attempted} "
            f"({stats.success_rate:.1%}), mean steps of successes "
            f"{stats.mean_steps_success:.1f}; wrote {len(eps)} episodes to {path} "
            f"in {time.time() - t0:.0f} s"
        )
    return path, stats
