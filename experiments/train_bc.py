r"""Train a BC chunk policy (ACT-style transformer or MLP) on RLDS demos and freeze it.

    python -m experiments.train_bc --task=PickPlace \
        --demos=runs/demos/PickPlace/resfit_demos/1.0.0 \
        --out=runs/bc/PickPlace
    python -m experiments.train_bc --task=PickPlace --out=runs/bc/PickPlace   # makes demos first

Every --eval_every steps the policy runs --eval_episodes full MJX episodes (chunk queue,
open loop); the best checkpoint by success is kept (orbax, <out>/checkpoint) with its config
and normalisation, which is the archival format of the base. Metrics go to TensorBoard
(<out>/tb) and JSONL (<out>/metrics.jsonl). At the end the best base is re-evaluated,
exported as a jax.export artifact (<out>/export) and its success rate and mean steps printed.
"""

from __future__ import annotations

import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("task", "PickPlace", "Registered task name.")
flags.DEFINE_string("demos", None, "RLDS dataset dir (from make_demos); default: generate.")
flags.DEFINE_integer("demo_episodes", 30, "Demos to generate when --demos is not given.")
flags.DEFINE_float("demo_noise", 1.0, "Demo noise when generating.")
flags.DEFINE_integer("max_demos", None, "Use at most this many demo episodes.")
flags.DEFINE_enum("policy", "act", ["act", "mlp"], "Chunk policy architecture.")
flags.DEFINE_enum("preset", "cpu", ["cpu", "paper"], "BCConfig preset.")
flags.DEFINE_integer(
    "steps",
    None,
    "Gradient steps (default: the preset's; 8000 for PegInsertion on the CPU preset).",
)
flags.DEFINE_integer("batch_size", None, "Batch size (default: the preset's).")
flags.DEFINE_integer("chunk_size", None, "Chunk length K (default 20; 5 on PixelPointReach).")
flags.DEFINE_integer("execution_horizon", None, "Actions executed per chunk (default K).")
flags.DEFINE_integer("eval_every", 1000, "Evaluate every N steps.")
flags.DEFINE_integer("eval_episodes", 50, "Episodes per periodic evaluation.")
flags.DEFINE_integer("final_episodes", 100, "Episodes of the final evaluation of the best.")
flags.DEFINE_integer("num_envs", 50, "Parallel envs during evaluation.")
flags.DEFINE_string("out", None, "Run directory (default runs/bc/<task>).")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_bool("export", True, "Write a jax.export artifact of the best base.")
flags.DEFINE_bool(
    "relative_actions",
    True,
    "Predict joint targets relative to the measured "
    "joint positions (the task's action_obs_index); the base still outputs "
    "absolute actions.",
)


def main(argv):
    del argv
    from resfit_jax.run.runtime import setup_script

    setup_script()
    from resfit_jax.bc.pipeline import train_bc
    from resfit_jax.run.configs import usage_error
    from resfit_jax.run.locks import RunLockedError

    for name in ("eval_every", "eval_episodes", "final_episodes", "num_envs", "demo_episodes"):
        if getattr(FLAGS, name) < 1:
            usage_error(f"--{name} must be >= 1 (got {getattr(FLAGS, name)}).")
    try:
        train_bc(
            FLAGS.task,
            FLAGS.out or os.path.join("runs", "bc", FLAGS.task),
            FLAGS.demos,
            FLAGS.policy,
            FLAGS.preset,
            FLAGS.steps,
            FLAGS.batch_size,
            FLAGS.chunk_size,
            FLAGS.execution_horizon,
            FLAGS.eval_every,
            FLAGS.eval_episodes,
            FLAGS.final_episodes,
            FLAGS.num_envs,
            FLAGS.seed,
            FLAGS.max_demos,
            FLAGS.demo_episodes,
            FLAGS.demo_noise,
            FLAGS.export,
            FLAGS.relative_actions,
        )
    except (KeyError, ValueError, FileNotFoundError, FileExistsError, RunLockedError) as e:
        usage_error(str(e).strip('"'))


def run():
    """Console script ``resfit-train-bc``."""
    app.run(main)


if __name__ == "__main__":
    run()
