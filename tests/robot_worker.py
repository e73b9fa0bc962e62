"""Small robot-loop set-ups shared by tests/test_robot.py and its crash test.

Run as a script it trains against a robot server until killed, or runs a blind A/B
session on the scene point robot until killed:

    python tests/robot_worker.py OUT ADDRESS    (key in $RESFIT_ROBOT_KEY)
    python tests/robot_worker.py ab DIR ROUNDS
"""

from __future__ import annotations

import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resfit_jax.agents.residual_td3 import ResidualTD3Config, make_learner  # noqa: E402
from resfit_jax.base.policy import FunctionBase  # noqa: E402
from resfit_jax.normalization import ActionScaler, Normalizer, StateStandardizer  # noqa: E402
from resfit_jax.replay import ReplayConfig  # noqa: E402
from resfit_jax.robot.config import RobotTrainConfig  # noqa: E402
from resfit_jax.robot.loop import LoopConfig  # noqa: E402
from resfit_jax.robot.safety import SafetyLimits  # noqa: E402
from resfit_jax.robot.trainer import RobotTrainer  # noqa: E402

TINY = dict(actor_hidden_dims=(32, 32), critic_hidden_dims=(32, 32), num_critics=2, actor_lr=1e-3)
TINY_REPLAY = ReplayConfig(batch_size=16, utd=1, n_step=3, capacity=100_000)


def normalizer(obs_dim: int, low, high) -> Normalizer:
    return Normalizer(
        obs=StateStandardizer.identity(obs_dim), action=ActionScaler.from_bounds(low, high)
    )


class PointRobot:
    """A numpy point mass: obs [4] = (position [2], target [2]); action [2] = position
    target, reached at once (times ``gain``). Counts calls; ``latency_s`` per observe."""

    observation_size, action_size = 4, 2

    def __init__(self, latency_s: float = 0.0, fail_observe_at: int | None = None, seed: int = 0):
        self.latency_s, self.fail_observe_at = latency_s, fail_observe_at
        self.rng = np.random.default_rng(seed)
        self.sent: list[np.ndarray] = []
        self.stops = 0
        self.observes = 0

    def reset(self):
        self.pos = self.rng.uniform(-0.5, 0.5, 2).astype(np.float32)
        self.target = self.rng.uniform(-0.5, 0.5, 2).astype(np.float32)
        return self._obs()

    def _obs(self):
        return np.concatenate([self.pos, self.target]).astype(np.float32)

    def observe(self):
        self.observes += 1
        if self.fail_observe_at is not None and self.observes >= self.fail_observe_at:
            raise ConnectionError("robot link lost")
        if self.latency_s:
            time.sleep(self.latency_s)
        return self._obs()

    def send_action(self, action):
        self.sent.append(np.array(action))
        self.pos = self.pos + 0.5 * (np.asarray(action, np.float32) - self.pos)

    def success(self):
        return bool(np.linalg.norm(self.pos - self.target) < 0.05)

    def stop(self):
        self.stops += 1


class ScenePointRobot(PointRobot):
    """PointRobot whose scenes can be named: set_scene(i) makes the next reset place the
    point and target from seed i exactly (as the simulated arm does); the target starts at
    least 0.3 away."""

    exact_scenes = True

    def __init__(self, **kw):
        super().__init__(**kw)
        self.scene, self.scenes = None, []

    def set_scene(self, scene: int) -> None:
        self.scene = scene

    def reset(self):
        if self.scene is not None:
            self.rng = np.random.default_rng(1000 + self.scene)
        self.scenes.append(self.scene)
        self.scene = None
        super().reset()
        while np.linalg.norm(self.pos - self.target) < 0.3:  # never solved by holding still
            self.target = self.rng.uniform(-0.5, 0.5, 2).astype(np.float32)
        return self._obs()


class ScenePolicy:
    """A fixed policy on ScenePointRobot: moves the point onto the target, except in the
    scenes where ``misses(scene)`` (there it holds still). Records (reset count, scene) of
    each episode it runs and sleeps ``step_s`` per step."""

    def __init__(self, robot: ScenePointRobot, misses, step_s: float = 0.0):
        self.robot, self.misses, self.step_s = robot, misses, step_s
        self.ran: list[int] = []

    def begin(self):
        pass

    def base_action(self, obs):
        return np.asarray(obs[2:], np.float32)

    def act(self, obs, a_b):
        if not self.ran or self.ran[-1] != (len(self.robot.scenes), self.robot.scenes[-1]):
            self.ran.append((len(self.robot.scenes), self.robot.scenes[-1]))
        if self.step_s:
            time.sleep(self.step_s)
        a = obs[:2] if self.misses(self.robot.scenes[-1]) else a_b
        return np.zeros(2, np.float32), np.asarray(a, np.float32)


def ab_setup(directory: str, rounds: int, step_s: float = 0.0, seed: int = 3):
    """(robot, policies, journal, labeller, limits, loop) of a blind A/B session on
    ScenePointRobot: "alpha-policy" misses scenes divisible by 3, "beta-policy" odd ones."""
    from resfit_jax.robot.blind_ab import ABJournal, ABSetup
    from resfit_jax.robot.operator import oracle_labeller

    robot = ScenePointRobot()
    policies = {
        "alpha-policy": ScenePolicy(robot, lambda s: s % 3 == 0, step_s),
        "beta-policy": ScenePolicy(robot, lambda s: s % 2 == 1, step_s),
    }
    journal = ABJournal(directory, ABSetup(("alpha-policy", "beta-policy"), rounds, seed))
    low, high = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    loop = LoopConfig(control_hz=200.0, max_episode_steps=8, deadline_tolerance_s=1.0)
    return robot, policies, journal, oracle_labeller(robot), SafetyLimits(low, high, 2.0), loop


def ab_main(directory: str, rounds: int) -> None:
    from resfit_jax.robot.blind_ab import run_ab

    robot, policies, journal, labeller, limits, loop = ab_setup(directory, rounds, step_s=0.02)
    print("READY", flush=True)
    run_ab(
        robot, policies, labeller, limits, loop, journal, progress=lambda s: print(s, flush=True)
    )


def sigkill_when(proc, directory: str, prefix: str, count: int, timeout_s: float, settle_s: float):
    """SIGKILL ``proc`` ``settle_s`` after ``directory`` holds ``count`` names starting with
    ``prefix`` (so the kill lands inside the next unit of work); fails if it exits first."""
    try:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            done = os.listdir(directory) if os.path.isdir(directory) else []
            if sum(n.startswith(prefix) for n in done) >= count:
                break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.02)
        time.sleep(settle_s)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def point_setup(out: str, **cfg_kw):
    """(trainer, limits) for PointRobot with a base that moves half-way to the target."""
    base = FunctionBase(lambda o: o[..., :2] + 0.5 * (o[..., 2:] - o[..., :2]), 2)
    low, high = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    learner = make_learner(ResidualTD3Config.small(**TINY), 4, 2)
    loop = cfg_kw.pop(
        "loop", LoopConfig(control_hz=200.0, max_episode_steps=12, deadline_tolerance_s=1.0)
    )
    kw = dict(warmup_episodes=1, critic_warmup_updates=8, min_replay=4) | cfg_kw
    cfg = RobotTrainConfig(learner=learner.config, replay=TINY_REPLAY, loop=loop, **kw)
    trainer = RobotTrainer(cfg, base, learner, normalizer(4, low, high), None, out)
    return trainer, SafetyLimits(low, high, 0.3, (0, 1))


def point_demos(num: int = 4, steps: int = 12) -> list:
    """Episodes of PointRobot driven by the point base (the last one fails by timing out)."""
    from resfit_jax.data.episode import Episode

    eps = []
    for i in range(num):
        robot = PointRobot(seed=100 + i)
        obs, acts = [robot.reset()], []
        for _ in range(steps):
            o = obs[-1]
            a = o[:2] + 0.8 * (o[2:] - o[:2])
            robot.send_action(a)
            obs.append(robot._obs())
            acts.append(a)
            if robot.success():
                break
        eps.append(Episode.from_rollout(np.stack(obs), np.stack(acts), robot.success()))
    return eps


def point_chunk_setup(out: str, horizon: int = 4, **cfg_kw):
    """(trainer, limits) for PointRobot with the point base run as a chunked base (its
    action repeated over a chunk of ``horizon``) and the learner, normalizer and demo buffer
    of ``robot.inputs.learner_inputs`` (pass ``decision_steps`` for the semi-MDP residual)."""
    from resfit_jax.base.policy import ChunkedBase
    from resfit_jax.replay.demos import fit_normalizer
    from resfit_jax.robot.inputs import learner_inputs

    move = lambda o: o[..., :2] + 0.5 * (o[..., 2:] - o[..., :2])
    base = ChunkedBase(lambda o: jnp.repeat(move(o)[:, None], horizon, axis=1), 2, horizon)
    low, high = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    loop = cfg_kw.pop(
        "loop", LoopConfig(control_hz=200.0, max_episode_steps=12, deadline_tolerance_s=1.0)
    )
    replay = cfg_kw.pop("replay", TINY_REPLAY)
    kw = dict(warmup_episodes=1, critic_warmup_updates=8, min_replay=2) | cfg_kw
    learner_cfg = ResidualTD3Config.small(**TINY)
    cfg = RobotTrainConfig(learner=learner_cfg, replay=replay, loop=loop, **kw)
    demos = point_demos()
    nz = fit_normalizer(demos, learner_cfg.action_scale)
    spec = jax.ShapeDtypeStruct((4,), jnp.float32)
    learner, nz, offline = learner_inputs(cfg, base, spec, 2, nz, demos)
    trainer = RobotTrainer(cfg, base, learner, nz, offline, out)
    return trainer, SafetyLimits(low, high, 0.3, (0, 1))


def arm_setup(out: str, **cfg_kw):
    """(trainer, limits) for the simulated PickPlace arm with a hold-still base."""
    from resfit_jax import envs

    task = envs.make("PickPlace")
    low, high = np.asarray(task.action_low), np.asarray(task.action_high)
    base = FunctionBase(
        lambda o: jnp.concatenate([o[..., :6], jnp.full(o.shape[:-1] + (1,), 0.036)], axis=-1), 7
    )
    learner = make_learner(ResidualTD3Config.small(**TINY), 28, 7)
    cfg = RobotTrainConfig(
        learner=learner.config,
        replay=TINY_REPLAY,
        loop=LoopConfig(control_hz=40.0, max_episode_steps=20, deadline_tolerance_s=0.5),
        warmup_episodes=1,
        critic_warmup_updates=8,
        min_replay=4,
        **cfg_kw,
    )
    trainer = RobotTrainer(cfg, base, learner, normalizer(28, low, high), None, out)
    return trainer, SafetyLimits(low, high, 0.1, task.action_obs_index)


def main(out: str, address: str) -> None:
    from resfit_jax.robot.operator import ScriptedLabeller
    from resfit_jax.robot.sim_server import KEY_ENV, RemoteRobot

    robot = RemoteRobot(address, os.environ[KEY_ENV].encode())
    trainer, limits = arm_setup(out)
    print("READY", flush=True)
    trainer.run(
        robot,
        ScriptedLabeller(lambda ep, t, o: None),
        limits,
        1000,
        progress=lambda s: print(s, flush=True),
    )


if __name__ == "__main__":
    if sys.argv[1] == "ab":
        ab_main(sys.argv[2], int(sys.argv[3]))
    else:
        main(sys.argv[1], sys.argv[2])
