"""Pixel replay: frames stored once (``replay.frame_once``) against two frames per transition.

    python -m benchmarks.replay_frames                       # 64 and 84 px, 16 envs, n = 10

For each resolution it builds the same sim loop twice (PixelPointReach drawn at that
resolution, one camera; the env is pure JAX, so the figures are the loop's storage path,
not a renderer) and measures, in the same run:

- memory: bytes of the online replay plus the n-step writer's windows, per transition of
  capacity (the frames of 2 cameras cost twice the camera part);
- collect + store: env steps/s of the warm-up chunk (env step, n-step writer, replay add);
- sample: [UTD, B] batches/s of ``ReplayBuffer.sample`` (frame ids put back as frames).

Prints a table and writes JSON with the machine description.
"""

from __future__ import annotations

import time

import jax
from absl import app, flags

from resfit_jax import envs
from resfit_jax.agents.residual_td3 import ResidualTD3Config, make_learner
from resfit_jax.base.policy import FunctionBase
from resfit_jax.normalization import ActionScaler, Normalizer, StateStandardizer
from resfit_jax.replay import ReplayConfig
from resfit_jax.run.machine import machine_info, write_results
from resfit_jax.sim.loop import SimLoop

FLAGS = flags.FLAGS
flags.DEFINE_list("resolutions", ["64", "84"], "Image sizes (square).")
flags.DEFINE_integer("envs", 16, "Parallel envs E.")
flags.DEFINE_integer("n_step", 10, "n of the n-step writer (the arm presets' 10).")
flags.DEFINE_integer("capacity", 8_192, "Online replay capacity (transitions).")
flags.DEFINE_integer("steps", 64, "Vector steps per warm-up chunk.")
flags.DEFINE_integer("batch", 128, "Samples per critic step (the pixel CPU preset's 128).")
flags.DEFINE_integer("utd", 2, "Critic steps per sample call.")
flags.DEFINE_float("min_seconds", 3.0, "Minimum timed seconds per measurement.")
flags.DEFINE_string("out", "benchmarks/results/replay_frames.json", "JSON output path.")


def timed(fn, state, min_seconds: float) -> tuple[float, float, object]:
    """(compile + first call s, calls/s, state) of ``state = fn(state)``."""
    t0 = time.perf_counter()
    state = jax.block_until_ready(fn(state))
    first = time.perf_counter() - t0
    calls, t0 = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - t0 < min_seconds:
        state = jax.block_until_ready(fn(state))
        calls += 1
    return first, calls / (time.perf_counter() - t0), state


def measure(resolution: int, frame_once: bool) -> dict:
    task = envs.make("PixelPointReach", resolution=resolution, episode_length=50)
    replay = ReplayConfig(
        n_step=FLAGS.n_step,
        batch_size=FLAGS.batch,
        utd=FLAGS.utd,
        capacity=FLAGS.capacity,
        frame_once=frame_once,
    )
    cfg = ResidualTD3Config(
        actor_hidden_dims=(32,), critic_hidden_dims=(32,), num_critics=2, check_finite=False
    )
    loop = SimLoop(
        task,
        FunctionBase(lambda o: -0.3 * o["state"], 2),
        make_learner(cfg, task.observation_spec, 2),
        replay,
        num_envs=FLAGS.envs,
    )
    norm = Normalizer(
        obs=StateStandardizer.identity(2),
        action=ActionScaler.from_bounds(task.action_low, task.action_high, cfg.action_scale),
    )
    ls = loop.init(jax.random.PRNGKey(0), loop.learner.init(jax.random.PRNGKey(1), norm))
    collect = jax.jit(lambda s: loop.warmup(s, FLAGS.steps)[0])
    compile_s, chunks_per_s, ls = timed(collect, ls, FLAGS.min_seconds)
    while int(ls.replay_state.size) < FLAGS.capacity:  # fill, so sampling is real
        ls = collect(ls)
    sample = jax.jit(lambda rs, k: loop.buffer.sample(rs, k, (FLAGS.utd, FLAGS.batch)))
    keys = iter(jax.random.split(jax.random.PRNGKey(2), 100_000))
    _, samples_per_s, _ = timed(
        lambda _: sample(ls.replay_state, next(keys)), None, FLAGS.min_seconds
    )
    nbytes = lambda t: sum(x.nbytes for x in jax.tree.leaves(t))
    stored = nbytes(ls.replay_state) + nbytes(ls.writer_state)
    return {
        "resolution": resolution,
        "frame_once": frame_once,
        "envs": FLAGS.envs,
        "n_step": FLAGS.n_step,
        "capacity": FLAGS.capacity,
        "frames_kept": (loop.frame_store.capacity if frame_once else 2 * FLAGS.capacity),
        "bytes_per_transition": stored / FLAGS.capacity,
        "frame_bytes": resolution * resolution * 3,
        "collect_env_steps_per_s": chunks_per_s * FLAGS.steps * FLAGS.envs,
        "collect_compile_s": compile_s,
        "samples_per_s": samples_per_s,
    }


def main(argv):
    from resfit_jax.run.runtime import setup_script

    setup_script()
    rows = []
    print(
        f"{'px':>4} {'storage':>8} {'frames kept':>12} {'bytes/transition':>17} "
        f"{'collect env steps/s':>20} {'[UTD,B] samples/s':>18}"
    )
    for res in map(int, FLAGS.resolutions):
        pair = [measure(res, once) for once in (False, True)]
        for r in pair:
            print(
                f"{res:>4} {'once' if r['frame_once'] else 'twice':>8} {r['frames_kept']:>12,} "
                f"{r['bytes_per_transition']:>17,.0f} {r['collect_env_steps_per_s']:>20,.0f} "
                f"{r['samples_per_s']:>18,.0f}"
            )
        twice, once = pair
        ratio = {
            "memory": once["bytes_per_transition"] / twice["bytes_per_transition"],
            "collect": once["collect_env_steps_per_s"] / twice["collect_env_steps_per_s"],
            "sample": once["samples_per_s"] / twice["samples_per_s"],
        }
        print(
            f"{res:>4} once / twice: memory x{ratio['memory']:.2f}, collect "
            f"x{ratio['collect']:.2f}, sample x{ratio['sample']:.2f}"
        )
        rows += [dict(r, once_over_twice=ratio) if r["frame_once"] else r for r in pair]
    write_results(
        FLAGS.out, {"benchmark": "replay_frames", "machine": machine_info(), "rows": rows}
    )


if __name__ == "__main__":
    app.run(main)
