r"""Train the residual-PPO baseline (ResiP recipe) on top of a frozen BC base in simulation.

    python -m experiments.train_residual_ppo --task=PickPlace --base=runs/bc/PickPlace \
        --out=runs/ppo/PickPlace --seeds=3
    python -m experiments.train_residual_ppo ... --resume      # continue (e.g. a long budget
                                                                # spread over several sittings)
    python -m experiments.train_residual_ppo ... --stop_at=2000000
    python -m experiments.train_residual_ppo ... --config.num_envs=512 \
        --config.learner.update_epochs=20

The same flags, base, demos (used to fit the normalizer exactly as ResFiT does), evaluation
starts and outputs as experiments/train_residual: <out>/metrics.jsonl, TensorBoard under
<out>/tb, orbax checkpoints (one per evaluation), config.json, summary.json with the
held-out matched evaluation (churn, gain, McNemar p-value). --scale: cpu (256 envs, 10M env
steps on PickPlace) or accelerator (4096 envs, 50M). Add the result to the headline table
with ``python -m benchmarks.headline add --run=<out>``.
"""
from __future__ import annotations

import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("task", "PickPlace", "Registered task name.")
flags.DEFINE_string("base", None, "BC base: train_bc run / checkpoint / export directory "
                    "(default runs/bc/<task>).")
flags.DEFINE_string("demos", None, "RLDS demos the normalizer is fitted on (default: the "
                    "base's).")
flags.DEFINE_enum("scale", "cpu", ["cpu", "accelerator"], "Preset scale.")
flags.DEFINE_multi_string("override", [], "Config field overrides, e.g. num_envs=512 (same as "
                          "--config.num_envs=512).")
flags.DEFINE_integer("seeds", 1, "Number of seeds, trained vmapped in one process.")
flags.DEFINE_integer("seed", 0, "First seed.")
flags.DEFINE_string("out", None, "Run directory (default runs/ppo/<task>).")
flags.DEFINE_bool("resume", False, "Continue the run in --out from its latest checkpoint.")
flags.DEFINE_integer("stop_at", None, "Stop after the first checkpoint at or past this many "
                     "env steps (resume later with --resume).")


def main(argv):
    del argv
    from resfit_jax.runtime import setup_script
    setup_script()
    from bases.frozen import open_base_and_demos
    from resfit_jax import envs
    from resfit_jax.observations import camera_shapes, state_size
    from resfit_jax.checkpointing import content_hash
    from resfit_jax.configs import config_lines, config_overrides, resolve, usage_error
    from resfit_jax.locks import RunLockedError
    from resfit_jax.sim.ppo_presets import ppo_preset
    from resfit_jax.sim.ppo_trainer import make_ppo_trainer, train_residual_ppo
    from resfit_jax.sim.report import results_table

    if FLAGS.seeds < 1:
        usage_error(f"--seeds must be >= 1 (got {FLAGS.seeds}).")
    cfg = resolve(lambda: ppo_preset(FLAGS.task, FLAGS.scale), FLAGS.override)
    task = envs.make(FLAGS.task)
    print(f"Resolved config ({FLAGS.task}, residual PPO, {FLAGS.scale}):\n{config_lines(cfg)}")
    try:
        base, info, demos, episodes = open_base_and_demos(
            FLAGS.base or os.path.join("runs", "bc", FLAGS.task), FLAGS.demos,
            state_size(task.observation_spec), task.action_size,
            cameras=camera_shapes(task.observation_spec))
    except (FileNotFoundError, ValueError) as e:
        usage_error(str(e))
    print(f"Base: {info['path']} ({info['format']}); normalizer from {len(episodes)} demos in "
          f"{demos}")
    trainer = make_ppo_trainer(task, base, episodes, cfg,
                               list(range(FLAGS.seed, FLAGS.seed + FLAGS.seeds)))
    print(f"{trainer.iterations} PPO iterations of {trainer.env_steps_per_chunk:,} env steps "
          f"({cfg.num_envs} envs x {trainer.loop.rollout_length} steps) per seed")
    out = FLAGS.out or os.path.join("runs", "ppo", FLAGS.task)
    identity = {"base": content_hash(info["path"]), "demos": content_hash(demos)}
    try:
        summary = train_residual_ppo(trainer, out, resume=FLAGS.resume, task_name=FLAGS.task,
                                     stop_at_env_steps=FLAGS.stop_at, identity=identity,
                                     extra_info={"base": info["path"], "demos": demos,
                                                 "scale": FLAGS.scale, "method": "ResidualPPO",
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
    print(f"Run directory: {os.path.abspath(out)} (plot: python -m experiments.plot {out})")


if __name__ == "__main__":
    from resfit_jax.configs import config_flag_parser
    app.run(main, flags_parser=config_flag_parser)
