r"""Pixel env throughput: control steps/s and frames/s of step + render vs the state env.

    python -m benchmarks.render_throughput                          # CPU default: PickPlace
    python -m benchmarks.render_throughput --tasks=PickPlace,PegInsertion,BimanualHandover \
        --envs=16,64,256 --resolutions=64,84                        # the full grid (GPU)

One step = the pixel env's step (``envs.cameras.pixel_env``: MJX physics, then the MuJoCo
Warp ray tracer for every camera of every env, twice the worlds on steps where an episode
ended). Peer in the same run: the state env's step (the same physics, no rendering) at the
same E; the table reports their ratio. Frames/s counts one image per camera per env step.
A jitted ``lax.scan`` of ``--scan`` steps per call; compile seconds = the first call.
Prints a table and writes JSON with the machine description.
"""

from __future__ import annotations

import time

import jax
from absl import app, flags

from resfit_jax import envs
from resfit_jax.envs.cameras import pixel_env
from resfit_jax.envs.core import AutoReset, VmapWrapper
from resfit_jax.run.machine import machine_info, write_results

FLAGS = flags.FLAGS
flags.DEFINE_list("tasks", ["PickPlace"], "Tasks to measure.")
flags.DEFINE_list("envs", ["16"], "Batch sizes E.")
flags.DEFINE_list("resolutions", ["64", "84"], "Image sizes (square).")
flags.DEFINE_integer("scan", 10, "Control steps per jitted call.")
flags.DEFINE_float("min_seconds", 3.0, "Minimum timed seconds per configuration.")
flags.DEFINE_string("out", "benchmarks/results/render_throughput.json", "JSON output path.")


def throughput(env, task, num_envs: int, scan: int, min_seconds: float) -> dict:
    """ctrl steps/s of a jitted scan of ``env.step`` (home pose + noise actions)."""
    home = task.home_action

    @jax.jit
    def run(state, key):
        def body(s, k):
            a = home + 0.05 * jax.random.normal(k, (num_envs, task.action_size))
            return env.step(s, a), None

        return jax.lax.scan(body, state, jax.random.split(key, scan))[0]

    state = jax.jit(env.reset)(jax.random.PRNGKey(0))
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    state = jax.block_until_ready(run(state, jax.random.PRNGKey(1)))
    compile_s = time.perf_counter() - t0
    calls, t0 = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - t0 < min_seconds:
        state = jax.block_until_ready(run(state, jax.random.PRNGKey(2 + calls)))
        calls += 1
    dt = time.perf_counter() - t0
    return {"compile_s": compile_s, "ctrl_steps_per_s": num_envs * scan * calls / dt}


def main(argv):
    from resfit_jax.run.runtime import quiet_logging

    quiet_logging()  # library INFO logs (jax backends, mujoco.mjx) off
    del argv
    jax.config.update("jax_enable_compilation_cache", False)
    results = {"machine": machine_info(), "scan": FLAGS.scan, "rows": []}
    for name in FLAGS.tasks:
        task = envs.make(name)
        for e in map(int, FLAGS.envs):
            state = throughput(
                VmapWrapper(AutoReset(task), e), task, e, FLAGS.scan, FLAGS.min_seconds
            )
            for res in map(int, FLAGS.resolutions):
                env = pixel_env(task, e, res)
                pix = throughput(env, task, e, FLAGS.scan, FLAGS.min_seconds)
                row = {
                    "task": name,
                    "num_envs": e,
                    "resolution": res,
                    "cameras": list(env.cameras),
                    "pixel_ctrl_steps_per_s": pix["ctrl_steps_per_s"],
                    "frames_per_s": pix["ctrl_steps_per_s"] * len(env.cameras),
                    "state_ctrl_steps_per_s": state["ctrl_steps_per_s"],
                    "pixel_over_state": pix["ctrl_steps_per_s"] / state["ctrl_steps_per_s"],
                    "compile_s": pix["compile_s"],
                    "state_compile_s": state["compile_s"],
                }
                results["rows"].append(row)
                print(
                    f"{name:18s} E={e:4d} {res:3d}px  {row['pixel_ctrl_steps_per_s']:8.0f} "
                    f"steps/s  {row['frames_per_s']:8.0f} frames/s  (state "
                    f"{row['state_ctrl_steps_per_s']:8.0f} steps/s)",
                    flush=True,
                )
    print(
        "\n| task | E | px | cameras | pixel steps/s | frames/s | state steps/s | pixel / state |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        print(
            f"| {r['task']} | {r['num_envs']} | {r['resolution']} | {len(r['cameras'])} | "
            f"{r['pixel_ctrl_steps_per_s']:,.0f} | {r['frames_per_s']:,.0f} | "
            f"{r['state_ctrl_steps_per_s']:,.0f} | {r['pixel_over_state']:.2f} |"
        )
    write_results(FLAGS.out, results)


if __name__ == "__main__":
    app.run(main)
