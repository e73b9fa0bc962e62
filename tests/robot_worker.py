"""Small robot-loop set-ups shared by tests/test_robot.py and its crash test.

Run as a script it trains against a robot server until killed:

    python tests/robot_worker.py OUT ADDRESS    (key in $RESFIT_ROBOT_KEY)
"""

from __future__ import annotations

import os
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
    main(sys.argv[1], sys.argv[2])
