r"""Success against robot time on the simulated robot: the ResFiT paper's real-robot claim
(gains within 15-76 minutes of robot time) measured through the robot loop.

    python -m studies.robot_time --task=PickPlaceEE --base=runs/bc/PickPlaceEE \
        --out=runs/robot_time/PickPlaceEE

Per seed: a simulated robot server of --task (MuJoCo C, the task's 20 Hz in real time,
transport latency and jitter on), oracle labels (the simulator's ground truth), the async
learner with the task's default recipe (the semi-MDP residual on the arm tasks), capped at
the simulated recipe's learner updates per env step unless --updates_per_env_step says
otherwise. Training stops every --eval_every_minutes of robot time (reset, control and
labelling of the training episodes; ``robot.time_curve``) for a blind A/B session of the
residual against its base from the same scenes (--ab_rounds rounds, --final_ab_rounds at
the last point). A simulated robot runs the A/B episodes faster than real time (its physics
advances one control period per command whatever the wall clock does; --ab_realtime runs
them at the control rate); their wall time is reported and not on the robot clock.

Writes <out>/seed_<s>/run (the robot run: journal, checkpoints), <out>/seed_<s>/curve (one
JSON per point, A/B sessions), <out>/robot_time.json (+ --results) and
<out>/robot_time.png. Rerun the same command to continue after an interruption.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The script's flags (defined only when it runs, so importing it defines none)."""
    flags.DEFINE_string("task", "PickPlaceEE", "Task the base was trained for.")
    flags.DEFINE_string("base", None, "BC base (default runs/bc/<task>).")
    flags.DEFINE_string("out", None, "Study directory (default runs/robot_time/<task>).")
    flags.DEFINE_enum(
        "recipe", None, ["per_step", "chunk"], "Learner recipe (default: the task's default)."
    )
    flags.DEFINE_integer("seeds", 1, "Seeds 0 .. seeds-1 (one robot run each).")
    flags.DEFINE_list("seed_indices", None, "Run only these seeds (default: all).")
    flags.DEFINE_float("robot_minutes", 60.0, "Robot time to train per seed (minutes).")
    flags.DEFINE_float("eval_every_minutes", 10.0, "A/B evaluation every this much robot time.")
    flags.DEFINE_integer("ab_rounds", 50, "Blind A/B rounds per evaluation point.")
    flags.DEFINE_integer("final_ab_rounds", 200, "Blind A/B rounds at the last point.")
    flags.DEFINE_bool("ab_realtime", False, "Run the A/B episodes at the control rate.")
    flags.DEFINE_float(
        "updates_per_env_step",
        None,
        "Async learner cap, learner updates per control step (default: the simulated "
        "recipe's, one per num_envs env steps).",
    )
    flags.DEFINE_float("latency_s", 0.002, "Simulated robot: reply latency (s).")
    flags.DEFINE_float("jitter_s", 0.002, "Simulated robot: uniform reply jitter (s).")
    flags.DEFINE_string("results", None, "Also write the study's JSON here.")


def _seeds() -> list[int]:
    all_seeds = list(range(FLAGS.seeds))
    if not FLAGS.seed_indices:
        return all_seeds
    chosen = [int(s) for s in FLAGS.seed_indices]
    bad = [s for s in chosen if s not in all_seeds]
    if bad:
        from resfit_jax.run.configs import usage_error

        usage_error(f"--seed_indices {bad} are not among the --seeds={FLAGS.seeds} seeds.")
    return chosen


def run_seed(seed: int, out: str, ratio: float, schedule) -> list[dict]:
    """One seed's robot run and its curve (resumes both)."""
    from resfit_jax.experiments.robot_setup import robot_setup
    from resfit_jax.robot.operator import oracle_labeller
    from resfit_jax.robot.sim_server import RemoteRobot, spawn_server
    from resfit_jax.robot.time_curve import learning_curve
    from resfit_jax.robot.trainer import RobotTrainer
    from resfit_jax.run.configs import usage_error

    try:
        setup = robot_setup(
            FLAGS.task,
            FLAGS.base or os.path.join("runs", "bc", FLAGS.task),
            recipe=FLAGS.recipe,
            mode="async",
            max_update_ratio=ratio,
            seed=seed,
            announce=lambda s: None,
        )
    except (KeyError, ValueError, FileNotFoundError) as e:
        usage_error(str(e).strip('"'))
    server, address, key = spawn_server(
        FLAGS.task, latency_s=FLAGS.latency_s, jitter_s=FLAGS.jitter_s, seed=seed
    )
    robot = trainer = None
    try:
        robot = RemoteRobot(address, key.encode())
        limits = setup.limits(robot, 2.0)
        trainer = RobotTrainer(
            setup.cfg,
            setup.base,
            setup.learner,
            setup.normalizer,
            setup.offline,
            os.path.join(out, f"seed_{seed}", "run"),
            {"task": FLAGS.task, "base": setup.info["path"], "demos": setup.demos_dir},
        )
        c = trainer.counts()
        print(
            f"seed {seed}: {c['episodes']} episodes, {c['robot_s'] / 60:.1f} robot minutes "
            f"so far; async learner capped at {ratio:g} updates per env step"
        )
        last = {"t": time.monotonic()}

        def progress(line: str) -> None:  # one line per 10 episodes, every A/B report
            if line.startswith("episode "):
                n = int(line.split()[1])
                if n % 10 and time.monotonic() - last["t"] < 60:
                    return
                last["t"] = time.monotonic()
                c = trainer.counts()
                line = (
                    f"  seed {seed} {line.split(' in ')[0]}: {c['robot_s'] / 60:.1f} robot min, "
                    f"{c['successes']} / {c['usable_episodes']} training successes, "
                    f"{trainer.rl.updates} updates"
                )
            print(line, flush=True)

        return learning_curve(
            trainer,
            robot,
            oracle_labeller(robot),
            limits,
            schedule,
            os.path.join(out, f"seed_{seed}", "curve"),
            progress=progress,
        )
    finally:
        if trainer is not None:
            trainer.close()
        if robot is not None:
            robot.close()
        server.kill()
        server.wait()


def summarize(per_seed: dict[int, list[dict]]) -> list[dict]:
    """Per evaluation point, pooled over the seeds that reached it: robot minutes and episodes
    (seed means), both policies' A/B success, the paired counts and the exact McNemar p."""
    from resfit_jax.run.stats import mcnemar_exact

    rows = []
    n = max((len(p) for p in per_seed.values()), default=0)
    for i in range(n):
        pts = [p[i] for p in per_seed.values() if len(p) > i]
        rounds = sum(p["rounds"] for p in pts)
        base = sum(p["base"]["successes"] for p in pts)
        res = sum(p["resfit"]["successes"] for p in pts)
        fixed = sum(p["paired"]["fixed"] for p in pts)
        broken = sum(p["paired"]["broken"] for p in pts)
        rows.append(
            {
                "target_minutes": pts[0]["target_minutes"],
                "seeds": len(pts),
                "robot_minutes": sum(p["robot_minutes"] for p in pts) / len(pts),
                "episodes": sum(p["episodes"] for p in pts) / len(pts),
                "rounds": rounds,
                "base_success": base / rounds,
                "resfit_success": res / rounds,
                "gain": (res - base) / rounds,
                "fixed": fixed,
                "broken": broken,
                "p_value": mcnemar_exact(fixed, broken),
            }
        )
    return rows


def plot(per_seed: dict[int, list[dict]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for seed, pts in sorted(per_seed.items()):
        if not pts:
            continue
        for ax, x in zip(axes, ("robot_minutes", "episodes")):
            xs = [0.0] + [p[x] for p in pts]
            ys = [pts[0]["base"]["success_rate"]] + [p["resfit"]["success_rate"] for p in pts]
            lo = [pts[0]["base"]["ci_low"]] + [p["resfit"]["ci_low"] for p in pts]
            hi = [pts[0]["base"]["ci_high"]] + [p["resfit"]["ci_high"] for p in pts]
            line = ax.plot(xs, ys, marker="o", label=f"ResFiT seed {seed}")[0]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
            base = [pts[0]["base"]["success_rate"]] + [p["base"]["success_rate"] for p in pts]
            ax.plot(xs, base, ls="--", marker=".", color=line.get_color(), lw=1)
    axes[0].set_xlabel("robot time (min: reset + control + labelling)")
    axes[1].set_xlabel("training episodes")
    axes[0].set_ylabel("success (blind A/B, Wilson 95%)")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{title} (dashed: the base in the same A/B sessions)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    del argv
    from resfit_jax.run.runtime import setup_script

    setup_script()
    import dataclasses

    from resfit_jax.robot.loop import LoopConfig
    from resfit_jax.robot.time_curve import CurveSchedule, read_points
    from resfit_jax.run.configs import usage_error
    from resfit_jax.run.machine import machine_info
    from resfit_jax.sim.presets import default_recipe, preset

    out = FLAGS.out or os.path.join("runs", "robot_time", FLAGS.task)
    try:
        sim_cfg = preset(FLAGS.task, "cpu")
        recipe = FLAGS.recipe or default_recipe(FLAGS.task)
        from resfit_jax import envs

        task = envs.make(FLAGS.task)
    except (KeyError, ValueError) as e:
        usage_error(str(e).strip('"'))
    ratio = FLAGS.updates_per_env_step or 1.0 / sim_cfg.num_envs
    if ratio <= 0:
        usage_error(f"--updates_per_env_step must be > 0, got {ratio}.")
    ab_loop = None
    if not FLAGS.ab_realtime:  # a simulated robot: as fast as the machine runs it
        ab_loop = LoopConfig(
            control_hz=1e4, max_episode_steps=task.horizon, max_overruns=task.horizon
        )
    try:
        schedule = CurveSchedule(
            FLAGS.robot_minutes,
            FLAGS.eval_every_minutes,
            FLAGS.ab_rounds,
            FLAGS.final_ab_rounds,
            ab_seed=0,
            ab_loop=ab_loop,
        )
    except ValueError as e:
        usage_error(str(e))
    seeds = _seeds()
    print(
        f"Robot-time curve of {FLAGS.task} ({recipe} recipe), seeds {seeds}: "
        f"{FLAGS.robot_minutes:g} robot minutes each, blind A/B every "
        f"{FLAGS.eval_every_minutes:g} min ({FLAGS.ab_rounds} rounds, "
        f"{FLAGS.final_ab_rounds} at the end), in {out}"
    )
    t0 = time.monotonic()
    for seed in seeds:
        try:
            run_seed(seed, out, ratio, schedule)
        except KeyboardInterrupt:
            print(
                f"INTERRUPTED: finished episodes, rounds and points are kept in {out}; "
                "continue with the same command.",
                file=sys.stderr,
            )
            return 130
    per_seed = {s: read_points(os.path.join(out, f"seed_{s}", "curve")) for s in range(FLAGS.seeds)}
    per_seed = {s: p for s, p in per_seed.items() if p}
    rows = summarize(per_seed)
    print("\n| robot min (target) | episodes | seeds | base | ResFiT | fixed / broken | p |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['robot_minutes']:.1f} ({r['target_minutes']:g}) | {r['episodes']:.0f} | "
            f"{r['seeds']} | {r['base_success']:.1%} | {r['resfit_success']:.1%} | "
            f"{r['fixed']} / {r['broken']} | {r['p_value']:.2g} |"
        )
    result = {
        "task": FLAGS.task,
        "recipe": recipe,
        "base": os.path.abspath(FLAGS.base or os.path.join("runs", "bc", FLAGS.task)),
        "updates_per_env_step": ratio,
        "schedule": dataclasses.asdict(schedule),
        "latency_s": FLAGS.latency_s,
        "jitter_s": FLAGS.jitter_s,
        "summary": rows,
        "seeds": {str(s): p for s, p in per_seed.items()},
        "wall_minutes_this_call": (time.monotonic() - t0) / 60.0,
        "machine": machine_info(),
    }
    paths = [os.path.join(out, "robot_time.json")] + ([FLAGS.results] if FLAGS.results else [])
    for path in paths:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
    png = os.path.join(out, "robot_time.png")
    plot(per_seed, png, f"{FLAGS.task}, {recipe} recipe, simulated robot")
    print(f"wrote {paths[0]} and {png}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
