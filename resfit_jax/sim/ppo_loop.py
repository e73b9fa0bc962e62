"""Simulated on-policy loop of residual PPO: vectorized envs, the frozen base, one jitted
PPO iteration = a rollout of T vector steps + the update.

    loop = PPOLoop(task, base, ppo, num_envs=256, rollout_length=120)
    ls = loop.init(key, ppo.init(k, normalizer))
    ls, metrics = loop.iteration(ls)          # jit / vmap over seeds

Each step goes through the same ``residual_env_step`` as ResFiT (execute clip(a_b + r),
auto-reset, query the base on the true next observation), and the learner sees the same
inputs (``base_features``: the base's chunk phase / plan when configured). Envs continue
across iterations (a rollout that ends mid-episode bootstraps from V of its last next
observation); episodes end on success or at the time limit (``bootstrap_truncation``
decides whether a time-out is done).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from resfit_jax.agents.residual_ppo import ResidualPPO, Rollout
from resfit_jax.base.features import BaseFeatures, augment
from resfit_jax.base.policy import BasePolicy
from resfit_jax.envs.core import Env, auto_reset_envs
from resfit_jax.sim.step import check_action_sizes, initial_base_action, residual_env_step

PyTree = Any


@struct.dataclass
class PPOLoopState:
    env_state: PyTree
    base_state: PyTree
    base_action: jax.Array  # [E, A] normalized base action for env_state.obs
    learner_state: PyTree
    key: jax.Array
    env_steps: jax.Array  # env steps collected (all envs)


@dataclasses.dataclass(frozen=True)
class PPOLoop:
    task: Env
    base: BasePolicy
    learner: ResidualPPO
    num_envs: int
    rollout_length: int
    features: BaseFeatures | None = None

    def __post_init__(self):
        check_action_sizes(self.task, self.base, self.learner)

    @property
    def env(self) -> Env:
        return auto_reset_envs(self.task, self.num_envs)

    @property
    def learner_obs_spec(self):
        spec = self.task.observation_spec
        return spec if self.features is None else self.features.spec(spec)

    @property
    def env_steps_per_iteration(self) -> int:
        return self.num_envs * self.rollout_length

    def init(self, key: jax.Array, learner_state: PyTree) -> PPOLoopState:
        k_env, k_loop = jax.random.split(key)
        env_state = self.env.reset(k_env)
        bstate, a_b = initial_base_action(
            self.base, learner_state.normalizer, env_state, self.num_envs
        )
        return PPOLoopState(
            env_state=env_state,
            base_state=bstate,
            base_action=a_b,
            learner_state=learner_state,
            key=k_loop,
            env_steps=jnp.zeros((), jnp.int32),
        )

    def rollout(self, ls: PPOLoopState) -> tuple[PPOLoopState, Rollout, dict]:
        """rollout_length vector steps with the current Gaussian residual."""
        lstate, nz = ls.learner_state, ls.learner_state.normalizer

        def body(ls, _):
            key, k = jax.random.split(ls.key)
            obs = augment(self.features, ls.env_state.obs, ls.base_state, nz)
            r, aux = self.learner.act(lstate, obs, ls.base_action, k)
            out = residual_env_step(
                self.env, self.base, nz, ls.env_state, ls.base_state, ls.base_action, r
            )
            next_obs = augment(self.features, out.next_obs, out.next_base_state, nz)
            next_value = self.learner.value(lstate, next_obs, out.next_base_action)
            # a diverged step's next observation is not finite: end it with no value
            next_value = jnp.where(out.diverged, 0.0, next_value)
            step = Rollout(
                obs=obs,
                base_action=ls.base_action,
                sample=aux["sample"],
                log_prob=aux["log_prob"],
                value=aux["value"],
                reward=out.reward,
                next_value=next_value,
                terminated=out.terminated | out.diverged,
                truncated=out.truncated & ~out.diverged,
                done=out.done,
            )
            stats = {
                "episodes": out.done.sum(),
                "successes": out.success.sum(),
                "diverged": out.diverged.sum(),
                "residual_abs_mean": jnp.abs(r).mean(),
            }
            ls = ls.replace(
                env_state=out.env_state,
                base_state=out.base_state,
                base_action=out.base_action,
                key=key,
                env_steps=ls.env_steps + self.num_envs,
            )
            return ls, (step, stats)

        ls, (rollout, stats) = jax.lax.scan(body, ls, None, length=self.rollout_length)
        stats = {k: (v.mean() if k == "residual_abs_mean" else v.sum()) for k, v in stats.items()}
        return ls, rollout, stats

    def iteration(self, ls: PPOLoopState) -> tuple[PPOLoopState, dict]:
        """One PPO iteration: rollout, then the update on it. Returns rollout stats and the
        update's metrics together."""
        ls, rollout, stats = self.rollout(ls)
        learner_state, metrics = self.learner.update(ls.learner_state, rollout)
        return ls.replace(learner_state=learner_state), stats | metrics
