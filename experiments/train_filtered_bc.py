"""Filtered BC (online BC fine-tuning) on a train_bc base, the baseline that tunes the base
itself: roll out, keep successes, fine-tune on demos + successes, repeat.

    python -m experiments.train_filtered_bc --task=PickPlace --base=runs/bc/PickPlace --seeds=3
    python -m experiments.train_filtered_bc ... --config.steps_per_round=50 --resume

--base must be a train_bc run or checkpoint directory (the parameters are what it tunes).
The budget and evaluation default to the task's ResFiT CPU preset (main loop + warm-up
env steps); --config.<field>=value changes FilteredBCConfig fields. Outputs are those of
train_residual: metrics.jsonl, TensorBoard, checkpoints, config.json, summary.json with the
held-out evaluation paired against the frozen base, --resume, --stop_at.
"""
from __future__ import annotations

import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("task", "PickPlace", "Registered task name.")
flags.DEFINE_string("base", None, "train_bc run / checkpoint directory (default runs/bc/<task>).")
flags.DEFINE_string("demos", None, "RLDS demos for fine-tuning (default: the base's).")
flags.DEFINE_multi_string("override", [], "FilteredBCConfig overrides (like --config.*).")
flags.DEFINE_integer("seeds", 1, "Number of seeds, trained vmapped in one process.")
flags.DEFINE_integer("seed", 0, "First seed.")
flags.DEFINE_string("out", None, "Run directory (default runs/filtered_bc/<task>).")
flags.DEFINE_bool("resume", False, "Continue the run in --out from its latest checkpoint.")
flags.DEFINE_integer("stop_at", None, "Stop after the first checkpoint at or past this many "
                     "env steps (resume later with --resume).")


def main(argv):
    del argv
    from resfit_jax.runtime import setup_script
    setup_script()
    from bases.filtered_bc import filtered_bc_preset, make_filtered_bc, train_filtered_bc
    from bases.frozen import open_base_and_demos
    from resfit_jax import envs
    from resfit_jax.observations import camera_shapes, state_size
    from resfit_jax.checkpointing import content_hash
    from resfit_jax.configs import config_lines, config_overrides, resolve, usage_error
    from resfit_jax.locks import RunLockedError
    from resfit_jax.sim.report import results_table

    cfg = resolve(lambda: filtered_bc_preset(FLAGS.task), FLAGS.override)
    task = envs.make(FLAGS.task)
    print(f"Resolved config ({FLAGS.task}, Filtered BC):\n{config_lines(cfg)}")
    base_dir = FLAGS.base or os.path.join("runs", "bc", FLAGS.task)
    try:
        _, info, demos, episodes = open_base_and_demos(
            base_dir, FLAGS.demos, state_size(task.observation_spec), task.action_size,
            cameras=camera_shapes(task.observation_spec))
        trainer = make_filtered_bc(task, base_dir, episodes, cfg,
                                   list(range(FLAGS.seed, FLAGS.seed + FLAGS.seeds)))
    except (FileNotFoundError, ValueError) as e:
        usage_error(str(e))
    print(f"Base: {info['path']}; {len(episodes)} demos from {demos}; {trainer.iterations} "
          f"rounds of {cfg.num_envs} episodes")
    out = FLAGS.out or os.path.join("runs", "filtered_bc", FLAGS.task)
    identity = {"base": content_hash(info["path"]), "demos": content_hash(demos)}
    try:
        summary = train_filtered_bc(trainer, out, resume=FLAGS.resume, task_name=FLAGS.task,
                                    stop_at_env_steps=FLAGS.stop_at, identity=identity,
                                    extra_info={"base": info["path"], "demos": demos,
                                                "scale": "cpu", "method": "fbc",
                                                "overrides": config_overrides(FLAGS.override)})
    except (RunLockedError, FileExistsError) as e:
        usage_error(str(e))
    except ValueError as e:
        if not str(e).startswith("--resume"):
            raise
        usage_error(str(e))
    print()
    print(results_table(summary))
    if not summary["complete"]:
        print(f"Stopped early at {summary['env_steps']:,} env steps; continue with --resume.")
    print(f"Run directory: {os.path.abspath(out)}")


if __name__ == "__main__":
    from resfit_jax.configs import config_flag_parser
    app.run(main, flags_parser=config_flag_parser)
