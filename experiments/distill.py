r"""Distil an improved policy back into its BC base.

    python -m experiments.distill --run=runs/probes/ee_chunk --out=runs/bc/PickPlaceEE_distilled
    # then a residual on the distilled base ("round 2"):
    python -m experiments.train --task=PickPlaceEE --base=runs/bc/PickPlaceEE_distilled \
        --recipe=chunk --out=runs/round2/PickPlaceEE

--run is a finished ResFiT or residual-PPO run (experiments.train --out with --method=resfit
or ppo, or a setting of studies.ablate; --seed_index picks one of its seeds). Its policy
(base + deterministic residual: PPO's Gaussian mean; the state the run kept, or
--state=last) runs --episodes episodes in MJX on starts of their own (not the run's
evaluation starts); the successful ones, each cut at its first success (or with --keep=all
every frame of every rollout, labelled with the action the policy took), are written to
<out>/distill_data (RLDS) and the base is fine-tuned on its demos plus these episodes with
its chunked loss, without dropout (--dropout), each frame's chunk label being the chunk
the improved policy would execute had it decided at that frame (the base's own chunk plus
the residual's correction; --labels=executed: the actions executed after it), starting
from its own parameters and normalizer; the best periodic checkpoint (the starting base
included) is kept and exported as train_bc does. At the end the base, the improved policy
and the distilled base run on the run's own held-out starts for that seed, paired, and
<out>/distill_summary.json records them. Running again with the same flags reuses the
recorded rollouts.
"""

from __future__ import annotations

import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "run", None, "A finished ResFiT or residual-PPO run directory (the improved policy)."
)
flags.DEFINE_string(
    "out", None, "Directory of the distilled base (default runs/bc/<task>_distilled)."
)
flags.DEFINE_integer("episodes", 1000, "Rollouts of the improved policy.")
flags.DEFINE_enum(
    "keep",
    "successes",
    ["successes", "all"],
    "successes: the successful rollouts, cut at their first success; all: every frame of "
    "every rollout, labelled with the policy's action.",
)
flags.DEFINE_enum(
    "labels",
    "replanned",
    ["executed", "replanned"],
    "Chunk labels of every training frame: executed, the actions taken after it; "
    "replanned, the improved policy's chunk as if it decided there (the base's own chunk "
    "plus the residual's correction).",
)
flags.DEFINE_float("dropout", 0.0, "Dropout rate while fine-tuning (the ACT bases train at 0.1).")
flags.DEFINE_integer("seed_index", 0, "Which of the run's seeds to distil.")
flags.DEFINE_enum("state", "kept", ["kept", "last"], "The run's kept or last learner state.")
flags.DEFINE_integer("steps", 2000, "Fine-tuning gradient steps.")
flags.DEFINE_float("lr", 1e-5, "Fine-tuning learning rate (the ACT bases train at 3e-4).")
flags.DEFINE_integer("eval_every", 500, "Evaluate every N fine-tuning steps.")
flags.DEFINE_integer("eval_episodes", 200, "Episodes per periodic evaluation (selection).")
flags.DEFINE_integer("seed", 0, "Seed of the rollout starts and of fine-tuning.")


def main(argv):
    del argv
    from resfit_jax.run.runtime import setup_script

    setup_script()
    from resfit_jax.bc.distill import DistillOptions, distill_run, fit_line, held_out_table
    from resfit_jax.run.configs import usage_error
    from resfit_jax.run.locks import RunLockedError

    if not FLAGS.run:
        usage_error(
            "Pass --run=<a finished ResFiT or residual-PPO run directory> (the improved policy)."
        )
    try:
        options = DistillOptions(
            FLAGS.episodes,
            FLAGS.keep,
            FLAGS.seed_index,
            FLAGS.state,
            FLAGS.steps,
            FLAGS.eval_every,
            FLAGS.eval_episodes,
            FLAGS.seed,
            FLAGS.lr,
            FLAGS.labels,
            FLAGS.dropout,
        )
        summary = distill_run(FLAGS.run, FLAGS.out, options)
    except (KeyError, ValueError, FileNotFoundError, RunLockedError) as e:
        usage_error(str(e).strip('"'))
    print("\n" + held_out_table(summary["held_out"]))
    print(fit_line(summary["correction_fit"]))
    print(f"wrote {os.path.join(summary['out'], 'distill_summary.json')}")
    return 0


def run():
    """Console script ``resfit-distill``."""
    app.run(main)


if __name__ == "__main__":
    run()
