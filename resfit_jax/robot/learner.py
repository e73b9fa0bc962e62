"""The learner side of the robot loop: the same jitted learner updates as in simulation,
fed by journaled robot episodes, in a sync or an async mode.

- ``RobotLearner`` owns the learner state (with the run's normalizer), the online replay
  (device ring buffer), the optional offline demo buffer and an RNG key. ``add_episode``
  inserts one finished episode's n-step transitions (``demo_buffer.add_episodes``, the path
  the demo buffer uses); ``update(k)`` runs k learner updates through
  ``updates.replay_updates``, the function the simulated loop runs inside its scan.
- ``AsyncLearner`` runs ``update`` continuously in a thread. The actor pulls the latest
  ``(version, LearnerState)`` snapshot at step boundaries; a snapshot is one immutable
  pytree swapped under a lock, so the actor never sees a half-updated state. Finished
  episodes reach the thread through a queue and are inserted between updates, so only the
  thread touches the replay.
- ``PolicyRunner`` is the actor: base (fresh chunk queue every episode) + residual, jitted
  for a batch of one.

Semi-MDP decisions (``features`` and ``offsets`` from ``base.features.decision_inputs``):
the actor asks the residual only at the decision frames 0, k, 2k, ... of an episode (its
observation gains the base's plan) and holds the correction, noise included, until the
next one; ``add_episode`` stores one transition per decision, the plan recomputed by
running the deterministic base over the episode's observations from a fresh queue.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resfit_jax.agents.checks import raise_if_nonfinite
from resfit_jax.base.features import BaseFeatures, Offsets, augment, offset_update
from resfit_jax.base.policy import BasePolicy
from resfit_jax.learner import Learner
from resfit_jax.normalization import Normalizer
from resfit_jax.replay import ReplayBuffer, ReplayConfig, ReplayState, transition_spec
from resfit_jax.replay.demos import add_episodes, learner_frames, pad_episodes
from resfit_jax.replay.updates import critic_warmup_updates, replay_updates
from resfit_jax.robot.loop import EpisodeRecord

PyTree = Any


class RobotLearner:
    """Learner state + replay for robot episodes (see the module docstring).

    max_episode_steps fixes the padded episode length, so inserting compiles once.
    updates_per_call: learner updates per ``update`` call (one jitted scan). ``normalizer``
    is the run's statistics; it lives in ``state`` (and so in every checkpoint) from here on.
    """

    def __init__(
        self,
        learner: Learner,
        replay: ReplayConfig,
        normalizer: Normalizer,
        max_episode_steps: int,
        key: jax.Array,
        updates_per_call: int = 1,
        offline: tuple[ReplayBuffer, ReplayState] | None = None,
        failure_is_terminal: bool = True,
        min_replay: int = 1,
        base: BasePolicy | None = None,
        features: BaseFeatures | None = None,
        offsets: Offsets | None = None,
        mc_bound: bool = False,
    ):
        self.learner, self.replay_config = learner, replay
        self.max_episode_steps = int(max_episode_steps)
        self.failure_is_terminal = failure_is_terminal
        self.min_replay = max(int(min_replay), 1)
        self.buffer = replay.buffer()
        every = offsets.every if offsets is not None and offsets.semi_mdp else 1
        if every > 1 and base is None:
            raise ValueError("RobotLearner: semi-MDP decisions need the base (to see its plan).")
        if mc_bound and every == 1:
            raise ValueError("RobotLearner: mc_bound needs semi-MDP decisions (offsets).")
        self.writer = replay.online_writer(every > 1, mc_bound, self.max_episode_steps, every)
        self.offline_buffer, self.offline = offline if offline is not None else (None, None)
        k_init, self.key = jax.random.split(key)
        self.state = learner.init(k_init, normalizer)
        spec = (
            learner.obs_spec
            if getattr(learner, "pixels", False)  # camera frames too
            else jax.ShapeDtypeStruct((learner.obs_dim,), jnp.float32)
        )
        self.replay = self.buffer.init(transition_spec(spec, learner.action_dim, mc_bound))
        self.updates = 0
        mixer = replay.mixer(self.offline_buffer)
        warmup_mixer = replay.mixer(self.offline_buffer, steps=1)
        self._update = jax.jit(
            lambda s, r, k, o: replay_updates(learner, s, mixer, r, o, k, updates_per_call)
        )
        self._critic = jax.jit(
            lambda s, r, k, o, n: critic_warmup_updates(learner, s, warmup_mixer, r, o, k, n),
            static_argnums=4,
        )

        def add(r, p, b, nz):
            if every > 1:  # the learner's frames: the observation and the base's plan
                p = dict(p, observation=learner_frames(p, base, nz, features, offsets)[0])
            return add_episodes(r, p, b, nz, self.writer, self.buffer, every=every)

        self._add = jax.jit(add)
        self.updates_per_call = int(updates_per_call)

    @property
    def normalizer(self) -> Normalizer:
        return self.state.normalizer

    # -- data -------------------------------------------------------------------------------
    def add_episode(self, episode, base_action: np.ndarray) -> int:
        """Insert one RLDS ``Episode`` (T <= max_episode_steps) with its raw base actions
        [T+1, A]; returns its env steps (semi-MDP: it adds one transition per decision)."""
        t = episode.num_actions
        if t > self.max_episode_steps:
            raise ValueError(
                f"RobotLearner.add_episode: {t} steps exceed max_episode_steps "
                f"{self.max_episode_steps}."
            )
        if base_action.shape != (t + 1, self.learner.action_dim):
            raise ValueError(
                f"RobotLearner.add_episode: base_action has shape "
                f"{base_action.shape}, expected ({t + 1}, {self.learner.action_dim})."
            )
        padded = pad_episodes([episode], max_len=self.max_episode_steps)
        b = np.zeros((1, self.max_episode_steps + 1, base_action.shape[1]), np.float32)
        b[0, : t + 1] = base_action
        b[0, t + 1 :] = base_action[-1]
        self.replay = self._add(
            self.replay, jax.tree.map(jnp.asarray, padded), jnp.asarray(b), self.state.normalizer
        )
        return t

    def add_record(self, record: EpisodeRecord) -> int:
        return self.add_episode(record.to_episode(self.failure_is_terminal), record.base_action)

    @property
    def replay_size(self) -> int:
        return int(self.replay.size)

    def ready(self) -> bool:
        return self.replay_size >= self.min_replay

    # -- learning ---------------------------------------------------------------------------
    def update(self) -> dict:
        """``updates_per_call`` learner updates; metrics as floats. No-op if not ready."""
        if not self.ready():
            return {}
        self.key, k = jax.random.split(self.key)
        state, metrics = self._update(self.state, self.replay, k, self.offline)
        raise_if_nonfinite(
            metrics.pop("nonfinite_mask"), "robot learner update (state kept from before it)"
        )
        self.state = state
        self.updates += self.updates_per_call
        return {k: float(v) for k, v in metrics.items()}

    def compile_update(self) -> None:
        """Compile ``update`` (one call whose result is discarded; no state changes)."""
        jax.block_until_ready(self._update(self.state, self.replay, self.key, self.offline))

    def critic_warmup(self, num_updates: int, chunk: int = 500) -> dict:
        """num_updates critic-only steps (in jitted chunks)."""
        metrics: dict = {}
        done = 0
        while done < num_updates and self.ready():
            n = min(chunk, num_updates - done)
            self.key, k = jax.random.split(self.key)
            state, m = self._critic(self.state, self.replay, k, self.offline, n)
            raise_if_nonfinite(
                m.pop("nonfinite_mask"), "robot critic warm-up (state kept from before it)"
            )
            self.state = state
            metrics = {k: float(v) for k, v in m.items()}
            done += n
        return metrics


class PolicyRunner:
    """The actor for one robot: base + residual, jitted for a batch of one.

    ``params`` returns the LearnerState to act with (a fixed state, or the async learner's
    latest snapshot); ``mode`` is "train" (exploration noise), "eval" (deterministic
    residual), "base" (residual 0) or "warmup" (uniform residual noise of ``warmup_noise``).
    With semi-MDP ``offsets`` (and the base's plan as ``features``) the residual is drawn at
    decision frames only and held in between (``act`` then returns the held correction).
    """

    def __init__(
        self,
        base: BasePolicy,
        learner: Learner,
        params: Callable[[], PyTree],
        key: jax.Array,
        warmup_noise: float = 0.0,
        features: BaseFeatures | None = None,
        offsets: Offsets | None = None,
    ):
        if base.action_dim != learner.action_dim:
            raise ValueError(
                f"The base policy's action size ({base.action_dim}) does not match "
                f"the learner's ({learner.action_dim})."
            )
        self.base, self.learner = base, learner
        self.params, self.key, self.warmup_noise = params, key, float(warmup_noise)
        self.mode = "train"
        self._base_step = jax.jit(base.step)
        self._act = jax.jit(learner.act, static_argnames="deterministic")
        self._norm = jax.jit(lambda nz, a: nz.normalize_action(a))
        self._unnorm = jax.jit(lambda nz, a: nz.unnormalize_action(a))
        self._bstate = None
        self.offsets = offsets if offsets is not None and offsets.semi_mdp else None
        self._learner_obs = jax.jit(lambda o, b, nz: augment(features, o, b, nz))
        self._offset = None  # the held correction [A] (semi-MDP)
        self.steps = 0  # control steps of this episode so far

    def begin(self) -> None:
        self._bstate = self.base.init_state(1)  # a fresh chunk queue every episode
        self._offset = None
        self.steps = 0

    def base_action(self, obs: np.ndarray) -> np.ndarray:
        a, self._bstate = self._base_step(self._bstate, _batch_of_one(obs))
        return np.asarray(a[0], np.float32)

    def act(self, obs: np.ndarray, base_action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(residual [A] normalized, action [A] raw = unnormalize(clip(a_b + r))); with
        semi-MDP decisions r is the held correction clip(a_b + r) - a_b of the last one."""
        state = self.params()
        self.steps += 1
        a_b = self._norm(state.normalizer, jnp.asarray(base_action))
        # decisions at steps 0, k, 2k, ... of the episode (a fresh chunk queue at step 0)
        held = self.offsets is not None and (self.steps - 1) % self.offsets.every != 0
        if held and self._offset is not None:
            action = self._unnorm(state.normalizer, jnp.clip(a_b + self._offset, -1.0, 1.0))
            return np.asarray(self._offset, np.float32), np.asarray(action, np.float32)
        self.key, k = jax.random.split(self.key)
        if self.mode == "base":
            r = jnp.zeros_like(a_b)
        elif self.mode == "warmup":
            r = jax.random.uniform(
                k, a_b.shape, minval=-self.warmup_noise, maxval=self.warmup_noise
            )
            if hasattr(self.learner, "keep_residual"):  # residual_dims: only those entries
                r = self.learner.keep_residual(r)
        else:
            x = self._learner_obs(_batch_of_one(obs), self._bstate, state.normalizer)
            r, _ = self._act(state, x, a_b[None], k, deterministic=self.mode == "eval")
            r = r[0]
        a = jnp.clip(a_b + r, -1.0, 1.0)
        if self.offsets is not None:  # what it added, held until the next decision
            r = self._offset = offset_update(self.offsets.bound, a_b, a)
        action = self._unnorm(state.normalizer, a)
        return np.asarray(r, np.float32), np.asarray(action, np.float32)


class RunnerMode:
    """One ``PolicyRunner`` in a fixed mode, as a ``robot.loop.Policy`` (e.g. "eval" and
    "base" of the same runner as the two policies of a blind A/B session)."""

    def __init__(self, runner: PolicyRunner, mode: str):
        if mode not in ("train", "eval", "base", "warmup"):
            raise ValueError(f"RunnerMode: unknown mode {mode!r}.")
        self.runner, self.mode = runner, mode

    def begin(self) -> None:
        self.runner.mode = self.mode
        self.runner.begin()

    def base_action(self, obs: np.ndarray) -> np.ndarray:
        return self.runner.base_action(obs)

    def act(self, obs: np.ndarray, base_action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.runner.act(obs, base_action)


def _batch_of_one(obs):
    """One robot observation (a state [O] or a dict with camera frames) -> a batch of one."""
    return jax.tree.map(lambda x: jnp.asarray(x)[None], obs)


class AsyncLearner:
    """Runs ``RobotLearner.update`` in a thread (see the module docstring).

    max_update_ratio: at most this many learner updates per collected env step (None: as
    fast as the machine allows). ``snapshot()`` returns (version, LearnerState) atomically;
    an exception in the thread is re-raised by the next ``snapshot``/``submit``/``stop``.
    """

    def __init__(
        self,
        rl: RobotLearner,
        max_update_ratio: float | None = None,
        on_update: Callable[[int, PyTree, dict], None] | None = None,
    ):
        self.rl, self.max_update_ratio, self.on_update = rl, max_update_ratio, on_update
        self._lock = threading.Lock()
        self._snapshot = (0, rl.state)
        self._inbox: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.env_steps = 0
        self.metrics: dict = {}
        self._thread = threading.Thread(target=self._run, name="resfit-learner", daemon=True)

    def start(self) -> AsyncLearner:
        self._thread.start()
        return self

    def _raise(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"async learner thread failed: {self._error!r}") from self._error

    def snapshot(self) -> tuple[int, PyTree]:
        self._raise()
        with self._lock:
            return self._snapshot

    def params(self) -> PyTree:
        return self.snapshot()[1]

    def submit(self, episode, base_action: np.ndarray) -> None:
        """Queue a finished (already journaled) episode for insertion by the thread."""
        self._raise()
        self._inbox.put((episode, base_action))

    def _drain(self) -> None:
        while True:
            try:
                ep, b = self._inbox.get_nowait()
            except queue.Empty:
                return
            self.rl.add_episode(ep, b)
            self.env_steps += ep.num_actions

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._drain()
                capped = (
                    self.max_update_ratio is not None
                    and self.rl.updates >= self.max_update_ratio * self.env_steps
                )
                if not self.rl.ready() or capped:
                    time.sleep(0.005)
                    continue
                metrics = self.rl.update()
                with self._lock:
                    self._snapshot = (self._snapshot[0] + 1, self.rl.state)
                    version = self._snapshot[0]
                self.metrics = metrics
                if self.on_update is not None:
                    self.on_update(version, self.rl.state, metrics)
            self._drain()
        except BaseException as e:  # surfaced to the actor thread
            self._error = e

    def stop(self) -> None:
        """Stop the thread after its current update; pending episodes are inserted."""
        self._stop.set()
        self._thread.join()
        self._raise()
