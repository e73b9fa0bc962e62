"""Camera frames on the robot side: a simulated robot renders them, the loop checks and
records them, the journal keeps them exactly, the link carries them exactly, and the robot
learner's replay stores them as uint8."""

import threading

import numpy as np
import pytest

from resfit_jax.robot.journal import Journal
from resfit_jax.robot.link import RemoteRobot, RobotServer
from resfit_jax.robot.loop import LoopConfig, run_episode
from resfit_jax.robot.operator import Label, ScriptedLabeller
from resfit_jax.robot.safety import SafetyLimits

RES = 32
KEY = b"camera-test-key"


@pytest.fixture(scope="module")
def robot():
    from resfit_jax.robot.sim_server import SimRobot

    return SimRobot("PickPlace", seed=1, cameras="default", resolution=RES)


class _HomePolicy:
    """The task's home pose as base action, no residual."""

    def __init__(self, home):
        self.home, self.seen = np.asarray(home, np.float32), []

    def begin(self):
        pass

    def base_action(self, obs):
        self.seen.append(obs)
        return self.home + np.r_[0.3, 0.2, 0, 0, 0, 0, 0].astype(np.float32)

    def act(self, obs, a_b):
        return np.zeros_like(a_b), a_b


def _limits(robot):
    return SafetyLimits(robot.low, robot.high, 0.5)


def test_a_camera_episode_is_recorded_and_journaled_exactly(robot, tmp_path):
    assert robot.cameras == {"workspace": (RES, RES, 3), "wrist": (RES, RES, 3)}
    from resfit_jax.robot.sim_server import SimRobot

    variant = SimRobot("PixelPickPlace", resolution=RES)  # the registered camera variant
    assert variant.cameras == robot.cameras and variant.observation_size == 16
    policy = _HomePolicy(robot.task.home_action)
    rec = run_episode(
        robot,
        policy,
        ScriptedLabeller(lambda e, t, o: Label.SUCCESS if t == 5 else None),
        _limits(robot),
        LoopConfig(control_hz=1000.0, max_episode_steps=20, deadline_tolerance_s=10.0),
    )
    assert rec.label == Label.SUCCESS and rec.steps == 6
    assert rec.observation.shape == (7, 16)  # proprio only
    assert set(policy.seen[0]) == {"state", "workspace", "wrist"}
    for c in ("workspace", "wrist"):
        assert rec.images[c].shape == (7, RES, RES, 3) and rec.images[c].dtype == np.uint8
    assert not np.array_equal(rec.images["wrist"][0], rec.images["wrist"][-1])  # the arm moved
    ep = rec.to_episode()
    assert ep.camera_shapes == robot.cameras
    j = Journal(str(tmp_path / "j"))
    entry = j.write(ep, rec.extras(), rec.stats())
    back, _ = j.read(entry)
    for c in ("workspace", "wrist"):
        np.testing.assert_array_equal(back.images[c], rec.images[c])


def test_bad_frames_stop_the_episode_with_a_clear_error(robot):
    class Broken:
        def __init__(self, inner):
            self.inner, self.stops = inner, 0
            self.observation_size, self.action_size = inner.observation_size, inner.action_size
            self.cameras = inner.cameras

        def reset(self):
            obs = self.inner.reset()
            return dict(obs, wrist=obs["wrist"].astype(np.float32))

        def observe(self):
            return self.inner.observe()

        def send_action(self, a):
            self.inner.send_action(a)

        def stop(self):
            self.stops += 1

    broken = Broken(robot)
    rec = run_episode(
        broken,
        _HomePolicy(robot.task.home_action),
        ScriptedLabeller(lambda e, t, o: None),
        _limits(robot),
        LoopConfig(control_hz=1000.0, max_episode_steps=3, deadline_tolerance_s=10.0),
    )
    assert rec.label == Label.ESTOP and broken.stops == 1
    assert "camera 'wrist'" in rec.error and "uint8" in rec.error


def test_frames_cross_the_link_exactly(robot):
    srv = RobotServer(
        robot, KEY, handshake_timeout_s=2.0, idle_timeout_s=10.0, log=lambda line: None
    )
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        remote = RemoteRobot(srv.address, KEY)
        assert remote.cameras == robot.cameras and remote.observation_size == 16
        obs = remote.reset()
        local = robot.observe()  # the same scene, rendered in-process
        for c in ("state", "workspace", "wrist"):
            np.testing.assert_array_equal(obs[c], local[c])
        assert obs["wrist"].dtype == np.uint8
        remote.close()
    finally:
        srv.shutdown()
        t.join(5)


@pytest.mark.slow
def test_the_robot_trainer_learns_from_camera_frames(robot, tmp_path):
    """A pixel learner on the camera robot: warm-up and training episodes journal the frames,
    the replay stores them uint8, the camera encoders train; a robot whose cameras differ
    from the learner's is refused."""
    import dataclasses
    import os
    import sys

    import jax
    import jax.numpy as jnp

    sys.path.insert(0, os.path.dirname(__file__))
    from robot_worker import TINY, TINY_REPLAY, normalizer

    from resfit_jax.agents.residual_td3 import ResidualTD3Config, make_learner
    from resfit_jax.base.policy import FunctionBase
    from resfit_jax.robot.config import RobotTrainConfig
    from resfit_jax.robot.trainer import RobotTrainer

    spec = {
        "state": jax.ShapeDtypeStruct((16,), jnp.float32),
        **{c: jax.ShapeDtypeStruct(v, jnp.uint8) for c, v in robot.cameras.items()},
    }
    learner = make_learner(ResidualTD3Config.small(**TINY, camera_feature_dim=8), spec, 7)
    base = FunctionBase(
        lambda o: jnp.concatenate(  # hold the arm where it is
            [o["state"][..., :6], jnp.full(o["state"].shape[:-1] + (1,), 0.036)], axis=-1
        ),
        7,
    )
    cfg = RobotTrainConfig(
        learner=learner.config,
        replay=dataclasses.replace(TINY_REPLAY, capacity=500),
        loop=LoopConfig(control_hz=1000.0, max_episode_steps=8, deadline_tolerance_s=10.0),
        warmup_episodes=1,
        critic_warmup_updates=4,
        min_replay=4,
    )
    trainer = RobotTrainer(
        cfg, base, learner, normalizer(16, robot.low, robot.high), None, str(tmp_path / "run")
    )
    start = trainer.rl.state.encoder_params
    limits = SafetyLimits(robot.low, robot.high, 0.1, robot.task.action_obs_index)
    rows = trainer.run(
        robot, ScriptedLabeller(lambda e, t, o: None), limits, 2, progress=lambda s: None
    )
    assert [r["phase"] for r in rows] == ["warmup", "train"]
    assert trainer.rl.replay.data.obs["wrist"].dtype == np.uint8 and trainer.rl.replay_size > 0
    moved = jax.tree.map(
        lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
        trainer.rl.state.encoder_params,
        start,
    )
    assert max(jax.tree.leaves(moved)) > 0
    back, _ = Journal.read(Journal(str(tmp_path / "run" / "journal")).entries()[0])
    assert back.camera_shapes == robot.cameras
    trainer.close()
    state_robot = type("StateOnly", (), {"observation_size": 16, "action_size": 7, "cameras": {}})()
    trainer2 = RobotTrainer(
        cfg, base, learner, normalizer(16, robot.low, robot.high), None, str(tmp_path / "run2")
    )
    with pytest.raises(ValueError, match="cameras"):
        trainer2.run(
            state_robot, ScriptedLabeller(lambda e, t, o: None), limits, 1, progress=lambda s: None
        )
    trainer2.close()
