r"""Distil an improved policy back into its BC base.

    python -m experiments.distill --run=runs/probes/ee_chunk --out=runs/bc/PickPlaceEE_distilled
    # then a residual on the distilled base ("round 2"):
    python -m experiments.train --task=PickPlaceEE --base=runs/bc/PickPlaceEE_distilled \
        --recipe=chunk --out=runs/round2/PickPlaceEE

--run is a finished ResFiT run (experiments.train --out, or a setting of studies.ablate;
--seed_index picks one of its seeds). Its policy (base + deterministic residual, the state
the run kept, or --state=last) runs --episodes episodes in MJX on starts of their own (not
the run's evaluation starts); the successful ones, each cut at its first success (or with
--keep=all every frame of every rollout, labelled with the action the policy took), are
written to <out>/distill_data (RLDS) and the base is fine-tuned on its demos plus these
episodes with its chunked loss, starting from its own parameters and normalizer; the best
periodic checkpoint (the starting base included) is kept and exported as train_bc does.
At the end the base, the improved policy and the distilled base run on the run's own
held-out starts for that seed, paired, and <out>/distill_summary.json records them. Running
again with the same flags reuses the recorded rollouts.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("run", None, "A finished ResFiT run directory (the improved policy).")
flags.DEFINE_string(
    "out", None, "Directory of the distilled base (default runs/bc/<task>_distilled)."
)
flags.DEFINE_integer("episodes", 300, "Rollouts of the improved policy.")
flags.DEFINE_enum(
    "keep",
    "successes",
    ["successes", "all"],
    "successes: the successful rollouts, cut at their first success; all: every frame of "
    "every rollout, labelled with the policy's action.",
)
flags.DEFINE_integer("seed_index", 0, "Which of the run's seeds to distil.")
flags.DEFINE_enum("state", "kept", ["kept", "last"], "The run's kept or last learner state.")
flags.DEFINE_integer("steps", 2000, "Fine-tuning gradient steps.")
flags.DEFINE_integer("eval_every", 500, "Evaluate every N fine-tuning steps.")
flags.DEFINE_integer("eval_episodes", 50, "Episodes per periodic evaluation (selection).")
flags.DEFINE_integer("seed", 0, "Seed of the rollout starts and of fine-tuning.")


def _rollouts(trained, policy, data_dir: str, meta: dict):
    """The distillation episodes: recorded under data_dir, or reused from there."""
    import jax

    from resfit_jax.bc.distill import distill_keys, rollout_episodes
    from resfit_jax.data import read_episodes, read_metadata, write_episodes
    from resfit_jax.sim.evaluation import record_episodes

    dataset = os.path.join(data_dir, "distill_rollouts", "1.0.0")
    if os.path.exists(dataset):
        saved = read_metadata(dataset)
        if {k: saved.get(k) for k in meta} != meta:
            raise ValueError(
                f"{data_dir} holds rollouts of another setting ({ {k: saved.get(k) for k in meta} }"
                f"; now {meta}); use another --out."
            )
        print(f"reusing the recorded rollouts in {dataset}")
        return read_episodes(dataset), saved
    task = trained.trainer.task
    keys = distill_keys(FLAGS.seed, FLAGS.episodes)
    rec = jax.device_get(jax.jit(lambda k: record_episodes(task, policy, k))(keys))
    episodes = rollout_episodes(rec, FLAGS.keep)
    stats = {
        "rollout_successes": int(rec["success"].sum()),
        "rollout_mean_success_length": float(rec["length"][rec["success"]].mean())
        if rec["success"].any()
        else None,
        "kept_episodes": len(episodes),
        "kept_steps": int(sum(e.num_actions for e in episodes)),
    }
    if not episodes:
        raise ValueError(
            f"The improved policy succeeded in none of {FLAGS.episodes} rollouts: nothing to "
            "distil (try --keep=all, or a better run)."
        )
    write_episodes(data_dir, episodes, name="distill_rollouts", metadata=meta | stats)
    return episodes, meta | stats


def _held_out(trained, out: str) -> dict:
    """Base, improved policy and distilled base on the run's held-out starts of the seed,
    paired, evaluated as the run's evaluator batches them (so the first two replay the
    outcomes the run recorded; ``replays_run`` says whether they do)."""
    import jax
    import numpy as np

    from resfit_jax.bc.frozen import open_base
    from resfit_jax.run.stats import paired_outcomes
    from resfit_jax.sim.evaluation import episode_keys, run_episodes
    from resfit_jax.sim.report import outcome_bits

    task, i, n = trained.trainer.task, FLAGS.seed_index, trained.cfg.num_final_episodes
    one = lambda x: x[i : i + 1]  # a batch of one seed, as the evaluator vmaps seeds
    keys, state = (
        one(trained.trainer.evaluator.final_keys()),
        jax.tree.map(one, trained.learner_state),
    )
    distilled, _ = open_base(out, int(task.observation_spec.shape[0]), task.action_size)
    makers = {
        "base": lambda st: trained.make_policy(None, st.normalizer),
        "improved": lambda st: trained.make_policy(st, st.normalizer),
        "distilled": lambda st: distilled,
    }
    rows = {}
    for name, make in makers.items():
        run = jax.vmap(lambda st, k, make=make: run_episodes(task, make(st), episode_keys(k, n)))
        r = jax.device_get(jax.jit(run)(state, keys))
        s = np.asarray(r["success"][0])
        rows[name] = {
            "success": s,
            "success_rate": float(s.mean()),
            "mean_success_length": float(r["mean_success_length"][0]),
        }
    with open(os.path.join(FLAGS.run, "summary.json")) as f:
        final = json.load(f).get("final") or {}
    recorded = {
        "base": (final.get("base_per_seed") or [{}] * (i + 1))[i].get("outcomes"),
        "improved": (final.get("per_seed") or [{}] * (i + 1))[i].get("outcomes"),
    }
    if FLAGS.state == "last":
        recorded["improved"] = None
    base = rows["base"]["success"]
    out_rows = {}
    for name, r in rows.items():
        out_rows[name] = {k: v for k, v in r.items() if k != "success"}
        out_rows[name]["outcomes"] = outcome_bits(r["success"])
        if recorded.get(name):
            out_rows[name]["replays_run"] = recorded[name] == out_rows[name]["outcomes"]
        if name != "base":
            p = paired_outcomes(base, r["success"])
            out_rows[name] |= {k: p[k] for k in ("fixed", "broken", "p_value")}
    gain = rows["improved"]["success_rate"] - rows["base"]["success_rate"]
    kept = rows["distilled"]["success_rate"] - rows["base"]["success_rate"]
    return {
        "episodes": int(base.shape[0]),
        "policies": out_rows,
        "share_of_gain_kept": kept / gain if gain > 0 else None,
    }


def main(argv):
    del argv
    from resfit_jax.run.machine import machine_info
    from resfit_jax.run.runtime import setup_script

    setup_script()
    from resfit_jax.bc.pipeline import train_bc
    from resfit_jax.run.configs import usage_error
    from resfit_jax.run.locks import RunLockedError
    from resfit_jax.sim.restore import open_trained_run

    if not FLAGS.run:
        usage_error("Pass --run=<a finished ResFiT run directory> (the improved policy).")
    for name in ("episodes", "steps", "eval_every", "eval_episodes"):
        if getattr(FLAGS, name) < 1:
            usage_error(f"--{name} must be >= 1 (got {getattr(FLAGS, name)}).")
    try:
        trained = open_trained_run(FLAGS.run, state=FLAGS.state)
    except (FileNotFoundError, ValueError) as e:
        usage_error(str(e))
    if not 0 <= FLAGS.seed_index < len(trained.seeds):
        usage_error(
            f"--seed_index={FLAGS.seed_index}: {FLAGS.run} trained seeds {trained.seeds} "
            f"(indices 0..{len(trained.seeds) - 1})."
        )
    info = trained.info
    base_dir = info["base"]
    if not os.path.exists(os.path.join(base_dir, "base_info.json")):
        usage_error(
            f"The run's base {base_dir} is an export, not a train_bc checkpoint: fine-tuning "
            "needs its parameters (<train_bc out>/checkpoint)."
        )
    task_name = info["task"]
    out = os.path.abspath(FLAGS.out or os.path.join("runs", "bc", f"{task_name}_distilled"))
    at = trained.progress.get("state_env_steps") or trained.progress.get("env_steps")
    print(
        f"Distilling {FLAGS.run} (seed {trained.seeds[FLAGS.seed_index]}, {FLAGS.state} state "
        f"at {at} env steps) into {out}"
    )
    meta = {
        "run": os.path.abspath(FLAGS.run),
        "state": FLAGS.state,
        "seed_index": FLAGS.seed_index,
        "keep": FLAGS.keep,
        "episodes": FLAGS.episodes,
        "seed": FLAGS.seed,
    }
    try:
        episodes, data = _rollouts(
            trained, trained.policy(FLAGS.seed_index), os.path.join(out, "distill_data"), meta
        )
    except ValueError as e:
        usage_error(str(e))
    print(
        f"improved policy: {data['rollout_successes']} / {FLAGS.episodes} rollouts succeed; "
        f"{data['kept_episodes']} episodes ({data['kept_steps']} steps) join the base's demos"
    )
    try:
        bc = train_bc(
            task_name,
            out,
            info["demos"],
            steps=FLAGS.steps,
            eval_every=FLAGS.eval_every,
            eval_episodes=FLAGS.eval_episodes,
            seed=FLAGS.seed,
            init_from=base_dir,
            extra_episodes=episodes,
            extra_source=os.path.join(out, "distill_data"),
        )
    except (KeyError, ValueError, FileNotFoundError, RunLockedError) as e:
        usage_error(str(e).strip('"'))
    held = _held_out(trained, out)
    summary = {"distill": meta | data, "bc": {k: bc[k] for k in ("best_step", "success_rate")}}
    summary |= {"held_out": held, "machine": machine_info()}
    with open(os.path.join(out, "distill_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\nHeld out ({held['episodes']} starts of the run's seed, paired against the base)")
    for name, r in held["policies"].items():
        pair = (
            f"  fixed {r['fixed']:>3} broken {r['broken']:>3} p {r['p_value']:.2g}"
            if "fixed" in r
            else ""
        )
        replay = {True: "  (replays the run)", False: "  (NOT the run's outcomes)"}
        print(
            f"  {name:<10} {r['success_rate']:6.1%}  mean steps of successes "
            f"{r['mean_success_length']:5.1f}{pair}{replay.get(r.get('replays_run'), '')}"
        )
    if held["share_of_gain_kept"] is not None:
        print(f"  the distilled base keeps {held['share_of_gain_kept']:.0%} of the gain")
    print(f"wrote {os.path.join(out, 'distill_summary.json')}")
    return 0


def run():
    """Console script ``resfit-distill``."""
    app.run(main)


if __name__ == "__main__":
    run()
