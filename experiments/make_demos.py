"""Generate scripted-expert demonstrations for a task and write them as RLDS (array_record).

    python -m experiments.make_demos --task=PickPlace --episodes=100 --noise=1.0 \
        --out=runs/demos/pick_place --seed=0

Prints the expert's success rate; by default only successful episodes are kept (like human
demos). Read back with ``resfit_jax.data.read_episodes(<printed dataset dir>)``.
"""
from __future__ import annotations

import os
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("task", "PickPlace", "Registered task name.")
flags.DEFINE_integer("episodes", 100, "Number of episodes to write.")
flags.DEFINE_float("noise", 1.0, "Human-likeness of the demos: scales speed variation, action "
                   "noise, position errors and hesitations (0 = clean expert).")
flags.DEFINE_string("out", None, "Output directory (the dataset goes to <out>/resfit_demos/1.0.0).")
flags.DEFINE_integer("seed", 0, "Seed; episode i uses fold_in(PRNGKey(seed), i).")
flags.DEFINE_integer("num_envs", 32, "Episodes rolled out in parallel.")
flags.DEFINE_bool("keep_failures", False, "Also write unsuccessful episodes.")


def make_demos(task_name: str, episodes: int, noise: float, out: str, seed: int = 0,
               num_envs: int = 32, keep_failures: bool = False, verbose: bool = True):
    """Roll the expert, write RLDS, return (dataset_dir, DemoStats)."""
    import tqdm

    from resfit_jax import envs
    from resfit_jax.data import write_episodes
    from resfit_jax.data.demos import collect_episodes, make_rollout

    task = envs.make(task_name)
    style = envs.ExpertStyle.human(noise) if noise > 0 else envs.ExpertStyle()
    expert = envs.make_expert(task_name, task, style)
    rollout = make_rollout(task, expert.init, expert.act)
    bar = tqdm.tqdm(total=episodes, desc=f"{task_name} demos", disable=not verbose)

    def progress(kept, attempted, succeeded):
        bar.n = kept
        bar.set_postfix(expert_success=f"{succeeded / attempted:.1%}", attempted=attempted)
        bar.refresh()

    t0 = time.time()
    eps, stats = collect_episodes(rollout, episodes, min(num_envs, episodes), seed=seed,
                                  successful_only=not keep_failures, progress=progress)
    bar.close()
    path = write_episodes(out, eps, metadata={
        "task": task_name, "noise": noise, "seed": seed, "expert_success": stats.success_rate,
        "attempted": stats.attempted, "style": repr(style)})
    if verbose:
        print(f"{task_name}: expert success {stats.succeeded}/{stats.attempted} "
              f"({stats.success_rate:.1%}), mean steps of successes "
              f"{stats.mean_steps_success:.1f}; wrote {len(eps)} episodes to {path} "
              f"in {time.time() - t0:.0f} s")
    return path, stats


def main(argv):
    del argv
    out = FLAGS.out or os.path.join("runs", "demos", FLAGS.task)
    make_demos(FLAGS.task, FLAGS.episodes, FLAGS.noise, out, FLAGS.seed, FLAGS.num_envs,
               FLAGS.keep_failures)


if __name__ == "__main__":
    app.run(main)
