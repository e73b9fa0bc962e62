r"""Train a residual policy (ResFiT) on top of a frozen BC base in MJX simulation, or one of
the off-policy baselines on the same base, demos, starts and budget (--method).

    python -m experiments.train_residual --task=PickPlace --base=runs/bc/PickPlace \
        --out=runs/residual/PickPlace --seeds=3
    python -m experiments.train_residual ... --resume            # continue an interrupted run
    python -m experiments.train_residual ... --config.replay.utd=8 --config.num_envs=32
    python -m experiments.train_residual ... --method=ibrl      # or rlpd (spec/baselines.md)

--base is a train_bc run, checkpoint or export directory. The demos for the offline buffer
default to the ones the base was trained on (--demos overrides; needed for an export).
--scale picks the preset (cpu: 2x256 networks, 16 envs, 100k env steps; paper: 2x1024, one
env, UTD 4, 300k-500k steps); --config.<field>=value (or --override=<field>=value) changes
single fields of it, nested ones with dots. --seeds S trains S seeds vmapped in one process.
--config.mesh=D,M splits envs, replay and batches over D devices (seeds over M;
--config.shards sets the layout, default D); on several hosts run the same command on each
with --coordinator=host0:port --num_processes=P --process_id=i (docs/scaling.md).
Library logs are hidden; --verbosity=0 shows them. Writes <out>/metrics.jsonl, TensorBoard under <out>/tb,
orbax checkpoints under <out>/checkpoints, config.json and summary.json.
"""
from __future__ import annotations

import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("task", "PickPlace", "Registered task name.")
flags.DEFINE_string("base", None, "BC base: train_bc run / checkpoint / export directory "
                    "(default runs/bc/<task>).")
flags.DEFINE_string("demos", None, "RLDS demos for the offline buffer (default: the base's).")
flags.DEFINE_enum("scale", "cpu", ["cpu", "paper"], "Preset scale.")
flags.DEFINE_enum("method", "resfit", ["resfit", "rlpd", "ibrl"],
                  "resfit, or a baseline's recipe on the same task preset: rlpd (the same "
                  "learner with no base), ibrl (the base and an RL actor propose, the critic "
                  "picks).")
flags.DEFINE_multi_string("override", [], "Config field overrides, e.g. replay.utd=8 (same as "
                          "--config.replay.utd=8).")
flags.DEFINE_integer("seeds", 1, "Number of seeds, trained vmapped in one process.")
flags.DEFINE_integer("seed", 0, "First seed.")
flags.DEFINE_string("out", None, "Run directory (default runs/residual/<task>).")
flags.DEFINE_bool("resume", False, "Continue the run in --out from its latest checkpoint.")
flags.DEFINE_string("coordinator", None, "Multi-host: host:port of process 0 (or "
                    "RESFIT_JAX_COORDINATOR); run the same command on every host.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes (one per host).")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index (0 writes the "
                     "run's files).")
flags.DEFINE_integer("stop_at", None, "Stop after the first checkpoint at or past this many "
                     "main-loop env steps (resume later with --resume).")


def main(argv):
    del argv
    from resfit_jax.runtime import setup_script
    setup_script()
    from resfit_jax.sharding import initialize_distributed, primary
    initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    say = print if primary() else (lambda *a, **k: None)
    from bases.frozen import open_base_and_demos
    from resfit_jax import envs
    from resfit_jax.observations import camera_shapes, state_size
    from resfit_jax.configs import config_lines, config_overrides, resolve, usage_error
    from resfit_jax.sim.presets import preset
    from resfit_jax.sim.report import results_table
    from resfit_jax.sim.trainer import make_trainer, train_residual
    from resfit_jax.checkpointing import content_hash
    from resfit_jax.locks import RunLockedError

    if FLAGS.seeds < 1:
        usage_error(f"--seeds must be >= 1 (got {FLAGS.seeds}).")
    cfg = resolve(lambda: preset(FLAGS.task, FLAGS.scale, FLAGS.method), FLAGS.override)
    task = envs.make(FLAGS.task)
    say(f"Resolved config ({FLAGS.task}, {FLAGS.scale}, {FLAGS.method}):\n"
          f"{config_lines(cfg)}")
    say(f"critic steps per env step: {cfg.critic_steps_per_env_step:g}")
    try:
        base, info, demos, episodes = open_base_and_demos(
            FLAGS.base or os.path.join("runs", "bc", FLAGS.task), FLAGS.demos,
            state_size(task.observation_spec), task.action_size,
            cameras=camera_shapes(task.observation_spec))
    except (FileNotFoundError, ValueError) as e:
        usage_error(str(e))
    say(f"Base: {info['path']} ({info['format']}); {len(episodes)} demos from {demos}")
    try:          # e.g. a --config.mesh with more devices than this machine has
        trainer = make_trainer(task, base, episodes, cfg,
                               list(range(FLAGS.seed, FLAGS.seed + FLAGS.seeds)))
    except ValueError as e:
        usage_error(str(e))
    out = FLAGS.out or os.path.join("runs", "residual" if FLAGS.method == "resfit"
                                    else FLAGS.method, FLAGS.task)
    identity = {"base": content_hash(info["path"]), "demos": content_hash(demos)}
    try:
        summary = train_residual(trainer, out, resume=FLAGS.resume, task_name=FLAGS.task,
                                 stop_at_env_steps=FLAGS.stop_at, identity=identity,
                                 extra_info={"base": info["path"], "demos": demos,
                                             "scale": FLAGS.scale, "method": FLAGS.method,
                                             "overrides": config_overrides(FLAGS.override)})
    except (RunLockedError, FileExistsError) as e:
        usage_error(str(e))
    except ValueError as e:
        if not str(e).startswith("--resume"):
            raise
        usage_error(str(e))
    say()
    say(results_table(summary))
    if not summary["complete"]:
        say(f"Stopped early at {summary['env_steps']:,} env steps; continue with --resume.")
    say(f"Run directory: {os.path.abspath(out)} (plot: python -m experiments.plot {out})")


if __name__ == "__main__":
    from resfit_jax.configs import config_flag_parser
    app.run(main, flags_parser=config_flag_parser)
