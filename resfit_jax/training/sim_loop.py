"""Simulated collect + update loop: vectorized envs, frozen base, residual learner, replay.

Everything per vector step runs inside one jitted ``lax.scan`` chunk (``SimLoop.run``):

    a_b (normalized) -> residual r -> clip(a_b + r) -> unnormalize -> env.step (auto-reset)
    -> base.step on the true next obs -> n-step writer -> online replay
    -> ``updates_per_step`` learner updates on symmetric [UTD, B/2] online + offline batches

UTD with E parallel envs: one vector step adds E env steps; each learner update does
``config.utd`` critic steps, so the critic steps per env step are
``updates_per_step * utd / E`` (the paper's single env: 1 * 4 / 1 = 4).

The base is queried once on each step's true next observation (the pre-reset final
observation for ended episodes, whose base action the n-step target needs when bootstrapping
through truncation); envs whose episode ended have their base state reset and are queried
again on the first observation of the new episode.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from resfit_jax.base_policy import BasePolicy
from resfit_jax.envs.core import AutoReset, Env, EpisodeWrapper, VmapWrapper
from resfit_jax.normalization import ActionScaler
from resfit_jax.replay import NStepWriter, ReplayBuffer, ReplayState, sample_symmetric, transition_spec
from resfit_jax.residual_td3 import LearnerState, ResidualTD3

PyTree = Any


def _select(mask: jax.Array, a: PyTree, b: PyTree) -> PyTree:
    """where(mask [E], a, b) over pytrees with leading axis E."""
    def pick(x, y):
        m = mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
        return jnp.where(m, x, y)
    return jax.tree.map(pick, a, b)


def replay_updates(learner: ResidualTD3, learner_state: LearnerState, buffer: ReplayBuffer,
                   online: ReplayState, offline_buffer: ReplayBuffer | None,
                   offline: ReplayState | None, key: jax.Array, num_updates: int
                   ) -> tuple[LearnerState, dict]:
    """Jittable: ``num_updates`` learner updates (each ``utd`` critic steps and the delayed
    actor step) on fresh symmetric online + offline batches; metrics are means.

    The one update path of both loops: the sim loop calls it inside its scan, the robot loop
    jits it on its own (``training.robot_learner``).
    """
    cfg = learner.config
    frac = cfg.offline_fraction if offline is not None else 0.0

    def one(ls, k):
        on, off = sample_symmetric(k, buffer, online, offline_buffer, offline, cfg.utd,
                                   cfg.batch_size, frac)
        return learner.update(ls, on, off)

    learner_state, metrics = jax.lax.scan(one, learner_state, jax.random.split(key, num_updates))
    return learner_state, jax.tree.map(jnp.mean, metrics)


def critic_warmup_updates(learner: ResidualTD3, learner_state: LearnerState,
                          buffer: ReplayBuffer, online: ReplayState,
                          offline_buffer: ReplayBuffer | None, offline: ReplayState | None,
                          key: jax.Array, num_updates: int) -> tuple[LearnerState, dict]:
    """Jittable: ``num_updates`` critic-only steps, each on its own fresh symmetric batch."""
    cfg = learner.config
    frac = cfg.offline_fraction if offline is not None else 0.0

    def one(ls, k):
        on, off = sample_symmetric(k, buffer, online, offline_buffer, offline, 1,
                                   cfg.batch_size, frac)
        return learner.critic_warmup(ls, on, off)

    learner_state, metrics = jax.lax.scan(one, learner_state, jax.random.split(key, num_updates))
    return learner_state, jax.tree.map(jnp.mean, metrics)


@struct.dataclass
class LoopState:
    env_state: PyTree
    base_state: PyTree
    base_action: jax.Array          # [E, A] normalized base action for env_state.obs
    writer_state: PyTree
    replay_state: ReplayState
    learner_state: LearnerState
    key: jax.Array
    env_steps: jax.Array            # total env steps collected (all envs)


@dataclasses.dataclass(frozen=True)
class SimLoop:
    task: Env
    base: BasePolicy
    learner: ResidualTD3
    scaler: ActionScaler
    num_envs: int
    replay_capacity: int = 200_000
    updates_per_step: int = 1
    warmup_noise: float = 0.2

    def __post_init__(self):
        if self.base.action_dim != self.task.action_size:
            raise ValueError(f"The base policy's action size ({self.base.action_dim}) does not "
                             f"match the task's ({self.task.action_size}).")
        if self.learner.action_dim != self.task.action_size:
            raise ValueError(f"The learner's action_dim ({self.learner.action_dim}) does not "
                             f"match the task's ({self.task.action_size}).")

    # ----------------------------------------------------------------------------- parts
    @property
    def env(self) -> VmapWrapper:
        return VmapWrapper(AutoReset(self.task), self.num_envs)

    @property
    def writer(self) -> NStepWriter:
        c = self.learner.config
        return NStepWriter(c.n_step, c.gamma, c.bootstrap_truncation)

    @property
    def buffer(self) -> ReplayBuffer:
        return ReplayBuffer(self.replay_capacity)

    def normalize_base(self, raw: jax.Array) -> jax.Array:
        return jnp.clip(self.scaler.normalize(raw), -1.0, 1.0)

    def init(self, key: jax.Array, learner_state: LearnerState) -> LoopState:
        k_env, k_loop = jax.random.split(key)
        env_state = self.env.reset(k_env)
        bstate = self.base.init_state(self.num_envs)
        a_b, bstate = self.base.step(bstate, env_state.obs)
        spec = self.task.observation_spec
        return LoopState(
            env_state=env_state, base_state=bstate, base_action=self.normalize_base(a_b),
            writer_state=self.writer.init(self.num_envs, spec, self.task.action_size),
            replay_state=self.buffer.init(transition_spec(spec, self.task.action_size)),
            learner_state=learner_state, key=k_loop, env_steps=jnp.zeros((), jnp.int32))

    # ------------------------------------------------------------------------- one step
    def _env_step(self, ls: LoopState, residual: jax.Array) -> tuple[LoopState, dict]:
        action = jnp.clip(ls.base_action + residual, -1.0, 1.0)
        s = self.env.step(ls.env_state, self.scaler.unnormalize(action))
        done, final_obs = s.done, s.info["final_obs"]
        truncated = s.info["truncated"]
        a_next_raw, b_next = self.base.step(ls.base_state, final_obs)
        a_next = self.normalize_base(a_next_raw)
        a_new_raw, b_new = self.base.step(self.base.reset(b_next, done), s.obs)
        diverged = s.info["diverged"]
        writer_state, cands, valid = self.writer.step(
            ls.writer_state, ls.env_state.obs, ls.base_action, action, s.reward, final_obs,
            a_next, done & ~truncated, truncated)
        valid = valid & ~diverged[:, None]      # never store a non-finite next observation
        ls = ls.replace(
            env_state=s,
            base_state=_select(done, b_new, b_next),
            base_action=_select(done, self.normalize_base(a_new_raw), a_next),
            writer_state=writer_state,
            replay_state=self.buffer.add(ls.replay_state, cands, valid),
            env_steps=ls.env_steps + self.num_envs)
        stats = {"episodes": done.sum(), "successes": (done & s.info["success"]).sum(),
                 "diverged": diverged.sum()}
        return ls, stats

    def _update(self, ls: LoopState, offline: ReplayState | None) -> tuple[LoopState, dict]:
        key, k_up = jax.random.split(ls.key)
        learner_state, metrics = replay_updates(
            self.learner, ls.learner_state, self.buffer, ls.replay_state,
            self.buffer if offline is not None else None, offline, k_up, self.updates_per_step)
        return ls.replace(learner_state=learner_state, key=key), metrics

    # --------------------------------------------------------------------------- chunks
    def warmup(self, ls: LoopState, num_steps: int) -> tuple[LoopState, dict]:
        """Collect num_steps vector steps with base + U(-warmup_noise, warmup_noise) residual."""
        def body(ls, _):
            key, k = jax.random.split(ls.key)
            r = jax.random.uniform(k, ls.base_action.shape, minval=-self.warmup_noise,
                                   maxval=self.warmup_noise)
            return self._env_step(ls.replace(key=key), r)
        ls, stats = jax.lax.scan(body, ls, None, length=num_steps)
        return ls, jax.tree.map(jnp.sum, stats)

    def critic_warmup(self, ls: LoopState, offline: ReplayState | None, num_updates: int
                      ) -> tuple[LoopState, dict]:
        """num_updates critic-only steps (no target noise), each on a fresh symmetric batch
        sampled inside the scan (memory stays one batch, whatever num_updates is)."""
        key, k = jax.random.split(ls.key)
        learner_state, metrics = critic_warmup_updates(
            self.learner, ls.learner_state, self.buffer, ls.replay_state,
            self.buffer if offline is not None else None, offline, k, num_updates)
        return ls.replace(learner_state=learner_state, key=key), metrics

    def train(self, ls: LoopState, offline: ReplayState | None, num_steps: int
              ) -> tuple[LoopState, dict]:
        """num_steps vector steps of act (exploration noise) + store + updates."""
        def body(ls, _):
            key, k = jax.random.split(ls.key)
            r, _ = self.learner.act(ls.learner_state, ls.env_state.obs, ls.base_action, k)
            ls, stats = self._env_step(ls.replace(key=key), r)
            ls, metrics = self._update(ls, offline)
            return ls, (stats, metrics)
        ls, (stats, metrics) = jax.lax.scan(body, ls, None, length=num_steps)
        return ls, jax.tree.map(jnp.sum, stats) | jax.tree.map(jnp.mean, metrics)

    # ---------------------------------------------------------------------------- eval
    def evaluate(self, learner_state: LearnerState | None, key: jax.Array, num_episodes: int,
                 record: bool = False) -> dict[str, jax.Array]:
        """Exactly num_episodes full episodes (one per env, run to the end).

        learner_state None evaluates the base alone; the same key gives the same initial
        conditions, so base and base + residual are compared on matched episodes. The
        residual is deterministic (its mean). Returns success [N] bool, length [N] int32,
        success_rate, mean_success_length (NaN if no success); with ``record`` also obs
        [T, N, D], the observation after each step (row ``length - 1`` ends an episode).
        """
        env = VmapWrapper(EpisodeWrapper(self.task), num_episodes)
        s = env.reset(key)
        bstate = self.base.init_state(num_episodes)
        zeros = jnp.zeros((num_episodes,), bool)

        def body(carry, _):
            s, bstate, finished, success, length = carry
            a_raw, bstate = self.base.step(bstate, s.obs)
            a_b = self.normalize_base(a_raw)
            if learner_state is None:
                action = a_b
            else:
                _, aux = self.learner.act(learner_state, s.obs, a_b, key, deterministic=True)
                action = aux["action"]
            s = env.step(s, self.scaler.unnormalize(action))
            ended = s.done & ~finished
            success = success | (ended & s.info["success"])
            length = jnp.where(ended, s.info["steps"], length)
            return (s, bstate, finished | s.done, success, length), (s.obs if record else None)

        init = (s, bstate, zeros, zeros, jnp.zeros((num_episodes,), jnp.int32))
        (_, _, _, success, length), obs = jax.lax.scan(body, init, None,
                                                       length=self.task.horizon)
        n_succ = success.sum()
        mean_len = jnp.where(n_succ > 0, jnp.where(success, length, 0).sum()
                             / jnp.maximum(n_succ, 1), jnp.nan)
        out = {"success": success, "length": length, "success_rate": success.mean(),
               "mean_success_length": mean_len}
        return (out | {"obs": obs}) if record else out
