"""Success against robot time: train on a robot in blocks of robot time and, after each
block, run a blind A/B session of the residual against its base from matched scenes.

    schedule = CurveSchedule(robot_minutes=60, eval_every_minutes=10, ab_rounds=50)
    points = learning_curve(trainer, robot, labeller, limits, schedule, directory)

The clock is robot time (``RobotTrainer.counts()["robot_s"]``): the reset, control and
labelling of every journaled training episode, the time a person and the robot spend on the
run. Work between episodes (journaling, checkpoints, sync updates) and a learner thread
running in parallel are not on it; the A/B sessions are not either (they measure the curve,
they do not train), and their wall time is reported separately per point.

Each point is one JSON file, ``<directory>/point_NN.json``, written atomically once its A/B
session is complete. Running again with the same trainer and directory continues: a block
interrupted in training goes on from the trainer's journal and checkpoint, an A/B session
interrupted between rounds from its own journal (``robot.blind_ab``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable

from resfit_jax.robot.blind_ab import (
    ABJournal,
    ABSetup,
    ab_report,
    format_report,
    run_ab,
    write_json_atomic,
)
from resfit_jax.robot.loop import LoopConfig, RobotInterface
from resfit_jax.robot.operator import Labeller
from resfit_jax.robot.safety import SafetyLimits
from resfit_jax.run.validation import number_errors

NAMES = ("base", "resfit")  # the A/B sessions' policies: the reference first


@dataclasses.dataclass(frozen=True)
class CurveSchedule:
    """When to evaluate: after every ``eval_every_minutes`` of robot time up to
    ``robot_minutes`` (the last point exactly there), each with ``ab_rounds`` blind A/B
    rounds (``final_ab_rounds`` at the last point, default the same) drawn from
    ``ab_seed``. ``ab_loop``: the loop of the A/B episodes (None: the trainer's); a simulated
    robot can run them faster than real time, since its physics advances one control period
    per command whatever the wall clock does."""

    robot_minutes: float = 60.0
    eval_every_minutes: float = 10.0
    ab_rounds: int = 50
    final_ab_rounds: int | None = None
    ab_seed: int = 0
    ab_loop: LoopConfig | None = None

    def __post_init__(self):
        errors = number_errors(
            self,
            positive=("robot_minutes", "eval_every_minutes"),
            at_least_one=("ab_rounds", "final_ab_rounds"),
        )
        if errors:
            raise ValueError("CurveSchedule: " + "; ".join(errors) + ".")

    def minutes(self) -> list[float]:
        """Robot minutes of the evaluation points, ascending, the last = robot_minutes."""
        n = max(1, math.ceil(self.robot_minutes / self.eval_every_minutes - 1e-9))
        return [min(self.eval_every_minutes * (i + 1), self.robot_minutes) for i in range(n)]

    def rounds(self, index: int) -> int:
        last = index == len(self.minutes()) - 1
        return int(self.final_ab_rounds or self.ab_rounds) if last else int(self.ab_rounds)


def read_points(directory: str) -> list[dict]:
    """The finished points of a curve directory, in order."""
    points, i = [], 0
    while os.path.exists(path := os.path.join(directory, f"point_{i:02d}.json")):
        with open(path) as f:
            points.append(json.load(f))
        i += 1
    return points


def learning_curve(
    trainer,
    robot: RobotInterface,
    labeller: Labeller,
    limits: SafetyLimits,
    schedule: CurveSchedule,
    directory: str,
    progress: Callable[[str], None] = print,
) -> list[dict]:
    """Train ``trainer`` (a ``robot.trainer.RobotTrainer``) on ``robot`` up to each of the
    schedule's robot-time points and evaluate it there (see the module docstring); returns
    every point. A point: the robot minutes, episodes, env steps and learner updates behind
    it, both policies' A/B success with Wilson intervals, the paired counts (fixed: the base
    fails and the residual succeeds), the exact McNemar p-value and the A/B wall time."""
    os.makedirs(directory, exist_ok=True)
    points = read_points(directory)
    minutes = schedule.minutes()
    if len(points) > len(minutes):
        raise ValueError(
            f"{directory} holds {len(points)} curve points; this schedule has {len(minutes)}. "
            "Use the schedule the curve was started with or another directory."
        )
    for i, (old, m) in enumerate(zip(points, minutes)):
        if not math.isclose(old["target_minutes"], m):
            raise ValueError(
                f"{directory}: point {i} was taken at {old['target_minutes']} robot minutes, "
                f"this schedule puts it at {m}. Use the schedule the curve was started with."
            )
    for i in range(len(points), len(minutes)):
        target_s = minutes[i] * 60.0
        if trainer.counts()["robot_s"] < target_s:
            progress(f"training to {minutes[i]:g} robot minutes")
            trainer.run(
                robot,
                labeller,
                limits,
                num_episodes=2**31 - 1,
                progress=progress,
                stop_when=lambda c, t=target_s: c["robot_s"] >= t,
            )
        c = trainer.counts()
        setup = ABSetup(
            NAMES,
            schedule.rounds(i),
            schedule.ab_seed,
            state=f"{os.path.abspath(trainer.out)} after {c['episodes']} episodes",
        )
        journal = ABJournal(
            os.path.join(directory, f"ab_{i:02d}_after_{c['episodes']:04d}_episodes"), setup
        )
        t0 = time.monotonic()
        policies = trainer.ab_policies(robot)
        run_ab(
            robot,
            policies,
            labeller,
            limits,
            schedule.ab_loop or trainer.cfg.loop,
            journal,
            progress=lambda s: None,
        )
        rep = ab_report(journal)
        progress(format_report(rep))
        base, res = rep["policies"]["base"], rep["policies"]["resfit"]
        point = {
            "index": i,
            "target_minutes": minutes[i],
            "robot_minutes": c["robot_s"] / 60.0,
            "episodes": c["episodes"],
            "usable_episodes": c["usable_episodes"],
            "env_steps": c["env_steps"],
            "training_successes": c["successes"],
            "updates": int(trainer.rl.updates),
            "rounds": rep["rounds"],
            "base": base,
            "resfit": res,
            "gain": res["success_rate"] - base["success_rate"],
            "paired": rep["paired"],
            "successes_by_slot": rep["successes_by_slot"],
            "ab_directory": journal.directory,
            "ab_wall_s": time.monotonic() - t0,
        }
        write_json_atomic(os.path.join(directory, f"point_{i:02d}.json"), point)
        points.append(point)
    return points
