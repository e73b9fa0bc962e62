"""Scale-out of the ResFiT loop with learning: env steps/s and critic steps/s against the
number of devices the run is sharded over (``resfit_jax.sharding``), with the ratio to one.

    python -m benchmarks.scaling                                    # forced CPU devices 1, 2, 4
    python -m benchmarks.scaling --devices=1,2,4,8 --envs_per_device=1024    # real GPUs

Weak scaling (default): each device runs ``--envs_per_device`` envs with the task's CPU preset
batch per device (so the global batch grows with the devices) and UTD set so that the global
critic steps per env step stay ``--critic_per_env_step``. ``--strong``: the one-device run's
envs and batch split over the N devices (the same work at every N). Each device count runs in
its own subprocess (on a CPU: ``--xla_force_host_platform_device_count``; on GPUs: the first N
devices). The first chunk (compile) is timed apart from the next ``--chunks``. Prints a table
and writes JSON with the machine description. Forced CPU devices share this machine's cores, so
on a CPU the ratio measures the sharding's overhead, not a speed-up.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("task", "PickPlace", "Registered task.")
flags.DEFINE_list("devices", ["1", "2", "4"], "Device counts.")
flags.DEFINE_integer("envs_per_device", 16, "Envs per device (weak scaling).")
flags.DEFINE_bool(
    "strong",
    False,
    "Strong scaling: the 1-device run's envs and batch split "
    "over the N devices (the same work, so the ratio is the sharding's cost "
    "or gain).",
)
flags.DEFINE_float("critic_per_env_step", 0.25, "Global critic steps per env step.")
flags.DEFINE_integer("steps_per_chunk", 16, "Vector steps per jitted chunk.")
flags.DEFINE_integer("chunks", 3, "Timed chunks per device count (after the compiling one).")
flags.DEFINE_integer("timeout", 900, "Seconds per device count.")
flags.DEFINE_string("out", "benchmarks/results/scaling.json", "JSON output path.")
flags.DEFINE_integer("child", 0, "Internal: measure this many devices in this process.")


def measure(n: int) -> dict:
    """One device count, in this process (JAX already started with >= n devices)."""
    import jax

    from resfit_jax import envs
    from resfit_jax.data.demos import collect_episodes, make_rollout
    from resfit_jax.sim.presets import preset
    from resfit_jax.sim.trainer import make_trainer

    from .loop_throughput import random_act_base, time_train_chunks

    task = envs.make(FLAGS.task)
    expert = envs.make_expert(FLAGS.task, task, envs.ExpertStyle())
    episodes, _ = collect_episodes(make_rollout(task, expert.init, expert.act), 16, 16)
    if FLAGS.task == "PointReach":  # a quick check of the benchmark itself
        from resfit_jax.base.policy import FunctionBase
        from resfit_jax.envs.point_reach import biased_base_action

        base = FunctionBase(biased_base_action, 2)
    else:
        base = random_act_base(task, episodes)
    p = preset(FLAGS.task, "cpu")
    scale = 1 if FLAGS.strong else n
    e = scale * FLAGS.envs_per_device
    utd = max(1, round(FLAGS.critic_per_env_step * e))
    capacity = n * max(p.replay.capacity // n, 4 * e * FLAGS.steps_per_chunk // n)
    cfg = dataclasses.replace(
        p,
        num_envs=e,
        updates_per_step=1,
        steps_per_chunk=FLAGS.steps_per_chunk,
        warmup_env_steps=e * FLAGS.steps_per_chunk,
        critic_warmup_updates=0,
        mesh=(n, 1),
        shards=n,
        replay=dataclasses.replace(
            p.replay, utd=utd, batch_size=scale * p.replay.batch_size, capacity=capacity
        ),
    )
    compile_s, dt = time_train_chunks(
        make_trainer(task, base, episodes, cfg, seeds=[0]), FLAGS.chunks
    )
    return {
        "devices": n,
        "num_envs": e,
        "batch_size": cfg.replay.batch_size,
        "utd": utd,
        "critic_steps_per_env_step": utd / e,
        "compile_s": compile_s,
        "env_steps_per_s": FLAGS.chunks * cfg.env_steps_per_chunk / dt,
        "critic_steps_per_s": FLAGS.chunks * FLAGS.steps_per_chunk * utd / dt,
        "device": jax.devices()[0].device_kind,
    }


def main(argv):
    del argv
    if FLAGS.child:
        from resfit_jax.run.runtime import setup_script

        setup_script()
        print("ROW " + json.dumps(measure(FLAGS.child)), flush=True)
        return
    from resfit_jax.run.runtime import quiet_logging

    quiet_logging()
    import jax

    from resfit_jax.run.machine import machine_info, write_results

    cpu = jax.default_backend() == "cpu"
    how = (
        f"{FLAGS.envs_per_device} envs in all"
        if FLAGS.strong
        else f"{FLAGS.envs_per_device} envs per device"
    )
    print(
        f"{FLAGS.task}: ResFiT loop sharded over N devices ({how}, "
        f"{FLAGS.critic_per_env_step:g} critic steps per env step, "
        f"{'forced CPU devices' if cpu else jax.devices()[0].device_kind})"
    )
    print(
        f"{'N':>4}{'E':>7}{'batch':>7}{'utd':>5}{'first chunk s':>15}{'env steps/s':>13}"
        f"{'critic steps/s':>16}{'x one':>7}"
    )
    rows, one = [], None
    for n in map(int, FLAGS.devices):
        env = dict(os.environ)
        if cpu:
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
        elif n > jax.device_count():
            print(f"{n:>4}  skipped: {jax.device_count()} devices")
            continue
        args = [sys.executable, "-m", __spec__.name, f"--child={n}"] + [
            f"--{k}={FLAGS[k].value}"
            for k in (
                "task",
                "envs_per_device",
                "critic_per_env_step",
                "steps_per_chunk",
                "chunks",
                "strong",
            )
        ]
        try:
            p = subprocess.run(args, capture_output=True, text=True, env=env, timeout=FLAGS.timeout)
        except subprocess.TimeoutExpired:
            print(f"{n:>4}  timed out after {FLAGS.timeout} s")
            continue
        found = [x for x in p.stdout.splitlines() if x.startswith("ROW ")]
        if p.returncode or not found:
            print(f"{n:>4}  failed: {(p.stderr or p.stdout).strip().splitlines()[-1:]}")
            continue
        row = json.loads(found[-1][4:])
        one = one or row
        row["env_ratio"] = row["env_steps_per_s"] / one["env_steps_per_s"]
        row["critic_ratio"] = row["critic_steps_per_s"] / one["critic_steps_per_s"]
        rows.append(row)
        print(
            f"{n:>4}{row['num_envs']:>7}{row['batch_size']:>7}{row['utd']:>5}"
            f"{row['compile_s']:>15.1f}{row['env_steps_per_s']:>13,.0f}"
            f"{row['critic_steps_per_s']:>16,.1f}{row['env_ratio']:>7.2f}"
        )
    write_results(
        FLAGS.out,
        {
            "machine": machine_info(),
            "task": FLAGS.task,
            "forced_cpu_devices": cpu,
            "scaling": "strong" if FLAGS.strong else "weak",
            "envs_per_device": FLAGS.envs_per_device,
            "critic_per_env_step": FLAGS.critic_per_env_step,
            "steps_per_chunk": FLAGS.steps_per_chunk,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    app.run(main)
