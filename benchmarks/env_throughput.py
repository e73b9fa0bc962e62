"""Env throughput: MJX control steps/s vs batch size, compile seconds, and MuJoCo C.

    python -m benchmarks.env_throughput                        # all tasks, E = 1 16 64 256
    python -m benchmarks.env_throughput --tasks=PickPlace --envs=64,256,1024,8192   # GPU

One control step = the task's full step (n_substeps physics steps, observation, success);
actions hold the home pose plus small Gaussian noise, so the arm moves. Compile seconds =
the first call of the jitted ``lax.scan`` of ``--scan`` steps (trace + XLA compile; the
persistent compilation cache is off). MuJoCo C = ``mj_step`` on one thread of the same
model with the same substeps, in the same run; the table reports MJX / C at every E.
Prints a table and writes JSON with the machine description.
"""

from __future__ import annotations

import time

import jax
import mujoco
import numpy as np
from absl import app, flags

from resfit_jax import envs
from resfit_jax.run.machine import machine_info, write_results

FLAGS = flags.FLAGS
flags.DEFINE_list("tasks", list(envs.MANIPULATION_TASKS), "Tasks to measure.")
flags.DEFINE_list("envs", ["1", "16", "64", "256"], "Batch sizes E.")
flags.DEFINE_integer("scan", 20, "Control steps per jitted call.")
flags.DEFINE_float("min_seconds", 3.0, "Minimum timed seconds per configuration.")
flags.DEFINE_string("out", "benchmarks/results/env_throughput.json", "JSON output path.")


def mjx_throughput(task, num_envs: int, scan: int, min_seconds: float) -> dict:
    home = task.home_action
    reset = jax.jit(jax.vmap(task.reset))

    @jax.jit
    def run(state, key):
        def body(s, k):
            a = home + 0.05 * jax.random.normal(k, (num_envs, task.action_size))
            return jax.vmap(task.step)(s, a), None

        return jax.lax.scan(body, state, jax.random.split(key, scan))[0]

    state = reset(jax.random.split(jax.random.PRNGKey(0), num_envs))
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    state = run(state, jax.random.PRNGKey(1))
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    calls, t0 = 0, time.perf_counter()
    while True:
        state = run(state, jax.random.PRNGKey(calls))
        jax.block_until_ready(state)
        calls += 1
        if time.perf_counter() - t0 >= min_seconds:
            break
    dt = time.perf_counter() - t0
    return {
        "num_envs": num_envs,
        "compile_s": compile_s,
        "ctrl_steps_per_s": num_envs * scan * calls / dt,
        "physics_steps_per_s": num_envs * scan * calls * task.n_substeps / dt,
    }


def mujoco_c_throughput(task, min_seconds: float) -> dict:
    m = task.mj_model
    d = task.to_mj_data(
        jax.tree.map(
            lambda x: x[0],
            jax.jit(jax.vmap(task.reset))(jax.random.split(jax.random.PRNGKey(0), 1)),
        ),
        None,
    )
    rng = np.random.default_rng(0)
    home = np.asarray(d.ctrl).copy()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        d.ctrl[:] = home + 0.05 * rng.normal(size=home.shape)
        for _ in range(task.n_substeps):
            mujoco.mj_step(m, d)
        steps += 1
    dt = time.perf_counter() - t0
    return {"ctrl_steps_per_s": steps / dt, "physics_steps_per_s": steps * task.n_substeps / dt}


def main(argv):
    from resfit_jax.run.runtime import quiet_logging

    quiet_logging()  # library INFO logs (jax backends, mujoco.mjx) off
    del argv
    jax.config.update("jax_enable_compilation_cache", False)
    results = {"machine": machine_info(), "scan": FLAGS.scan, "tasks": {}}
    rows = []
    for name in FLAGS.tasks:
        task = envs.make(name)
        c = mujoco_c_throughput(task, FLAGS.min_seconds)
        res = {
            "n_substeps": task.n_substeps,
            "timestep": float(task.mj_model.opt.timestep),
            "mujoco_c_1thread": c,
            "mjx": [],
        }
        for e in map(int, FLAGS.envs):
            r = mjx_throughput(task, e, FLAGS.scan, FLAGS.min_seconds)
            r["ratio_vs_c"] = r["ctrl_steps_per_s"] / c["ctrl_steps_per_s"]
            res["mjx"].append(r)
            rows.append(
                (
                    name,
                    e,
                    r["ctrl_steps_per_s"],
                    r["compile_s"],
                    c["ctrl_steps_per_s"],
                    r["ratio_vs_c"],
                )
            )
            print(
                f"{name:18s} E={e:5d}  {r['ctrl_steps_per_s']:9.0f} ctrl steps/s  "
                f"compile {r['compile_s']:5.1f} s  (C 1 thread {c['ctrl_steps_per_s']:8.0f})",
                flush=True,
            )
        best = max(res["mjx"], key=lambda r: r["ctrl_steps_per_s"])
        res["best"] = {"num_envs": best["num_envs"], "ctrl_steps_per_s": best["ctrl_steps_per_s"]}
        results["tasks"][name] = res
    print(
        "\n| task | E | MJX ctrl steps/s | compile s | MuJoCo C 1-thread ctrl steps/s | MJX / C |"
    )
    print("|---|---|---|---|---|---|")
    for name, e, sps, comp, c, ratio in rows:
        print(f"| {name} | {e} | {sps:,.0f} | {comp:.1f} | {c:,.0f} | {ratio:.2f} |")
    write_results(FLAGS.out, results)


if __name__ == "__main__":
    app.run(main)
