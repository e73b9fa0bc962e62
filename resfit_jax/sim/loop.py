"""Simulated collect + update loop: vectorized envs, frozen base, a learner, replay.

Everything per vector step runs inside one jitted ``lax.scan`` chunk:

    residual r -> ``residual_env_step`` (execute clip(a_b + r), step, query the base)
    -> n-step writer -> online replay
    -> ``updates_per_step`` learner updates on mixed [UTD, B/2] online + demo batches

UTD with E parallel envs: one vector step adds E env steps; each learner update does
``replay.utd`` critic steps, so the critic steps per env step are
``updates_per_step * utd / E`` (the paper's single env: 1 * 4 / 1 = 4).

The run's normalization is ``learner_state.normalizer`` (part of the loop state, so it is
in every checkpoint); the demo buffer state is an explicit argument of every chunk.

Lasting corrections (``offsets``, ``base_features.Offsets``): with absolute targets the next
action of an open-loop chunk erases a per-step correction. Here what the residual adds is
kept as an offset o (reset when the base starts a new chunk or an episode) and the learner
acts on the effective base clip(a_b + o), with o in its observation. "accumulate":
a_t = clip(a_b,t + o_t-1 + r_t), o_t = clip(a_t - a_b,t, +-bound); "hold": the residual acts
on the first step of each chunk only (exploration and warm-up noise too) and its correction
is held for the rest of the chunk.

Frame-once replay (``replay.frame_once`` with camera observations; ``resfit_jax.replay.frames``):
every env step writes each env's true next frame, plus the first frame of a new episode,
into the replay's frame ring; the n-step writer and the stored transitions carry frame ids
(``LoopState.frame_id`` is the id of each env's current frame) and sampling reads the
frames back. Each chunk reports ``stale_frames_max``, the stored transitions whose frames
were overwritten (the trainer raises when it is not 0).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from resfit_jax.base.features import BaseFeatures, Offsets, augment, learner_obs_spec
from resfit_jax.base.policy import BasePolicy
from resfit_jax.envs.core import Env, auto_reset_envs
from resfit_jax.learner import Learner
from resfit_jax.observations import cameras_of
from resfit_jax.replay import ReplayBuffer, ReplayConfig, ReplayState, transition_spec
from resfit_jax.replay.frames import FrameStore, camera_spec, id_spec, stale_count, with_ids
from resfit_jax.replay.updates import critic_warmup_updates, reduce_metrics, replay_updates
from resfit_jax.sim.step import check_action_sizes, initial_base_action, residual_env_step

PyTree = Any
STAT_KEYS = ("episodes", "successes", "diverged")  # per-chunk counts (summed over shards)


@struct.dataclass
class LoopState:
    env_state: PyTree
    base_state: PyTree
    base_action: jax.Array  # [E, A] normalized base action for env_state.obs
    writer_state: PyTree
    replay_state: ReplayState
    learner_state: PyTree
    key: jax.Array
    env_steps: jax.Array  # total env steps collected (all envs)
    train_env_steps: jax.Array  # of those, main-loop env steps
    explore_std: jax.Array  # [E] exploration std of each env's current episode
    offset: jax.Array  # [E, A] persistent offset (zeros without offsets)
    frame_id: jax.Array | None = None  # [E] int32: the frame-once id of each env's current
    # frame (None without frame-once storage)


@dataclasses.dataclass(frozen=True)
class SimLoop:
    """The jitted phases of residual training. ``offline_buffer`` is the demo buffer the
    mixer samples from (None: no demos); ``features`` (optional) appends the base's chunk
    phase / plan to the learner's observations (``base_features``)."""

    task: Env
    base: BasePolicy
    learner: Learner
    replay: ReplayConfig
    num_envs: int
    updates_per_step: int = 1
    warmup_noise: float = 0.2
    offline_buffer: ReplayBuffer | None = None
    features: BaseFeatures | None = None
    progressive_steps: int = 0  # residual on in each env step w.p. min(t / T, 1) (0: always)
    explore_std_range: tuple[float, float] | None = None  # per-episode std ~ U(lo, hi)
    offsets: Offsets | None = None  # lasting corrections (see the module docstring)
    mc_bound: bool = False  # semi-MDP: each decision's Monte-Carlo return-to-go as a lower
    # bound of its target (``replay.decisions.EpisodeDecisionWriter``)

    def __post_init__(self):
        check_action_sizes(
            self.task, self.base, self.learner, self.decision_size if self.slope else None
        )
        if self.mc_bound and not self.semi_mdp:
            raise ValueError("mc_bound needs semi-MDP decisions (residual.decision_steps > 1).")

    # ----------------------------------------------------------------------------- parts
    @property
    def env(self) -> Env:
        return auto_reset_envs(self.task, self.num_envs)

    @property
    def semi_mdp(self) -> bool:
        """One replay transition per residual decision (``Offsets.decisions``)."""
        return self.offsets is not None and self.offsets.semi_mdp

    @property
    def slope(self) -> bool:
        """Offset + slope decision windows (``Offsets.slope``): decisions of 2A entries."""
        return self.semi_mdp and self.offsets.slope

    @property
    def decision_size(self) -> int:
        """Entries of a stored action: the task's action size, or a decision's."""
        a = self.task.action_size
        return self.offsets.decision_size(a) if self.semi_mdp else a

    @property
    def writer(self):
        every = self.offsets.every if self.semi_mdp else 1
        return self.replay.online_writer(self.semi_mdp, self.mc_bound, self.task.horizon, every)

    @property
    def buffer(self) -> ReplayBuffer:
        return self.replay.buffer()

    @property
    def frame_once(self) -> bool:
        """Camera frames stored once in the replay's frame ring (``resfit_jax.replay.frames``)."""
        return bool(self.replay.frame_once and camera_spec(self.task.observation_spec))

    @property
    def frame_store(self) -> FrameStore:
        return self.replay.frame_store(self.num_envs)

    @property
    def learner_obs_spec(self):
        return learner_obs_spec(
            self.task.observation_spec, self.features, self.offsets, self.task.action_size
        )

    def _learner_obs(self, obs, base_state, offset, normalizer) -> PyTree:
        x = augment(self.features, obs, base_state, normalizer)
        return x if self.offsets is None else self.offsets.observe(x, offset, base_state)

    def learner_obs(self, ls: LoopState) -> PyTree:
        """The learner's observation [E, ...] of the current step."""
        return self._learner_obs(
            ls.env_state.obs, ls.base_state, ls.offset, ls.learner_state.normalizer
        )

    def effective_base_action(self, ls: LoopState) -> jax.Array:
        """[E, A]: the base action the learner corrects (with the persistent offset)."""
        if self.offsets is None:
            return ls.base_action
        return self.offsets.effective(ls.base_action, ls.offset)

    def decision_base_action(self, ls: LoopState) -> jax.Array:
        """[E, D]: the base action the learner's decision corrects (``effective_base_action``,
        in decision coordinates with offset + slope windows)."""
        if self.slope:
            return self.offsets.decision_base(jnp.clip(ls.base_action, -1.0, 1.0))
        return self.effective_base_action(ls)

    def held(self, ls: LoopState, r: jax.Array) -> jax.Array:
        """r [E, A] zeroed where the residual does not act (hold: all but chunk starts)."""
        if self.offsets is None or not self.offsets.hold:
            return r
        return r * self.offsets.acts(ls.base_state)

    def init(self, key: jax.Array, learner_state: PyTree) -> LoopState:
        k_env, k_loop = jax.random.split(key)
        env_state = self.env.reset(k_env)
        bstate, a_b = initial_base_action(
            self.base, learner_state.normalizer, env_state, self.num_envs
        )
        spec, frames, frame_id = self.learner_obs_spec, None, None
        if self.frame_once:  # the replay stores frame ids; frames go to the ring
            store = self.frame_store
            frames, frame_id = store.write(store.init(camera_spec(spec)), cameras_of(env_state.obs))
            spec = id_spec(spec)
        return LoopState(
            env_state=env_state,
            base_state=bstate,
            base_action=a_b,
            writer_state=self.writer.init(self.num_envs, spec, self.decision_size),
            replay_state=self.buffer.init(
                transition_spec(spec, self.decision_size, self.mc_bound), frames
            ),
            learner_state=learner_state,
            key=k_loop,
            env_steps=jnp.zeros((), jnp.int32),
            train_env_steps=jnp.zeros((), jnp.int32),
            offset=jnp.zeros((self.num_envs, self.decision_size), jnp.float32),
            explore_std=self._draw_std(jax.random.fold_in(k_loop, 7)),
            frame_id=frame_id,
        )

    def _draw_std(self, key: jax.Array) -> jax.Array:
        if self.explore_std_range is None:
            return jnp.zeros((self.num_envs,), jnp.float32)
        lo, hi = self.explore_std_range
        return jax.random.uniform(key, (self.num_envs,), minval=lo, maxval=hi)

    # ------------------------------------------------------------------------- one step
    def _env_step(self, ls: LoopState, residual: jax.Array) -> tuple[LoopState, dict]:
        nz = ls.learner_state.normalizer
        if self.slope:  # the decision's coefficients, held; each step its point on the ramp
            decision_base = self.decision_base_action(ls)
            decision = jnp.clip(decision_base + residual, -1.0, 1.0)
            decides = self.offsets.decides(ls.base_state)[:, None]
            coef = jnp.where(decides, decision - decision_base, ls.offset)
            step_residual = self.offsets.window_residual(coef, ls.base_state)
            out = residual_env_step(
                self.env, self.base, nz, ls.env_state, ls.base_state, ls.base_action, step_residual
            )
            stored_base, stored_action = decision_base, decision
            offset = self.offsets.reset(coef, out.next_base_state)
            next_base_action = self.offsets.decision_base(jnp.clip(out.next_base_action, -1.0, 1.0))
        else:
            out = residual_env_step(
                self.env,
                self.base,
                nz,
                ls.env_state,
                ls.base_state,
                self.effective_base_action(ls),
                residual,
            )
            stored_base, stored_action = out.prev_base_action, out.action
            next_base_action, offset = out.next_base_action, ls.offset
            if self.offsets is not None:
                kept = self.offsets.after_step(offset, ls.base_action, out.action, ls.base_state)
                offset = self.offsets.reset(kept, out.next_base_state)
                next_base_action = self.offsets.effective(out.next_base_action, offset)
        obs = self.learner_obs(ls)
        next_obs = self._learner_obs(out.next_obs, out.next_base_state, offset, nz)
        replay_state, frame_id = ls.replay_state, ls.frame_id
        if self.frame_once:  # each frame once: the true next one, then new episodes'
            store = self.frame_store
            frames, next_ids = store.write(replay_state.frames, cameras_of(out.next_obs))
            frames, reset_ids = store.write(frames, cameras_of(out.env_state.obs), out.done)
            obs, next_obs = with_ids(obs, ls.frame_id), with_ids(next_obs, next_ids)
            replay_state = replay_state.replace(frames=frames)
            frame_id = jnp.where(out.done, reset_ids, next_ids)
        flags = {}
        if self.semi_mdp:  # windows open at decisions and close before the next one
            flags = {
                "opens": self.offsets.decides(ls.base_state),
                "closes": self.offsets.decides(out.next_base_state),
            }
        writer_state, cands, valid = self.writer.step(
            ls.writer_state,
            obs,
            stored_base,
            stored_action,
            out.reward,
            next_obs,
            next_base_action,
            out.terminated,
            out.truncated,
            **flags,
        )
        offset = jnp.where(out.done[:, None], 0.0, offset)  # a new episode starts fresh
        valid = valid & ~out.diverged[:, None]  # never store a non-finite next observation
        ls = ls.replace(
            env_state=out.env_state,
            base_state=out.base_state,
            base_action=out.base_action,
            writer_state=writer_state,
            offset=offset,
            frame_id=frame_id,
            replay_state=self.buffer.add(replay_state, cands, valid),
            env_steps=ls.env_steps + self.num_envs,
        )
        stats = {
            "episodes": out.done.sum(),
            "successes": out.success.sum(),
            "diverged": out.diverged.sum(),
        }
        return ls, stats

    def _update(self, ls: LoopState, offline: ReplayState | None) -> tuple[LoopState, dict]:
        key, k_up = jax.random.split(ls.key)
        mixer = self.replay.mixer(self.offline_buffer if offline is not None else None)
        learner_state, metrics = replay_updates(
            self.learner,
            ls.learner_state,
            mixer,
            ls.replay_state,
            offline,
            k_up,
            self.updates_per_step,
        )
        return ls.replace(learner_state=learner_state, key=key), metrics

    def _frame_stats(self, ls: LoopState) -> dict:
        """{"stale_frames_max": stored transitions whose frames were overwritten} (frame-once)."""
        if not self.frame_once:
            return {}
        rs = ls.replay_state
        ids = next(iter(cameras_of(rs.data.obs).values()))
        return {"stale_frames_max": stale_count(rs.frames, ids, rs.size)}

    # --------------------------------------------------------------------------- chunks
    def warmup(self, ls: LoopState, num_steps: int) -> tuple[LoopState, dict]:
        """Collect num_steps vector steps with base + U(-warmup_noise, warmup_noise) residual
        (on the learner's correction entries, ``residual_dims``)."""

        def body(ls, _):
            key, k = jax.random.split(ls.key)
            r = jax.random.uniform(
                k,
                (self.num_envs, self.decision_size),
                minval=-self.warmup_noise,
                maxval=self.warmup_noise,
            )
            if hasattr(self.learner, "keep_residual"):  # residual_dims: only those entries
                r = self.learner.keep_residual(r)
            return self._env_step(ls.replace(key=key), self.held(ls, r))

        ls, stats = jax.lax.scan(body, ls, None, length=num_steps)
        return ls, jax.tree.map(jnp.sum, stats) | self._frame_stats(ls)

    def critic_warmup(
        self, ls: LoopState, offline: ReplayState | None, num_updates: int
    ) -> tuple[LoopState, dict]:
        """num_updates critic-only steps (no target noise), each on a fresh mixed batch
        sampled inside the scan (memory stays one batch, whatever num_updates is)."""
        key, k = jax.random.split(ls.key)
        mixer = self.replay.mixer(self.offline_buffer if offline is not None else None, steps=1)
        learner_state, metrics = critic_warmup_updates(
            self.learner, ls.learner_state, mixer, ls.replay_state, offline, k, num_updates
        )
        return ls.replace(learner_state=learner_state, key=key), metrics

    def train(
        self, ls: LoopState, offline: ReplayState | None, num_steps: int
    ) -> tuple[LoopState, dict]:
        """num_steps vector steps of act (exploration noise) + store + updates."""

        def body(ls, _):
            key, k, k_on, k_std = jax.random.split(ls.key, 4)
            std = None if self.explore_std_range is None else ls.explore_std[:, None]
            r, aux = self.learner.act(
                ls.learner_state, self.learner_obs(ls), self.decision_base_action(ls), k, std=std
            )
            if self.progressive_steps > 0:  # Policy Decorator's progressive schedule
                p = jnp.minimum(ls.train_env_steps / self.progressive_steps, 1.0)
                r = r * (jax.random.uniform(k_on, (self.num_envs, 1)) < p)
            ls, stats = self._env_step(ls.replace(key=key), self.held(ls, r))
            if self.explore_std_range is not None:  # a new std for each new episode
                ended = ls.env_state.info["steps"] == 0
                ls = ls.replace(explore_std=jnp.where(ended, self._draw_std(k_std), ls.explore_std))
            ls = ls.replace(train_env_steps=ls.train_env_steps + self.num_envs)
            ls, metrics = self._update(ls, offline)
            if "gate" in aux:  # value-gated residual: share executed
                metrics = metrics | {"gate_open": aux["gate"].mean()}
            return ls, (stats, metrics)

        ls, (stats, metrics) = jax.lax.scan(body, ls, None, length=num_steps)
        return ls, (jax.tree.map(jnp.sum, stats) | reduce_metrics(metrics) | self._frame_stats(ls))
