r"""Train (or evaluate) a residual on a robot through the robot loop.

    # a real or simulated robot server, a person labelling at the terminal:
    RESFIT_ROBOT_KEY=... python -m experiments.run_robot --address=127.0.0.1:6000 \
        --task=PickPlace --base=runs/bc/PickPlace --out=runs/robot/PickPlace --episodes=20
    # self-contained demo: start a simulated PickPlace robot, label by its ground truth:
    python -m experiments.run_robot --spawn_sim --labels=oracle --episodes=6
    # the per-step residual instead of the semi-MDP one (a decision per base chunk):
    python -m experiments.run_robot --spawn_sim --labels=oracle --recipe=per_step --episodes=6
    # blind A/B of a run's residual against its base, 20 rounds from matched scenes:
    python -m experiments.run_robot --spawn_sim --labels=oracle --ab_rounds=20

--task names the task the base was trained on; it fixes the learner preset, the action
bounds of the safety limits and the expected observation/action sizes (checked against the
robot). The per-step change limit is --max_delta_margin times the largest change in the
demos. --recipe picks the learner as in experiments.train (chunk, the default on the arm
tasks: a decision every 20 steps held in between, one replay transition per decision, the
Monte-Carlo bound, the advantage head; per_step: the task's preset). Labels: "terminal"
(type s / f / a / x + Enter while an episode runs) or "oracle" (the simulated robot's ground
truth). Run again with the same --out to continue: the replay is rebuilt from <out>/journal
and the learner restored from <out>/checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("address", None, "Robot server host:port.")
flags.DEFINE_string(
    "key_file", None, "File holding the robot's shared key (else $RESFIT_ROBOT_KEY)."
)
flags.DEFINE_bool("spawn_sim", False, "Start a simulated robot server of --task locally.")
flags.DEFINE_float("sim_latency_s", 0.002, "Simulated robot: reply latency (s).")
flags.DEFINE_float("sim_jitter_s", 0.002, "Simulated robot: uniform reply jitter (s).")
flags.DEFINE_string("task", "PickPlace", "Task the base was trained for.")
flags.DEFINE_string(
    "base", None, "BC base: train_bc run / checkpoint / export directory (default runs/bc/<task>)."
)
flags.DEFINE_string(
    "demos", None, "RLDS demos (normalizers, offline buffer, safety limits); default: the base's."
)
flags.DEFINE_string("out", None, "Run directory (default runs/robot/<task>).")
flags.DEFINE_integer("episodes", 10, "Episodes to run now.")
flags.DEFINE_enum("labels", "terminal", ["terminal", "oracle"], "Who labels episodes.")
flags.DEFINE_enum(
    "evaluate",
    None,
    ["eval", "base"],
    "Evaluate instead of training: the deterministic residual, or the base alone.",
)
flags.DEFINE_enum(
    "recipe",
    None,
    ["per_step", "chunk"],
    "ResFiT recipe on the task preset: per_step or chunk (the semi-MDP residual). Default: "
    "chunk on the arm tasks, per_step elsewhere (as experiments.train).",
)
flags.DEFINE_integer(
    "ab_rounds",
    0,
    "Blind A/B instead of training: rounds of the run's deterministic residual against the "
    "base alone, both from the same scene, labelled without knowing which is which (0: off).",
)
flags.DEFINE_string(
    "ab_dir",
    None,
    "A/B session directory (default <out>/ab/after_<N>_episodes, N: the episodes behind the "
    "learner checkpoint); rerun to continue or extend it.",
)
flags.DEFINE_string(
    "ab_scenes",
    None,
    "Text file of initial-condition notes, one per line, shown for scene i (line i mod n): "
    "how to set up a real robot's scene for each round.",
)
flags.DEFINE_integer("ab_seed", None, "Seed of the hidden A/B assignment (default --seed).")
flags.DEFINE_enum("mode", "sync", ["sync", "async"], "Learner mode.")
flags.DEFINE_enum(
    "sync_every",
    "episode",
    ["step", "episode"],
    "Sync mode: update after every step or after every episode.",
)
flags.DEFINE_integer(
    "updates_per_step",
    1,
    "Learner updates per stored transition (sync mode): per control step, or per decision "
    "with --recipe=chunk.",
)
flags.DEFINE_integer("warmup_episodes", 2, "Episodes of base + warm-up noise before learning.")
flags.DEFINE_integer("critic_warmup", 500, "Critic-only updates after the warm-up episodes.")
flags.DEFINE_float("control_hz", None, "Control rate (default: the task's).")
flags.DEFINE_integer("max_steps", None, "Steps per episode (default: the task's horizon).")
flags.DEFINE_integer("max_overruns", 20, "Deadline overruns per episode before it is halted.")
flags.DEFINE_float("max_delta_margin", 2.0, "Per-step change limit / largest demo change.")
flags.DEFINE_integer("seed", 0, "Seed.")


def main(argv):
    del argv
    import numpy as np

    from resfit_jax.run.runtime import setup_script

    setup_script()
    from resfit_jax.robot.link import LinkError
    from resfit_jax.robot.operator import TerminalLabeller, oracle_labeller
    from resfit_jax.robot.safety import EmergencyStop
    from resfit_jax.robot.sim_server import RemoteRobot, read_key, spawn_server
    from resfit_jax.robot.trainer import RobotTrainer
    from resfit_jax.run.configs import usage_error
    from resfit_jax.run.locks import RunLockedError

    from .robot_setup import robot_setup

    # flags, config, base and demos are checked before any robot is touched
    if not FLAGS.spawn_sim and not FLAGS.address:
        usage_error("Pass --address=host:port of a robot server, or --spawn_sim.")
    if FLAGS.ab_rounds < 0 or (FLAGS.ab_rounds and FLAGS.evaluate):
        usage_error("--ab_rounds takes a number of rounds >= 1 and replaces --evaluate.")
    scene_notes = []
    if FLAGS.ab_scenes:
        try:
            with open(FLAGS.ab_scenes) as f:
                scene_notes = [line.strip() for line in f if line.strip()]
        except OSError as e:
            usage_error(f"--ab_scenes: {e}")
        if not scene_notes:
            usage_error(f"--ab_scenes={FLAGS.ab_scenes} holds no notes (one per line).")
    key = None
    if not FLAGS.spawn_sim:
        try:
            key = read_key(FLAGS.key_file)
        except (ValueError, OSError) as e:
            usage_error(str(e))
    try:
        setup = robot_setup(
            FLAGS.task,
            FLAGS.base or os.path.join("runs", "bc", FLAGS.task),
            FLAGS.demos,
            FLAGS.recipe,
            mode=FLAGS.mode,
            sync_every=FLAGS.sync_every,
            updates_per_step=FLAGS.updates_per_step,
            warmup_episodes=FLAGS.warmup_episodes,
            critic_warmup=FLAGS.critic_warmup,
            control_hz=FLAGS.control_hz,
            max_steps=FLAGS.max_steps,
            max_overruns=FLAGS.max_overruns,
            seed=FLAGS.seed,
            announce=print,
        )
    except (KeyError, ValueError, FileNotFoundError) as e:
        usage_error(str(e).strip('"'))
    cfg, base, info, demos_dir = setup.cfg, setup.base, setup.info, setup.demos_dir
    learner, normalizer, offline = setup.learner, setup.normalizer, setup.offline
    obs_dim, act_dim = setup.obs_dim, setup.act_dim

    server = None
    if FLAGS.spawn_sim:
        server, address, key = spawn_server(
            FLAGS.task, latency_s=FLAGS.sim_latency_s, jitter_s=FLAGS.sim_jitter_s, seed=FLAGS.seed
        )
        print(f"started a simulated {FLAGS.task} robot at {address}")
    else:
        address = FLAGS.address
    try:
        try:
            robot = RemoteRobot(address, key.encode())
        except (LinkError, PermissionError, ValueError) as e:
            usage_error(str(e))
        if (robot.observation_size, robot.action_size) != (obs_dim, act_dim):
            robot.close()
            usage_error(
                f"The robot has observation/action sizes {robot.observation_size}/"
                f"{robot.action_size}; task {FLAGS.task} (and its base) has "
                f"{obs_dim}/{act_dim}."
            )
        if not FLAGS.control_hz and "control_hz" in robot.spec:
            cfg = dataclasses.replace(
                cfg, loop=dataclasses.replace(cfg.loop, control_hz=float(robot.spec["control_hz"]))
            )
        limits = setup.limits(robot, FLAGS.max_delta_margin)
        print(
            f"Safety limits: low {np.round(limits.low, 3)}, high {np.round(limits.high, 3)}, "
            f"max change per step {np.round(limits.max_delta, 3)}"
        )
        out = FLAGS.out or os.path.join("runs", "robot", FLAGS.task)
        try:
            trainer = RobotTrainer(
                cfg,
                base,
                learner,
                normalizer,
                offline,
                out,
                {"task": FLAGS.task, "base": info["path"], "demos": demos_dir},
            )
        except (RunLockedError, ValueError) as e:
            robot.close()
            usage_error(str(e))
        if trainer.restored_step is not None or trainer.rebuilt["episodes"]:
            print(
                f"Continuing {out}: learner checkpoint after "
                f"{trainer.progress.get('checkpoint_episodes', 0)} episodes, replay "
                f"rebuilt from {trainer.rebuilt['episodes']} journaled episodes "
                f"({trainer.rebuilt['env_steps']} steps)"
            )
        labeller = oracle_labeller(robot) if FLAGS.labels == "oracle" else TerminalLabeller()
        if FLAGS.ab_rounds:
            return _blind_ab(trainer, robot, labeller, limits, out, scene_notes)
        try:
            trainer.run(robot, labeller, limits, FLAGS.episodes, evaluate=FLAGS.evaluate)
        except EmergencyStop as e:
            print(f"STOPPED: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # Ctrl-C / SIGTERM: episodes journaled, state saved
            print(
                f"INTERRUPTED: every finished episode is journaled and the learner is "
                f"checkpointed; continue with the same command (--out={out}).",
                file=sys.stderr,
            )
            return 130
        finally:
            c = trainer.counts()
            print(
                f"{out}: {c['episodes']} episodes journaled ({c['usable_episodes']} usable, "
                f"{c['successes']} successes, {c['env_steps']} steps); journal "
                f"{trainer.journal.summary()}"
            )
            trainer.close()
            robot.close()
    finally:
        if server is not None:
            server.kill()
            server.wait()
    return 0


def _blind_ab(trainer, robot, labeller, limits, out: str, scene_notes: list[str]) -> int:
    """The blind A/B session of the run's residual against the base; its report at the end."""
    from resfit_jax.robot.blind_ab import ABJournal, ABSetup, run_ab, write_report
    from resfit_jax.robot.safety import EmergencyStop
    from resfit_jax.run.configs import usage_error

    try:
        if trainer.restored_step is None:
            usage_error(
                f"--ab_rounds compares the run's trained residual with its base, and {out} has "
                "no learner checkpoint yet: train there first (without --ab_rounds)."
            )
        episodes = int(trainer.progress.get("checkpoint_episodes", 0))
        setup = ABSetup(
            ("base", "resfit"),
            FLAGS.ab_rounds,
            FLAGS.seed if FLAGS.ab_seed is None else FLAGS.ab_seed,
            state=f"{os.path.abspath(out)} checkpoint {trainer.restored_step} "
            f"({episodes} episodes)",
        )
        default_dir = os.path.join(out, "ab", f"after_{episodes:04d}_episodes")
        try:
            journal = ABJournal(FLAGS.ab_dir or default_dir, setup)
        except ValueError as e:
            usage_error(str(e))
        print(
            f"Blind A/B: {setup.rounds} rounds in {journal.directory}; in each, A then B from "
            "the same scene. Which policy is A stays hidden until the report."
        )
        try:
            policies = trainer.ab_policies(robot)
            run_ab(robot, policies, labeller, limits, trainer.cfg.loop, journal, scene_notes)
        except EmergencyStop as e:
            print(f"STOPPED: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(
                f"INTERRUPTED: finished rounds are journaled in {journal.directory}; continue "
                "with the same command.",
                file=sys.stderr,
            )
            return 130
        write_report(journal)
        return 0
    finally:
        trainer.close()
        robot.close()


def run():
    """Console script ``resfit-robot``."""
    from resfit_jax.run.configs import config_flag_parser

    app.run(main, flags_parser=config_flag_parser)


if __name__ == "__main__":
    run()
