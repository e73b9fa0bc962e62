r"""Plot success vs env steps and steps-to-success of one or more residual runs to a PNG.

    python -m experiments.plot runs/residual/PickPlace runs/residual/PickPlace_utd8 \
        --labels=utd4,utd8 --png=runs/compare.png

Mean over seeds with a min-max band; the base's success is the dashed line.
"""

from __future__ import annotations

import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("png", None, "Output PNG (default <first run>/curves.png).")
flags.DEFINE_list("labels", None, "Legend labels, one per run (default: directory names).")
flags.DEFINE_string("title", None, "Figure title.")


def main(argv):
    from resfit_jax.run.runtime import setup_script

    setup_script()
    runs = argv[1:]
    if not runs:
        raise app.UsageError("Give one or more run directories (with metrics.jsonl).")
    from resfit_jax.run.configs import usage_error
    from resfit_jax.run.plotting import plot_runs

    for d in runs:
        if not os.path.isfile(os.path.join(d, "metrics.jsonl")):
            usage_error(f"{d} is not a run directory (no metrics.jsonl); give a training --out.")
    png = FLAGS.png or os.path.join(runs[0], "curves.png")
    try:
        curves = plot_runs(runs, png, FLAGS.labels, FLAGS.title)
    except (ValueError, OSError) as e:  # no evaluations yet, unwritable PNG, label count
        usage_error(str(e))
    for d, c in zip(runs, curves):
        final = c["success"][:, -1]
        print(
            f"{d}: {len(c['seeds'])} seeds, last eval at {c['env_steps'][-1]:,} env steps: "
            f"success {final.mean():.1%} (min {final.min():.0%}, max {final.max():.0%}); "
            f"base {c['base'].mean():.1%}"
        )
    print(f"Wrote {png}")


def run():
    """Console script ``resfit-plot``."""
    app.run(main)


if __name__ == "__main__":
    run()
