r"""Generate scripted-expert demonstrations for a task and write them as RLDS (array_record).

    python -m experiments.make_demos --task=PickPlace --episodes=100 --noise=1.0 \
        --out=runs/demos/pick_place --seed=0

Prints the expert's success rate; by default only successful episodes are kept (like human
demos). Read back with ``resfit_jax.data.read_episodes(<printed dataset dir>)``.
"""

from __future__ import annotations

import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("task", "PickPlace", "Registered task name.")
flags.DEFINE_integer("episodes", 100, "Number of episodes to write.")
flags.DEFINE_float(
    "noise",
    1.0,
    "Human-likeness of the demos: scales speed variation, action "
    "noise, position errors and hesitations (0 = clean expert).",
)
flags.DEFINE_string("out", None, "Output directory (the dataset goes to <out>/resfit_demos/1.0.0).")
flags.DEFINE_integer("seed", 0, "Seed; episode i uses fold_in(PRNGKey(seed), i).")
flags.DEFINE_integer("num_envs", 32, "Episodes rolled out in parallel.")
flags.DEFINE_bool("keep_failures", False, "Also write unsuccessful episodes.")


def main(argv):
    del argv
    from resfit_jax.run.runtime import setup_script

    setup_script()
    out = FLAGS.out or os.path.join("runs", "demos", FLAGS.task)
    from resfit_jax.data.demos import make_demos
    from resfit_jax.run.configs import usage_error
    from resfit_jax.run.locks import RunLock, RunLockedError

    try:
        with RunLock(out, "demo collection"):  # one writer per dataset directory
            make_demos(
                FLAGS.task,
                FLAGS.episodes,
                FLAGS.noise,
                out,
                FLAGS.seed,
                FLAGS.num_envs,
                FLAGS.keep_failures,
            )
    except (ValueError, KeyError, FileExistsError, RunLockedError) as e:
        usage_error(str(e).strip('"'))


def run():
    """Console script ``resfit-demos``."""
    app.run(main)


if __name__ == "__main__":
    run()
