"""The robot-time learning curve (robot.time_curve): its clock counts resets, control and
labelling but not the learner's work between episodes; the curve trains to each point,
evaluates there with a blind A/B session and continues where it stopped."""

import json
import os
import time

import pytest
from robot_worker import ScenePointRobot, point_setup

from resfit_jax.robot.blind_ab import ABSetup
from resfit_jax.robot.loop import LoopConfig
from resfit_jax.robot.operator import Label, ScriptedLabeller
from resfit_jax.robot.time_curve import CurveSchedule, learning_curve, read_points

QUIET = dict(progress=lambda s: None)


class SlowResetRobot(ScenePointRobot):
    """A scene point robot whose reset takes ``reset_s`` (a person resetting the scene)."""

    def __init__(self, reset_s: float, **kw):
        super().__init__(**kw)
        self.reset_s = reset_s

    def reset(self):
        time.sleep(self.reset_s)
        return super().reset()


def test_the_clock_counts_resets_control_and_labelling_not_learner_work(tmp_path):
    hz, steps, reset_s, label_s, update_s = 50.0, 12, 0.1, 0.005, 0.05
    loop = LoopConfig(control_hz=hz, max_episode_steps=steps, deadline_tolerance_s=1.0)
    trainer, limits = point_setup(str(tmp_path / "run"), loop=loop, sync_every="episode")
    robot = SlowResetRobot(reset_s)

    def label(episode, t, obs):  # a slow operator who never ends an episode early
        time.sleep(label_s)
        return None

    update, calls = trainer.rl.update, []

    def slow_update():  # learner compute between episodes (sync, after each episode)
        calls.append(1)
        time.sleep(update_s)
        return update()

    trainer.rl.update = slow_update
    t0 = time.perf_counter()
    trainer.run(robot, ScriptedLabeller(label), limits, 4, **QUIET)
    wall = time.perf_counter() - t0
    c = trainer.counts()
    trainer.close()
    assert c["episodes"] == 4
    # each episode: a reset, `steps` control periods (the labeller's time is inside them)
    assert 4 * (reset_s + (steps - 1) / hz) <= c["robot_s"] <= 1.5 * 4 * (reset_s + steps / hz)
    # the training episodes' sync updates (one per stored transition) are not on it
    assert len(calls) >= 2 * steps
    assert wall - c["robot_s"] >= len(calls) * update_s
    # a labeller slower than the control period is robot time too
    trainer, limits = point_setup(str(tmp_path / "run2"), loop=loop)

    def slow_label(episode, t, obs):
        time.sleep(0.05)
        return None

    trainer.run(robot, ScriptedLabeller(slow_label), limits, 1, **QUIET)
    c = trainer.counts()
    trainer.close()
    assert c["robot_s"] >= reset_s + steps * 0.05


def _curve(tmp_path, robot, schedule, **kw):
    trainer, limits = point_setup(str(tmp_path / "run"))
    oracle = ScriptedLabeller(lambda e, t, o: Label.SUCCESS if robot.success() else None)
    try:
        return learning_curve(
            trainer, robot, oracle, limits, schedule, str(tmp_path / "curve"), **QUIET, **kw
        ), trainer.counts()
    finally:
        trainer.close()


def test_the_curve_trains_to_each_point_evaluates_blind_and_continues(tmp_path):
    robot = ScenePointRobot()
    minutes = 1.0 / 60.0  # one robot second per point
    schedule = CurveSchedule(
        robot_minutes=2 * minutes, eval_every_minutes=minutes, ab_rounds=4, final_ab_rounds=6
    )
    assert schedule.minutes() == pytest.approx([minutes, 2 * minutes])
    points, counts = _curve(tmp_path, robot, schedule)
    assert [p["index"] for p in points] == [0, 1]
    assert [p["rounds"] for p in points] == [4, 6]
    for p in points:
        assert p["robot_minutes"] >= p["target_minutes"]
        pol = p["base"], p["resfit"]
        assert all(0 <= x["successes"] <= p["rounds"] for x in pol)
        assert p["paired"]["fixed"] + p["paired"]["broken"] <= p["rounds"]
        assert p["gain"] == pytest.approx(
            (p["resfit"]["successes"] - p["base"]["successes"]) / p["rounds"]
        )
        # nothing the labeller saw named a policy: the round files hold slots only
        rounds = [f for f in os.listdir(p["ab_directory"]) if f.startswith("round_")]
        assert len(rounds) == p["rounds"]
        for f in rounds:
            text = open(os.path.join(p["ab_directory"], f)).read()
            assert "resfit" not in text and "base" not in text
    # the A/B episodes are not training: the run's journal ends where the last point started
    assert points[1]["episodes"] == counts["episodes"]
    assert points[0]["episodes"] < points[1]["episodes"]

    # the base is deterministic and the scenes exact: in the rounds both sessions share
    # (same scene ids) the base has the same outcomes
    def base_outcomes(directory, n):
        with open(os.path.join(directory, "ab.json")) as f:
            setup = ABSetup(**{k: v for k, v in json.load(f).items() if k != "rounds"}, rounds=n)
        out = []
        for i in range(n):
            with open(os.path.join(directory, f"round_{i:06d}.json")) as f:
                r = json.load(f)
            slot = "A" if setup.policy_on(i, "A") == "base" else "B"
            out.append(r[slot]["success"])
        return out

    assert base_outcomes(points[0]["ab_directory"], 4) == base_outcomes(
        points[1]["ab_directory"], 4
    )

    # rerun: nothing new is trained or evaluated
    again, counts2 = _curve(tmp_path, robot, schedule)
    assert again == points and counts2 == counts
    # a point lost after its A/B session finished is rebuilt from the session's journal
    os.remove(tmp_path / "curve" / "point_01.json")
    rebuilt, counts3 = _curve(tmp_path, robot, schedule)
    assert counts3 == counts
    strip = lambda p: {k: v for k, v in p.items() if k != "ab_wall_s"}
    assert strip(rebuilt[1]) == strip(points[1])
    # extending the schedule continues training from the run's journal
    longer = CurveSchedule(
        robot_minutes=3 * minutes, eval_every_minutes=minutes, ab_rounds=4, final_ab_rounds=6
    )
    with pytest.raises(ValueError, match="point 0 was taken"):
        _curve(
            tmp_path,
            robot,
            CurveSchedule(robot_minutes=4 * minutes, eval_every_minutes=2 * minutes),
        )
    ext, counts4 = _curve(tmp_path, robot, longer)
    assert len(ext) == 3 and counts4["episodes"] > counts["episodes"]
    assert read_points(str(tmp_path / "curve")) == ext


def test_schedule_checks_its_numbers():
    with pytest.raises(ValueError, match="robot_minutes"):
        CurveSchedule(robot_minutes=0)
    with pytest.raises(ValueError, match="ab_rounds"):
        CurveSchedule(ab_rounds=0)
    s = CurveSchedule(robot_minutes=25, eval_every_minutes=10)
    assert s.minutes() == [10, 20, 25]
    assert [s.rounds(i) for i in range(3)] == [50, 50, 50]
