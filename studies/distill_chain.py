r"""The distillation chain: base -> improved policy (round 1) -> distilled base -> round 2, per
seed of a finished multi-seed ResFiT or residual-PPO run, all on the same held-out starts.

    python -m studies.distill_chain --round1=runs/ablate/semi_mdp_ppee/chunk \
        --out=runs/chain/PickPlaceEE

For each seed s of --round1 (e.g. a setting of studies.ablate): distil that seed's kept
policy into a new base (``bc.distill.distill_run``, in <out>/distilled/seed_<s>), then train
round 2 on the distilled base with round 1's method, task, preset and overrides and the seed s (in
<out>/round2/seed_<s>; its held-out starts are round 1's for that seed: they depend only on
the seed). Every piece is reused when finished and resumed when interrupted, so the study
continues across sessions. Then one table, pooled over the seeds (paired: the same starts):
each stage's held-out success, mean steps of successes and the env steps spent so far
(round 1's main loop, the distillation rollouts, round 2's main loop), each stage against
the base and against the stage before it (fixed / broken, exact McNemar p), the share of
round 1's gain the distilled base keeps, and whether round 2 ends above round 1. Writes
<out>/chain.json and --results (with the machine description).
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The script's flags (defined only when it runs, so importing it defines none)."""
    flags.DEFINE_string(
        "round1", None, "A finished multi-seed ResFiT or residual-PPO run (round 1)."
    )
    flags.DEFINE_string("out", None, "Study directory (distilled bases and round-2 runs).")
    flags.DEFINE_integer("episodes", 1000, "Distillation rollouts per seed.")
    flags.DEFINE_enum("keep", "successes", ["successes", "all"], "Distillation data (see distill).")
    flags.DEFINE_integer("steps", 2000, "Fine-tuning steps per distilled base.")
    flags.DEFINE_float("lr", 1e-5, "Fine-tuning learning rate (see experiments.distill).")
    flags.DEFINE_integer("eval_episodes", 200, "Selection episodes per fine-tuning evaluation.")
    flags.DEFINE_enum(
        "labels", "replanned", ["executed", "replanned"], "Chunk labels (see experiments.distill)."
    )
    flags.DEFINE_float("dropout", 0.0, "Fine-tuning dropout (see experiments.distill).")
    flags.DEFINE_list("seed_indices", None, "Round 1's seeds to run (indices; default: all).")
    flags.DEFINE_bool("skip_round2", False, "Distil only (round 2 in a later session).")
    flags.DEFINE_string("results", None, "Also write the table's JSON here.")


STAGES = ("base", "round1", "distilled", "round2")
COMPARISONS = (
    ("round1", "base"),
    ("distilled", "base"),
    ("distilled", "round1"),
    ("round2", "base"),
    ("round2", "distilled"),
    ("round2", "round1"),
)


def chain_table(per_seed: list[dict]) -> dict:
    """Pool per-seed stages into the chain's table. Each entry: {"seed", "<stage>":
    {"outcomes": "0110...", "mean_success_length", "env_steps"}} for the stages present (a
    stage's env_steps: spent by it, not before it). Returns stages (success rate, mean steps of
    successes weighted by successes, cumulative env steps per seed), the paired comparisons
    among the stages every seed has, the share of round 1's gain the distilled base keeps."""
    from resfit_jax.run.stats import paired_outcomes

    present = [s for s in STAGES if all(s in r for r in per_seed)] if per_seed else []
    bits = {s: np.array([c == "1" for r in per_seed for c in r[s]["outcomes"]]) for s in present}
    stages, spent = {}, 0.0
    for s in present:
        wins = [r[s]["outcomes"].count("1") for r in per_seed]
        lengths = [r[s].get("mean_success_length") or 0.0 for r in per_seed]
        spent += float(np.mean([r[s].get("env_steps", 0) for r in per_seed]))
        stages[s] = {
            "success_rate": float(bits[s].mean()),
            "episodes": int(bits[s].size),
            "mean_success_length": float(np.dot(wins, lengths) / max(sum(wins), 1)),
            "env_steps_so_far": int(spent),
        }
    comparisons = []
    for a, b in COMPARISONS:
        if a in bits and b in bits:
            p = paired_outcomes(bits[b], bits[a])
            comparisons.append(
                {"stage": a, "against": b}
                | {k: p[k] for k in ("fixed", "broken", "p_value", "diff_ci_low", "diff_ci_high")}
            )
    share = None
    if {"base", "round1", "distilled"} <= set(stages):
        gain = stages["round1"]["success_rate"] - stages["base"]["success_rate"]
        kept = stages["distilled"]["success_rate"] - stages["base"]["success_rate"]
        share = kept / gain if gain > 0 else None
    fits = [r["correction_fit"] for r in per_seed if r.get("correction_fit")]
    fit = None
    if per_seed and len(fits) == len(per_seed):  # seed means (bc.distill.correction_fit)
        fit = {k: float(np.mean([f[k] for f in fits])) for k in fits[0] if k != "frames"}
    return {
        "seeds": [r["seed"] for r in per_seed],
        "stages": stages,
        "comparisons": comparisons,
        "share_of_gain_kept": share,
        "correction_fit": fit,
    }


def format_table(t: dict) -> str:
    lines = [
        f"Held out, {len(t['seeds'])} seeds {t['seeds']}, paired on the same starts",
        f"{'stage':<10}{'success':>9}{'episodes':>10}{'steps/success':>15}{'env steps':>12}",
    ]
    for s, v in t["stages"].items():
        lines.append(
            f"{s:<10}{v['success_rate']:>9.1%}{v['episodes']:>10}"
            f"{v['mean_success_length']:>15.1f}{v['env_steps_so_far']:>12,}"
        )
    for c in t["comparisons"]:
        lines.append(
            f"  {c['stage']} vs {c['against']}: fixed {c['fixed']}, broken {c['broken']}, "
            f"p {c['p_value']:.2g}, diff [{c['diff_ci_low']:+.3f}, {c['diff_ci_high']:+.3f}]"
        )
    if t["share_of_gain_kept"] is not None:
        lines.append(f"  the distilled bases keep {t['share_of_gain_kept']:.0%} of round 1's gain")
    if t.get("correction_fit"):
        from resfit_jax.bc.distill import fit_line

        lines.append(fit_line(t["correction_fit"]) + " (seed means, held out)")
    return "\n".join(lines)


def _seed_row(round1: dict, i: int, seed: int, distilled: dict, round2: dict | None) -> dict:
    """One seed's stages from round 1's summary, the distillation summary and round 2's."""
    f1 = round1["final"]
    base, r1 = f1["base_per_seed"][i], f1["per_seed"][i]
    held = distilled["held_out"]["policies"]["distilled"]
    row = {
        "seed": seed,
        "base": {k: base[k] for k in ("outcomes", "mean_success_length")} | {"env_steps": 0},
        "round1": {k: r1[k] for k in ("outcomes", "mean_success_length")}
        | {"env_steps": int(round1["env_steps"])},
        "distilled": {k: held[k] for k in ("outcomes", "mean_success_length")}
        | {"env_steps": int(distilled["distill"]["rollout_env_steps"])},
    }
    if distilled.get("correction_fit"):
        row["correction_fit"] = distilled["correction_fit"]
    if round2 is not None:
        f2 = round2["final"]
        b2, r2 = f2["base_per_seed"][0], f2["per_seed"][0]
        row["distilled_in_round2"] = b2["outcomes"] == held["outcomes"]
        row["distilled"] |= {k: b2[k] for k in ("outcomes", "mean_success_length")}
        row["round2"] = {k: r2[k] for k in ("outcomes", "mean_success_length")} | {
            "env_steps": int(round2["env_steps"])
        }
    return row


def main(argv):
    del argv
    from resfit_jax.run.runtime import setup_script

    setup_script()
    from resfit_jax.bc.distill import DistillOptions, distill_run
    from resfit_jax.run.configs import usage_error
    from resfit_jax.run.machine import machine_info
    from resfit_jax.sim.restore import REOPENED_METHODS
    from resfit_jax.sim.runs import method_trainer, open_inputs

    if not FLAGS.round1 or not FLAGS.out:
        usage_error(
            "Pass --round1=<a finished multi-seed ResFiT or residual-PPO run> and "
            "--out=<study dir>."
        )
    try:
        with open(os.path.join(FLAGS.round1, "config.json")) as f:
            info = json.load(f)
        with open(os.path.join(FLAGS.round1, "summary.json")) as f:
            round1 = json.load(f)
    except OSError as e:
        usage_error(f"--round1={FLAGS.round1}: {e}; give a finished training run.")
    if not round1.get("complete"):
        usage_error(f"--round1={FLAGS.round1} has not finished; finish it first.")
    method = REOPENED_METHODS.get(info.get("method", "resfit"))
    if method is None:
        usage_error(
            f"--round1={FLAGS.round1} is a {info['method']} run; give a ResFiT or residual PPO "
            "run (a residual on the base)."
        )
    seeds = list(info["seeds"])
    picked = [int(x) for x in FLAGS.seed_indices] if FLAGS.seed_indices else range(len(seeds))
    task_name, overrides = info["task"], list(info.get("overrides", []))
    # the distillation setting every seed's base is made (or reused) with
    setting = {
        k: getattr(FLAGS, k)
        for k in ("episodes", "keep", "steps", "lr", "eval_episodes", "labels", "dropout")
    }
    # distillations made before these were settings recorded none: they ran at these values
    before = {"eval_episodes": 50, "labels": "executed", "dropout": 0.1}
    rows = []
    for i in picked:
        seed = seeds[i]
        d_dir = os.path.join(FLAGS.out, "distilled", f"seed_{seed}")
        done = os.path.join(d_dir, "distill_summary.json")
        if os.path.exists(done):
            print(f"seed {seed}: distilled base in {d_dir} (reused)")
        else:
            try:
                distill_run(
                    FLAGS.round1,
                    d_dir,
                    DistillOptions(
                        FLAGS.episodes,
                        FLAGS.keep,
                        i,
                        steps=FLAGS.steps,
                        seed=seed,
                        lr=FLAGS.lr,
                        eval_episodes=FLAGS.eval_episodes,
                        labels=FLAGS.labels,
                        dropout=FLAGS.dropout,
                    ),
                )
            except (FileNotFoundError, ValueError) as e:
                usage_error(str(e))
        with open(done) as f:
            distilled = json.load(f)
        got = {k: distilled["distill"].get(k, before.get(k)) for k in setting}
        if got != setting:
            usage_error(
                f"{d_dir} was distilled with {got}, not {setting}: pass the same settings or "
                "another --out."
            )
        round2 = None
        r_dir = os.path.join(FLAGS.out, "round2", f"seed_{seed}")
        r_done = os.path.join(r_dir, "summary.json")
        if os.path.exists(r_done) and json.load(open(r_done)).get("complete"):
            print(f"seed {seed}: round 2 in {r_dir} (reused)")
        elif not FLAGS.skip_round2:
            task, base, episodes, identity, paths = open_inputs(task_name, d_dir, info["demos"])
            scale = info.get("scale", "cpu")
            trainer, train = method_trainer(
                method, task_name, (task, base, episodes), [seed], overrides, scale
            )
            print(f"seed {seed}: round 2 on {d_dir} ({' '.join(overrides) or 'preset'})")
            train(
                trainer,
                r_dir,
                resume=os.path.isdir(os.path.join(r_dir, "checkpoints")),
                task_name=task_name,
                extra_info={
                    "base": paths["base"],
                    "demos": paths["demos"],
                    "scale": scale,
                    "method": info.get("method", "resfit"),
                    "overrides": overrides,
                },
                identity=identity,
            )
        if os.path.exists(r_done):
            round2 = json.load(open(r_done))
        rows.append(_seed_row(round1, i, seed, distilled, round2))
    table = chain_table(rows)
    print("\n" + format_table(table))
    result = {
        "task": task_name,
        "round1": os.path.relpath(FLAGS.round1),
        "overrides": overrides,
        "distill": setting,
        "per_seed": rows,
        **table,
        "machine": machine_info(),
    }
    os.makedirs(FLAGS.out, exist_ok=True)
    for path in filter(None, (os.path.join(FLAGS.out, "chain.json"), FLAGS.results)):
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
