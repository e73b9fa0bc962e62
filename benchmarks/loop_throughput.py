"""Throughput of the whole ResFiT loop with learning: env steps/s and critic steps/s of the
jitted training chunk (act + env step + store + updates), against the number of envs E.

    python -m benchmarks.loop_throughput                                  # PickPlace, E = 16 64
    python -m benchmarks.loop_throughput --envs=256,1024,4096 --critic_per_env_step=0.25  # GPU

The base is an ACT chunk policy of the CPU BC size with random weights (a trained one costs
the same per step), its normalizer fitted on 16 scripted-expert demos made in the run, so
the benchmark needs no files. Each E runs the task's CPU preset with ``num_envs=E`` and
``replay.utd`` set so that critic steps per env step = ``--critic_per_env_step`` (one update
per vector step); the first chunk (compile) is timed apart from the next ``--chunks``.
Prints a table and writes JSON with the machine description.
"""

from __future__ import annotations

import dataclasses
import time

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("task", "PickPlace", "Registered MJX task.")
    flags.DEFINE_list("envs", ["16", "64"], "Numbers of envs E.")
    flags.DEFINE_float("critic_per_env_step", 0.25, "Critic steps per env step (UTD).")
    flags.DEFINE_integer("steps_per_chunk", 32, "Vector steps per jitted chunk.")
    flags.DEFINE_integer("chunks", 3, "Timed chunks per E (after the compiling one).")
    flags.DEFINE_string("scale", "cpu", "Learner preset of the task (cpu or paper).")
    flags.DEFINE_string("out", "benchmarks/results/loop_throughput.json", "JSON output path.")


def random_act_base(task, episodes):
    """An ACT base of the CPU size with random weights, as a ChunkedBase."""
    import jax
    import jax.numpy as jnp

    from resfit_jax.base.policy import ChunkedBase
    from resfit_jax.bc.data import chunk_dataset, fit_normalizer
    from resfit_jax.bc.networks import BCConfig, make_network
    from resfit_jax.bc.train import make_predict

    cfg = BCConfig.cpu(action_obs_index=getattr(task, "action_obs_index", None))
    obs_dim, a = int(task.observation_spec.shape[0]), task.action_size
    nz = fit_normalizer(chunk_dataset(episodes, cfg.chunk_size), cfg.action_obs_index)
    params = make_network(cfg, a).init(jax.random.key(0), jnp.zeros((1, obs_dim)), train=False)[
        "params"
    ]
    predict = make_predict(cfg, a, nz)
    return ChunkedBase(lambda obs: predict(params, obs), a, cfg.chunk_size)


def synthetic_inputs(task_name: str):
    """(task, 16 scripted-expert demo episodes, random-weight ACT base): a benchmark's inputs
    made in the run, no files needed."""
    from resfit_jax import envs
    from resfit_jax.data.demos import collect_episodes, make_rollout

    task = envs.make(task_name)
    expert = envs.make_expert(task_name, task, envs.ExpertStyle())
    episodes, _ = collect_episodes(make_rollout(task, expert.init, expert.act), 16, 16)
    return task, episodes, random_act_base(task, episodes)


def time_train_chunks(trainer, chunks: int) -> tuple[float, float]:
    """(seconds of the first train chunk, compile included; seconds of the next ``chunks``)
    after one warm-up chunk."""
    import jax

    state, _ = trainer.warmup(trainer.init())
    t0 = time.perf_counter()
    state, _ = trainer.train(state, trainer.offline)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(chunks):
        state, _ = trainer.train(state, trainer.offline)
    jax.block_until_ready(state)
    return compile_s, time.perf_counter() - t0


def main(argv):
    del argv
    from resfit_jax.run.runtime import setup_script

    setup_script()
    import jax

    from resfit_jax.run.machine import machine_info, write_results
    from resfit_jax.sim.presets import preset
    from resfit_jax.sim.trainer import make_trainer

    task, episodes, base = synthetic_inputs(FLAGS.task)
    rows = []
    print(
        f"{FLAGS.task}: ResFiT training chunks ({FLAGS.scale} learner, "
        f"{FLAGS.critic_per_env_step:g} critic steps per env step) on "
        f"{jax.devices()[0].device_kind}"
    )
    print(f"{'E':>6}{'utd':>6}{'first chunk s':>15}{'env steps/s':>13}{'critic steps/s':>16}")
    for e in map(int, FLAGS.envs):
        utd = max(1, round(FLAGS.critic_per_env_step * e))
        p = preset(FLAGS.task, FLAGS.scale)
        cfg = dataclasses.replace(
            p,
            num_envs=e,
            updates_per_step=1,
            steps_per_chunk=FLAGS.steps_per_chunk,
            warmup_env_steps=e * FLAGS.steps_per_chunk,
            critic_warmup_updates=0,
            replay=dataclasses.replace(
                p.replay, utd=utd, capacity=max(p.replay.capacity, 4 * e * FLAGS.steps_per_chunk)
            ),
        )
        compile_s, dt = time_train_chunks(
            make_trainer(task, base, episodes, cfg, seeds=[0]), FLAGS.chunks
        )
        steps = FLAGS.chunks * cfg.env_steps_per_chunk
        row = {
            "num_envs": e,
            "utd": utd,
            "critic_steps_per_env_step": utd / e,
            "compile_s": compile_s,
            "env_steps_per_s": steps / dt,
            "critic_steps_per_s": FLAGS.chunks * FLAGS.steps_per_chunk * utd / dt,
        }
        rows.append(row)
        print(
            f"{e:>6}{utd:>6}{compile_s:>15.1f}{row['env_steps_per_s']:>13,.0f}"
            f"{row['critic_steps_per_s']:>16,.0f}"
        )
    write_results(
        FLAGS.out,
        {
            "machine": machine_info(),
            "task": FLAGS.task,
            "scale": FLAGS.scale,
            "steps_per_chunk": FLAGS.steps_per_chunk,
            "base": "ACT (CPU BC size), random weights",
            "rows": rows,
        },
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
