"""Quick start, the main job end to end on a laptop CPU: demos -> BC base -> ResFiT residual.

    python -m experiments.quickstart                     # PickPlace, CPU preset, 1 seed
    python -m experiments.quickstart --task=PixelPointReach --seeds=3   # from pixels
    python -m experiments.quickstart --env_steps=51200   # the arm preset's full residual run
    python -m experiments.quickstart --recipe=per_step   # the per-step residual instead

1. 30 noisy scripted-expert demos of PickPlace (RLDS, <out>/demos);
2. an ACT-style BC base trained on them, best checkpoint by success (<out>/bc);
3. residual TD3 on top of the frozen base in 16 MJX envs: warm-up collection, critic
   warm-up, main loop with evaluations every ~10k env steps (<out>/residual);
4. a "BC vs ResFiT" table (success and mean steps of successful episodes on the same
   evaluation episodes) and learning curves (<out>/residual/curves.png).
Each stage is skipped when its output exists, and an interrupted residual run continues from
its last checkpoint, so re-running the command picks up where it stopped.
"""

from __future__ import annotations

import os
import time

from absl import app, flags

QUICK_ENV_STEPS = 20_480  # the residual's main loop (at most; --env_steps)

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "task",
    "PickPlace",
    "Task with a residual preset (PickPlace, PegInsertion, "
    "BimanualHandover, PointReach, PixelPointReach).",
)
flags.DEFINE_string("out", os.path.join("runs", "quickstart"), "Output directory.")
flags.DEFINE_integer("seeds", 1, "Residual seeds (vmapped in one process).")
flags.DEFINE_integer("demo_episodes", 30, "Expert demos for BC and the offline buffer.")
flags.DEFINE_enum(
    "recipe",
    None,
    ["per_step", "chunk"],
    "ResFiT recipe on the task preset (default: chunk on the arm tasks, per_step elsewhere; "
    "see experiments.train --helpfull).",
)
flags.DEFINE_integer("final_episodes", 300, "Held-out starts of the final BC vs ResFiT evaluation.")
flags.DEFINE_integer(
    "env_steps",
    None,
    "Main-loop env steps of the residual (default: the task preset's, at most 20,480; the arm "
    "presets train 51,200, and the quick start's kept state came at 10,240).",
)


def _quick(cfg):
    """The quick start's changes to the task's preset: a shorter main loop and a held-out
    evaluation large enough for one seed's paired test."""
    steps = FLAGS.env_steps or min(cfg.total_env_steps, QUICK_ENV_STEPS)
    return cfg.replace(final_episodes=FLAGS.final_episodes, total_env_steps=steps)


def main(argv):
    del argv
    from resfit_jax.run.runtime import setup_script

    setup_script()
    from resfit_jax import envs
    from resfit_jax.bc.frozen import open_base
    from resfit_jax.bc.pipeline import train_bc
    from resfit_jax.data import read_episodes
    from resfit_jax.data.demos import make_demos
    from resfit_jax.observations import camera_shapes, state_size
    from resfit_jax.run.checkpointing import content_hash
    from resfit_jax.run.configs import config_lines, resolve
    from resfit_jax.run.plotting import plot_runs
    from resfit_jax.sim.presets import default_recipe, preset, with_recipe
    from resfit_jax.sim.report import results_table
    from resfit_jax.sim.trainer import make_trainer, train_residual

    t0 = time.time()
    recipe_name = FLAGS.recipe or default_recipe(FLAGS.task)
    cfg = resolve(  # bad flags first; --config.final_episodes still wins
        lambda: _quick(with_recipe(preset(FLAGS.task, "cpu"), recipe_name))
    )
    task_name, out = FLAGS.task, os.path.abspath(FLAGS.out)
    from resfit_jax.run.configs import usage_error
    from resfit_jax.run.locks import RunLock, RunLockedError

    try:  # one quick start per --out (the kernel drops the lock however this process ends)
        RunLock(out, "quick start").acquire()
    except RunLockedError as e:
        usage_error(str(e))
    demos_root = os.path.join(out, "demos")
    demos = os.path.join(demos_root, "resfit_demos", "1.0.0")
    if os.path.exists(os.path.join(demos, "dataset_info.json")):
        print(f"[1/3] demos: reusing {demos}")
    else:
        print(f"[1/3] demos: {FLAGS.demo_episodes} noisy expert episodes of {task_name}")
        demos, _ = make_demos(task_name, FLAGS.demo_episodes, 1.0, demos_root, seed=1000)
    bc_dir = os.path.join(out, "bc")
    if os.path.exists(os.path.join(bc_dir, "summary.json")):
        print(f"[2/3] BC base: reusing {bc_dir}")
    else:
        print("[2/3] BC base: ACT chunk policy, CPU preset")
        train_bc(task_name, bc_dir, demos)
    task = envs.make(task_name)
    base, base_info = open_base(
        bc_dir,
        state_size(task.observation_spec),
        task.action_size,
        cameras=camera_shapes(task.observation_spec),
    )
    recipe = "" if recipe_name == "per_step" else f", recipe {recipe_name}"
    print(f"[3/3] ResFiT residual, CPU preset{recipe}:\n{config_lines(cfg)}")
    trainer = make_trainer(task, base, read_episodes(demos), cfg, list(range(FLAGS.seeds)))
    res_dir = os.path.join(out, "residual")
    resume = os.path.isdir(os.path.join(res_dir, "checkpoints"))
    summary = train_residual(
        trainer,
        res_dir,
        resume=resume,
        task_name=task_name,
        extra_info={"base": bc_dir, "demos": demos, "scale": "cpu"},
        identity={"base": content_hash(base_info["path"]), "demos": content_hash(demos)},
    )
    png = os.path.join(res_dir, "curves.png")
    plot_runs([res_dir], png, labels=["ResFiT"], title=f"{task_name}: ResFiT on a BC base")
    print()
    print(results_table(summary))
    print(
        f"\nLearning curves: {png}\nTotal wall clock: {(time.time() - t0) / 60:.1f} min "
        f"on {os.cpu_count()} CPU cores"
    )


def run():
    """Console script ``resfit-quickstart``."""
    from resfit_jax.run.configs import config_flag_parser

    app.run(main, flags_parser=config_flag_parser)


if __name__ == "__main__":
    run()
