"""How much action noise a BC base tolerates: its success under per-step Gaussian and uniform
noise in the learner's normalized action units (the units of exploration_std, warmup_noise
and action_scale), on the same N episodes per level, with the episodes the noise fixed and
broke against the clean base (paired): how much churn a residual of a given size causes by
chance alone.

    python -m studies.base_noise_sensitivity --task=PickPlace --base=runs/bc/PickPlace

Use it to pick exploration and warm-up noise for a new task or action space: noise that
destroys the base's successes leaves the critic nothing to learn from. Prints a table and
writes JSON with the machine description.
"""

from __future__ import annotations

import os
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("task", "PickPlace", "Task.")
flags.DEFINE_string("base", "runs/bc/PickPlace", "train_bc run / checkpoint / export dir.")
flags.DEFINE_string("demos", None, "Demos for the action scaler (default: the base's).")
flags.DEFINE_list("gaussian", ["0", "0.01", "0.025", "0.05"], "Gaussian std levels.")
flags.DEFINE_list("uniform", ["0.05", "0.1", "0.2"], "Uniform half-width levels.")
flags.DEFINE_float("action_scale", 0.1, "Widening of the scaler (as the learner's).")
flags.DEFINE_integer("episodes", 100, "Episodes per level.")
flags.DEFINE_integer(
    "execution_horizon", None, "Re-anchor the chunked base every N steps (default: the base's own)."
)
flags.DEFINE_float(
    "temporal_ensemble", None, "Predict a chunk every step and ensemble them with weight exp(-m i)."
)
flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/noise_<task>.json).")


def main(argv):
    del argv
    import dataclasses

    from resfit_jax.run.runtime import setup_script

    setup_script()  # before the imports below: mujoco.mjx logs at INFO on import

    import jax
    import jax.numpy as jnp

    from resfit_jax import envs
    from resfit_jax.base.features import rechunk
    from resfit_jax.bc.frozen import open_base
    from resfit_jax.data import read_episodes
    from resfit_jax.replay.demos import fit_normalizer
    from resfit_jax.run.machine import machine_info, write_results
    from resfit_jax.run.stats import paired_outcomes
    from resfit_jax.sim.evaluation import episode_keys, run_episodes

    task = envs.make(FLAGS.task)
    base, info = open_base(FLAGS.base, int(task.observation_spec.shape[0]), task.action_size)
    base = rechunk(base, FLAGS.execution_horizon, FLAGS.temporal_ensemble)
    nz = fit_normalizer(read_episodes(FLAGS.demos or info["demos"]), FLAGS.action_scale)
    n = FLAGS.episodes

    @dataclasses.dataclass(frozen=True)
    class NoisyBase:
        """The base with per-step noise of ``level`` in normalized units (state: base, key)."""

        level: jax.Array
        uniform: jax.Array
        action_dim: int = base.action_dim

        def init_state(self, num_envs):
            return base.init_state(num_envs), jax.random.key(1)

        def reset(self, state, done):
            return base.reset(state[0], done), state[1]

        def step(self, state, obs):
            a, b = base.step(state[0], obs)
            key, k = jax.random.split(state[1])
            an = nz.normalize_action(a)
            eps = jnp.where(
                self.uniform,
                jax.random.uniform(k, an.shape, minval=-1, maxval=1),
                jax.random.normal(k, an.shape),
            )
            return nz.unnormalize_action(jnp.clip(an + self.level * eps, -1, 1)), (b, key)

    @jax.jit
    def run(key, level, uniform):
        return run_episodes(task, NoisyBase(level, uniform), episode_keys(key, n))["success"]

    rows = []
    clean = jax.device_get(run(jax.random.key(5), 0.0, False))
    chunking = (
        f"temporal ensemble m={FLAGS.temporal_ensemble}"
        if FLAGS.temporal_ensemble is not None
        else f"execution horizon {getattr(base, 'horizon', 'own')}"
    )
    print(
        f"{FLAGS.task}: base {info['path']} ({chunking}), {n} episodes per level (same "
        "initial states); fixed / broken: against the clean base on the same starts"
    )
    print(
        f"{'noise':<10}{'level':>8}{'success':>10}{'fixed':>7}{'broken':>8}{'p':>9}{'seconds':>9}"
    )
    for kind, levels in (("gaussian", FLAGS.gaussian), ("uniform", FLAGS.uniform)):
        for level in map(float, levels):
            t0 = time.time()
            succ = jax.device_get(run(jax.random.key(5), level, kind == "uniform"))
            pair = paired_outcomes(clean, succ)
            rows.append(
                {
                    "noise": kind,
                    "level": level,
                    "success_rate": float(succ.mean()),
                    "fixed": pair["fixed"],
                    "broken": pair["broken"],
                    "p_value": pair["p_value"],
                }
            )
            print(
                f"{kind:<10}{level:>8g}{succ.mean():>10.1%}{pair['fixed']:>7}"
                f"{pair['broken']:>8}{pair['p_value']:>9.2g}{time.time() - t0:>9.1f}"
            )
    write_results(
        FLAGS.out or f"benchmarks/results/noise_{FLAGS.task}.json",
        {
            "machine": machine_info(),
            "task": FLAGS.task,
            "base": os.path.relpath(info["path"]),
            "execution_horizon": FLAGS.execution_horizon,
            "temporal_ensemble": FLAGS.temporal_ensemble,
            "episodes": n,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    app.run(main)
