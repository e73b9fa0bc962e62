"""Where residual PPO's time goes: one iteration split into its rollout (T vector steps of
base + Gaussian residual through ``residual_env_step``), its update (the recipe's epochs on
the rollout), and, as the peer, the env alone: the rollout's executed actions replayed
open-loop from its starting state (the same physics, contacts and resets; no base, policy
or learner).

    python -m benchmarks.ppo_throughput                        # PickPlace, E = 256, 1 seed
    python -m benchmarks.ppo_throughput --envs=1024,4096       # accelerator

Each E runs twice: the chunked base queried for all envs every step (the peer) and only
for the envs whose queue is empty, in blocks (``ChunkedBase.query_block``, the default).
The base is an ACT chunk policy of the CPU BC size with random weights (as in
``loop_throughput``; a trained one costs the same per step), so the benchmark needs no
files. Each part is timed on its second call (the first compiles). Prints a table and writes
JSON with the machine description.
"""

from __future__ import annotations

import time

from absl import app, flags

from resfit_jax.run.configs import usage_error

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("task", "PickPlace", "Registered MJX task.")
    flags.DEFINE_list("envs", ["256"], "Numbers of envs E (one seed).")
    flags.DEFINE_integer(
        "rollout_length",
        0,
        "Vector steps per iteration (0: the task's horizon, as the PPO preset).",
    )
    flags.DEFINE_list(
        "base_query",
        ["all", "blocks"],
        "How the chunked base is queried: "
        "'all' envs every step (the peer), or only empty queues in 'blocks' "
        "(ChunkedBase's default query_block).",
    )
    flags.DEFINE_integer("repeats", 2, "Timed calls per part (after the compiling one).")
    flags.DEFINE_string("out", "benchmarks/results/ppo_throughput.json", "JSON output path.")


def timed(fn, *args, repeats: int) -> tuple[float, float, object]:
    """(seconds of the first call, compile included; mean seconds of the next ``repeats``;
    the last output)."""
    import jax

    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = jax.block_until_ready(fn(*args))
    return first, (time.perf_counter() - t0) / repeats, out


def main(argv):
    del argv
    from resfit_jax.run.runtime import setup_script

    setup_script()
    import dataclasses

    import jax
    import jax.numpy as jnp

    from resfit_jax.run.machine import machine_info, write_results
    from resfit_jax.sim.ppo_presets import ppo_preset
    from resfit_jax.sim.ppo_trainer import make_ppo_trainer

    from .loop_throughput import synthetic_inputs

    task, episodes, act_base = synthetic_inputs(FLAGS.task)
    rows = []
    print(
        f"{FLAGS.task}: one residual-PPO iteration (CPU preset learner, 1 seed) on "
        f"{jax.devices()[0].device_kind}"
    )
    print(
        f"{'E':>6}{'T':>5}{'base query':>12}{'rollout s':>11}{'update s':>10}{'env alone s':>13}"
        f"{'env share':>11}{'env steps/s':>13}"
    )
    for e, query in [(int(e), q) for e in FLAGS.envs for q in FLAGS.base_query]:
        if query not in ("all", "blocks"):
            usage_error(f"--base_query: {query!r}; choose from all, blocks.")
        base = dataclasses.replace(act_base, query_block=e if query == "all" else None)
        cfg = dataclasses.replace(
            ppo_preset(FLAGS.task, "cpu"), num_envs=e, rollout_length=FLAGS.rollout_length or None
        )
        trainer = make_ppo_trainer(task, base, episodes, cfg, seeds=[0])
        loop = trainer.loop
        ls0 = trainer.init()
        _, rollout_s, (ls, rollout, _) = timed(
            jax.jit(jax.vmap(loop.rollout)), ls0, repeats=FLAGS.repeats
        )
        _, update_s, _ = timed(
            jax.jit(jax.vmap(loop.learner.update)), ls.learner_state, rollout, repeats=FLAGS.repeats
        )
        # the peer: the env alone, replaying the rollout's executed actions open-loop from
        # its starting state (same keys, so the same physics, contacts and resets)
        env, t = loop.env, loop.rollout_length
        nz = jax.tree.map(lambda x: x[0], ls.learner_state.normalizer)  # seed 0 of [S]
        start = jax.tree.map(lambda x: x[0], ls0.env_state)
        executed = nz.unnormalize_action(
            jnp.clip(
                rollout.base_action[0] + cfg.learner.action_scale * rollout.sample[0], -1.0, 1.0
            )
        )

        @jax.jit
        def env_alone(state, actions):
            return jax.lax.scan(lambda s, a: (env.step(s, a), None), state, actions)[0]

        _, env_s, _ = timed(env_alone, start, executed, repeats=FLAGS.repeats)
        steps = e * t
        row = {
            "num_envs": e,
            "rollout_length": t,
            "base_query": query,
            "query_block": base.block_size(e),
            "rollout_s": rollout_s,
            "update_s": update_s,
            "env_alone_s": env_s,
            "env_share_of_iteration": env_s / (rollout_s + update_s),
            "rollout_share_of_iteration": rollout_s / (rollout_s + update_s),
            "env_steps_per_s": steps / (rollout_s + update_s),
            "env_alone_steps_per_s": steps / env_s,
        }
        rows.append(row)
        print(
            f"{e:>6}{t:>5}{query:>12}{rollout_s:>11.1f}{update_s:>10.1f}{env_s:>13.1f}"
            f"{row['env_share_of_iteration']:>11.0%}{row['env_steps_per_s']:>13,.0f}"
        )
    write_results(
        FLAGS.out,
        {
            "machine": machine_info(),
            "task": FLAGS.task,
            "base": "ACT (CPU BC size), random weights",
            "learner": "residual PPO CPU preset",
            "seeds": 1,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
