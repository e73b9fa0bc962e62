r"""Train on top of a frozen BC base in MJX simulation: ResFiT (the default) or one of the
baselines on the same base, demos, starts and budget.

    python -m experiments.train --task=PickPlace --base=runs/bc/PickPlace --seeds=3
    python -m experiments.train ... --resume                    # continue an interrupted run
    python -m experiments.train ... --config.replay.utd=8 --config.num_envs=32
    python -m experiments.train ... --recipe=chunk              # the semi-MDP residual
    python -m experiments.train ... --method=ppo --stop_at=2000000
    python -m experiments.train ... --method=fbc --config.steps_per_round=50

--method: resfit (residual TD3), rlpd (the same learner with no base), ibrl (the base and an
RL actor propose, the critic picks), ppo (residual PPO, the ResiP recipe), fbc (Filtered BC:
the base fine-tuned on its own successes; needs a train_bc run or checkpoint as --base).
--base is a train_bc run, checkpoint or export directory; the demos default to the ones the
base was trained on (--demos overrides; needed for an export). --scale picks the preset:
cpu (every method), paper (the off-policy methods: 2x1024 networks, one env, UTD 4) or
accelerator (ppo: 4096 envs). --recipe=chunk turns ResFiT's preset into the semi-MDP residual
with a chunk-level critic (sim.presets.RECIPES). --config.<field>=value changes single fields
of it, nested ones with dots. --seeds S trains S seeds vmapped in one process.
--config.mesh=D,M splits envs, replay and batches over D devices (seeds over M); on several
hosts run the same command on each with --coordinator=host0:port --num_processes=P
--process_id=i (docs/scaling.md).

Writes <out>/metrics.jsonl, TensorBoard under <out>/tb, orbax checkpoints under
<out>/checkpoints, config.json and summary.json (the held-out evaluation paired against the
base: churn, gain, McNemar p-value). Library logs are hidden; --verbosity=0 shows them.
"""

from __future__ import annotations

import os

from absl import app, flags

METHODS = ("resfit", "rlpd", "ibrl", "ppo", "fbc")
SCALES = {
    "resfit": ("cpu", "paper"),
    "rlpd": ("cpu", "paper"),
    "ibrl": ("cpu", "paper"),
    "ppo": ("cpu", "accelerator"),
    "fbc": ("cpu",),
}
RUN_DIRS = {
    "resfit": "residual",
    "rlpd": "rlpd",
    "ibrl": "ibrl",
    "ppo": "ppo",
    "fbc": "filtered_bc",
}
METHOD_NAMES = {
    "resfit": "ResFiT",
    "rlpd": "Tuned RLPD",
    "ibrl": "IBRL",
    "ppo": "residual PPO",
    "fbc": "Filtered BC",
}

FLAGS = flags.FLAGS
flags.DEFINE_string("task", "PickPlace", "Registered task name.")
flags.DEFINE_enum(
    "method", "resfit", METHODS, "What to train on the base (see the module docstring)."
)
flags.DEFINE_string(
    "base", None, "BC base: train_bc run / checkpoint / export directory (default runs/bc/<task>)."
)
flags.DEFINE_string("demos", None, "RLDS demos (default: the base's).")
flags.DEFINE_enum("scale", "cpu", ["cpu", "paper", "accelerator"], "Preset scale.")
flags.DEFINE_enum(
    "recipe",
    None,
    ["per_step", "chunk"],
    "ResFiT recipe on the task preset: per_step (the preset) or chunk (the semi-MDP residual "
    "with a chunk-level critic, docs/semi_mdp_study.md); --config overrides apply after it. "
    "Default: chunk on the arm tasks (PickPlace, PegInsertion, BimanualHandover and their EE "
    "variants), per_step elsewhere and for the baselines.",
)
flags.DEFINE_integer("seeds", 1, "Number of seeds, trained vmapped in one process.")
flags.DEFINE_integer("seed", 0, "First seed.")
flags.DEFINE_string("out", None, "Run directory (default runs/<method dir>/<task>).")
flags.DEFINE_bool("resume", False, "Continue the run in --out from its latest checkpoint.")
flags.DEFINE_integer(
    "stop_at",
    None,
    "Stop after the first checkpoint at or past this many "
    "main-loop env steps (resume later with --resume).",
)
flags.DEFINE_string(
    "coordinator",
    None,
    "Multi-host: host:port of process 0 (or "
    "RESFIT_JAX_COORDINATOR); run the same command on every host.",
)
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes (one per host).")
flags.DEFINE_integer(
    "process_id", None, "Multi-host: this process's index (0 writes the run's files)."
)


def main(argv):
    del argv
    from resfit_jax.run.runtime import setup_script

    setup_script()
    from resfit_jax.run.configs import usage_error
    from resfit_jax.sharding import initialize_distributed, primary

    method = FLAGS.method
    if FLAGS.scale not in SCALES[method]:
        usage_error(
            f"--scale={FLAGS.scale} does not exist for --method={method}; choose "
            f"from {', '.join(SCALES[method])}."
        )
    if FLAGS.seeds < 1:
        usage_error(f"--seeds must be >= 1 (got {FLAGS.seeds}).")
    if method in ("ppo", "fbc") and (FLAGS.coordinator or FLAGS.num_processes):
        usage_error(f"--method={method} runs on one host; drop --coordinator/--num_processes.")
    initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    say = print if primary() else (lambda *a, **k: None)

    from resfit_jax import envs
    from resfit_jax.bc.frozen import open_base_and_demos
    from resfit_jax.observations import camera_shapes, state_size
    from resfit_jax.run.checkpointing import content_hash
    from resfit_jax.run.configs import apply_overrides, config_lines, config_overrides
    from resfit_jax.run.locks import RunLockedError
    from resfit_jax.sim.presets import default_recipe, recipe_overrides
    from resfit_jax.sim.report import results_table
    from resfit_jax.sim.runs import RUN_METHOD_NAMES, method_preset, method_trainer

    if FLAGS.recipe not in (None, "per_step") and method != "resfit":
        usage_error(f"--recipe={FLAGS.recipe} is a ResFiT recipe; drop it for --method={method}.")
    recipe = FLAGS.recipe or (default_recipe(FLAGS.task) if method == "resfit" else "per_step")
    # one list, the recipe's overrides then --config: printed, trained (method_trainer
    # applies it to the same preset) and recorded in config.json
    overrides = recipe_overrides(recipe, config_overrides())
    try:
        cfg = apply_overrides(method_preset(method, FLAGS.task, FLAGS.scale), overrides)
    except ValueError as e:
        usage_error(str(e))
    task = envs.make(FLAGS.task)
    out = FLAGS.out or os.path.join("runs", RUN_DIRS[method], FLAGS.task)
    if FLAGS.resume and not os.path.isdir(os.path.join(out, "checkpoints")):
        usage_error(
            f"--resume: {os.path.abspath(out)} holds no run to resume (no checkpoints/); "
            "drop --resume to start a new run there, or give the run's --out."
        )
    say(
        f"Resolved config ({FLAGS.task}, {METHOD_NAMES[method]}, {FLAGS.scale}"
        f"{'' if recipe == 'per_step' else ', recipe ' + recipe}):\n"
        f"{config_lines(cfg)}"
    )
    if hasattr(cfg, "critic_steps_per_env_step"):
        say(f"critic steps per env step: {cfg.critic_steps_per_env_step:g}")
    if getattr(getattr(cfg, "residual", None), "semi_mdp", False):
        say(
            f"semi-MDP residual: a decision every {cfg.residual.decision_steps} env steps, "
            f"{cfg.critic_steps_per_decision:g} critic steps per decision"
            + (
                ", each an offset + slope over its window"
                if cfg.residual.window != "offset"
                else ""
            )
        )
    base_dir = FLAGS.base or os.path.join("runs", "bc", FLAGS.task)
    try:
        base, info, demos, episodes = open_base_and_demos(
            base_dir,
            FLAGS.demos,
            state_size(task.observation_spec),
            task.action_size,
            cameras=camera_shapes(task.observation_spec),
        )
        say(f"Base: {info['path']} ({info['format']}); {len(episodes)} demos from {demos}")
        seeds = list(range(FLAGS.seed, FLAGS.seed + FLAGS.seeds))
        trainer, train = method_trainer(
            method, FLAGS.task, (task, base, episodes), seeds, overrides, FLAGS.scale, base_dir
        )
    except (FileNotFoundError, ValueError) as e:  # e.g. a --config.mesh with more devices
        usage_error(str(e))  # than this machine has
    if method == "ppo":
        say(
            f"{trainer.iterations} PPO iterations of {trainer.env_steps_per_chunk:,} env steps "
            f"({cfg.num_envs} envs x {trainer.loop.rollout_length} steps) per seed"
        )
    elif method == "fbc":
        say(f"{trainer.iterations} rounds of {cfg.num_envs} episodes")
    identity = {"base": content_hash(info["path"]), "demos": content_hash(demos)}
    try:
        summary = train(
            trainer,
            out,
            resume=FLAGS.resume,
            task_name=FLAGS.task,
            stop_at_env_steps=FLAGS.stop_at,
            identity=identity,
            extra_info={
                "base": info["path"],
                "demos": demos,
                "scale": FLAGS.scale,
                "method": RUN_METHOD_NAMES.get(method, method),
                "recipe": recipe,
                "overrides": overrides,
            },
        )
    except (RunLockedError, FileExistsError) as e:
        usage_error(str(e))
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM: the run printed where its checkpoint is
        raise SystemExit(130) from None
    except ValueError as e:
        if not str(e).startswith("--resume"):
            raise
        usage_error(str(e))
    say()
    say(results_table(summary))
    if not summary["complete"]:
        say(f"Stopped early at {summary['env_steps']:,} env steps; continue with --resume.")
    say(f"Run directory: {os.path.abspath(out)} (plot: resfit-plot {out})")


def run():
    """Console script ``resfit-train``."""
    from resfit_jax.run.configs import config_flag_parser

    app.run(main, flags_parser=config_flag_parser)


if __name__ == "__main__":
    run()
