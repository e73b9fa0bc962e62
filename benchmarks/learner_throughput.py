r"""Learner throughput: critic updates/s and compile seconds of ResidualTD3.update vs UTD.

    python -m benchmarks.learner_throughput                  # cpu + paper presets, UTD 1 2 4 8
    python -m benchmarks.learner_throughput --presets=cpu --utds=1,4
    python -m benchmarks.learner_throughput --presets=cpu --utds=4 --encoders=none,conv,vit \
        --cameras=2 --resolution=64                          # pixel learner vs the state one

Each update = UTD critic steps in lax.scan + 1 actor step on [UTD, B/2] online + offline
batches (obs 40, action 8: PickPlace-sized state observations). Compile seconds = trace +
lower + XLA compile with the persistent cache off; because the critic steps are a scan, they
should barely grow with UTD. With ``--encoders`` other than "none", the observation also has
``--cameras`` uint8 images (one encoder per camera, DrQ shifts in every update); "none" in
the same run is the state peer. Prints a table, writes JSON with the machine description.
"""

from __future__ import annotations

import time

import jax
from absl import app, flags

from resfit_jax.agents.residual_td3 import ResidualTD3Config, make_learner
from resfit_jax.replay import ReplayConfig, Transition
from resfit_jax.run.machine import machine_info, write_results

FLAGS = flags.FLAGS
# learner sizes: "cpu" = 2x256 networks (ResidualTD3Config.small), "paper" = 2x1024
SIZES = {"cpu": ResidualTD3Config.small, "paper": ResidualTD3Config}
flags.DEFINE_list("presets", ["cpu", "paper"], "Learner sizes to measure (cpu, paper).")
flags.DEFINE_list("utds", ["1", "2", "4", "8"], "UTD values (critic steps per update).")
flags.DEFINE_integer("obs_dim", 40, "Observation size.")
flags.DEFINE_integer("action_dim", 8, "Action size.")
flags.DEFINE_list("encoders", ["none"], "none (state only), conv, vit.")
flags.DEFINE_integer("cameras", 2, "Cameras when an encoder is measured.")
flags.DEFINE_integer("resolution", 64, "Image size (square) when an encoder is measured.")
flags.DEFINE_float("min_seconds", 3.0, "Minimum timed seconds per configuration.")
flags.DEFINE_string("out", "benchmarks/results/learner_throughput.json", "JSON output path.")


def random_obs(key, shape, obs_dim, cameras: int, resolution: int):
    """[*shape, obs_dim] floats, or a dict with uint8 camera images too."""
    state = jax.random.normal(key, shape + (obs_dim,))
    if not cameras:
        return state
    ks = jax.random.split(key, cameras)
    img = lambda k: jax.random.randint(k, shape + (resolution, resolution, 3), 0, 256).astype(
        "uint8"
    )
    return {"state": state} | {f"camera{i}": img(k) for i, k in enumerate(ks)}


def random_batch(key, steps, batch, obs_dim, act_dim, cameras=0, resolution=64):
    ks = jax.random.split(key, 6)
    u = lambda k, s: jax.random.uniform(k, s, minval=-1, maxval=1)
    obs = lambda k: random_obs(k, (steps, batch), obs_dim, cameras, resolution)
    return Transition(
        obs=obs(ks[0]),
        base_action=u(ks[1], (steps, batch, act_dim)),
        action=u(ks[2], (steps, batch, act_dim)),
        reward=(jax.random.uniform(ks[3], (steps, batch)) < 0.1).astype("float32"),
        discount=jax.numpy.full((steps, batch), 0.97),
        nonterminal=jax.numpy.ones((steps, batch)),
        next_obs=obs(ks[4]),
        next_base_action=u(ks[5], (steps, batch, act_dim)),
    )


def measure(preset: str, utd: int, encoder: str = "none") -> dict:
    cams = 0 if encoder == "none" else FLAGS.cameras
    cfg = SIZES[preset](**({} if encoder == "none" else {"encoder": encoder}))
    replay = ReplayConfig(utd=utd)
    one = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape[2:], x.dtype),
        random_obs(jax.random.key(0), (1, 1), FLAGS.obs_dim, cams, FLAGS.resolution),
    )
    learner = make_learner(cfg, one if cams else FLAGS.obs_dim, FLAGS.action_dim)
    state = learner.init(jax.random.key(0))
    batch = lambda k, b: random_batch(
        k, utd, b, FLAGS.obs_dim, FLAGS.action_dim, cams, FLAGS.resolution
    )
    on = batch(jax.random.key(1), replay.online_batch_size)
    off = batch(jax.random.key(2), replay.offline_batch_size)
    t0 = time.perf_counter()
    compiled = jax.jit(learner.update, donate_argnums=0).lower(state, on, off).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state, on, off)
    jax.block_until_ready(state)
    calls, t0 = 0, time.perf_counter()
    while True:
        state, m = compiled(state, on, off)
        calls += 1
        if calls >= 2 and time.perf_counter() - t0 >= FLAGS.min_seconds:
            jax.block_until_ready(state)
            if time.perf_counter() - t0 >= FLAGS.min_seconds:
                break
    elapsed = time.perf_counter() - t0
    return {
        "preset": preset,
        "utd": utd,
        "encoder": encoder,
        "cameras": cams,
        "resolution": FLAGS.resolution if cams else None,
        "hidden": list(cfg.critic_hidden_dims),
        "num_critics": cfg.num_critics,
        "batch_size": replay.batch_size,
        "compile_s": compile_s,
        "updates_per_s": calls / elapsed,
        "critic_updates_per_s": calls * utd / elapsed,
        "ms_per_critic_step": 1e3 * elapsed / (calls * utd),
    }


def main(_):
    from resfit_jax.run.runtime import quiet_logging

    quiet_logging()  # library INFO logs (jax backends, mujoco.mjx) off
    jax.config.update("jax_enable_compilation_cache", False)
    rows = [
        measure(p, int(u), e) for e in FLAGS.encoders for p in FLAGS.presets for u in FLAGS.utds
    ]
    by = {(r["encoder"], r["preset"], r["utd"]): r for r in rows}
    for r in rows:
        first = by[(r["encoder"], r["preset"], int(FLAGS.utds[0]))]
        r["compile_vs_utd1"] = r["compile_s"] / first["compile_s"]
        peer = by.get(("none", r["preset"], r["utd"]))
        r["vs_state"] = r["critic_updates_per_s"] / peer["critic_updates_per_s"] if peer else None
    print(
        f"{'encoder':<8}{'preset':<7}{'hidden':>12}{'K':>4}{'batch':>7}{'UTD':>5}"
        f"{'critic upd/s':>14}{'ms/critic step':>16}{'compile s':>11}{'vs UTD1':>9}"
        f"{'vs state':>9}"
    )
    for r in rows:
        vs = f"{r['vs_state']:>9.2f}" if r["vs_state"] is not None else f"{'-':>9}"
        print(
            f"{r['encoder']:<8}{r['preset']:<7}{'x'.join(map(str, r['hidden'])):>12}"
            f"{r['num_critics']:>4}{r['batch_size']:>7}{r['utd']:>5}"
            f"{r['critic_updates_per_s']:>14.1f}{r['ms_per_critic_step']:>16.2f}"
            f"{r['compile_s']:>11.2f}{r['compile_vs_utd1']:>9.2f}{vs}"
        )
    write_results(
        FLAGS.out,
        {
            "benchmark": "learner_throughput",
            "machine": machine_info(),
            "obs_dim": FLAGS.obs_dim,
            "action_dim": FLAGS.action_dim,
            "cameras": FLAGS.cameras,
            "resolution": FLAGS.resolution,
            "results": rows,
        },
    )


if __name__ == "__main__":
    app.run(main)
