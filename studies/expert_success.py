"""Scripted-expert success per task and demo-noise level, over N episodes each.

    python -m studies.expert_success --episodes=128 --noise=0,0.5,1

Uses the same jitted rollout as experiments/make_demos.py (one episode per env, E in
parallel). Prints a table (success, mean steps of successful episodes) and writes JSON.
"""

from __future__ import annotations

import time

from absl import app, flags

from resfit_jax import envs
from resfit_jax.data.demos import collect_episodes, make_rollout
from resfit_jax.run.machine import machine_info, write_results

FLAGS = flags.FLAGS
flags.DEFINE_list("tasks", list(envs.MANIPULATION_TASKS), "Tasks.")
flags.DEFINE_list("noise", ["0", "0.5", "1"], "Demo noise levels (ExpertStyle.human).")
flags.DEFINE_integer("episodes", 128, "Episodes per (task, noise).")
flags.DEFINE_integer("num_envs", 64, "Parallel envs.")
flags.DEFINE_string("out", "benchmarks/results/expert_success.json", "JSON output path.")


def main(argv):
    from resfit_jax.run.runtime import quiet_logging

    quiet_logging()  # library INFO logs (jax backends, mujoco.mjx) off
    del argv
    rows, results = [], {"machine": machine_info(), "episodes": FLAGS.episodes, "runs": []}
    for name in FLAGS.tasks:
        task = envs.make(name)
        for noise in map(float, FLAGS.noise):
            style = envs.ExpertStyle.human(noise) if noise > 0 else envs.ExpertStyle()
            expert = envs.make_expert(name, task, style)
            t0 = time.time()
            _, st = collect_episodes(
                make_rollout(task, expert.init, expert.act),
                FLAGS.episodes,
                min(FLAGS.num_envs, FLAGS.episodes),
                seed=1234,
                successful_only=False,
            )
            r = {
                "task": name,
                "noise": noise,
                "attempted": st.attempted,
                "succeeded": st.succeeded,
                "success_rate": st.success_rate,
                "mean_steps_success": st.mean_steps_success,
                "horizon": task.horizon,
                "wall_s": time.time() - t0,
            }
            results["runs"].append(r)
            rows.append(r)
            print(
                f"{name:18s} noise {noise:3.1f}: {st.succeeded}/{st.attempted} "
                f"({st.success_rate:.1%}), mean steps {st.mean_steps_success:.1f}",
                flush=True,
            )
    print("\n| task | demo noise | expert success | mean steps (successes) | horizon |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['task']} | {r['noise']:g} | {r['succeeded']}/{r['attempted']} "
            f"({r['success_rate']:.1%}) | {r['mean_steps_success']:.1f} | {r['horizon']} |"
        )
    write_results(FLAGS.out, results)


if __name__ == "__main__":
    app.run(main)
