"""The paper's comparison: ResFiT and the baselines on the same task, base, demos, evaluation
starts and seeds.

    python -m studies.compare --override=ppo:total_env_steps=512000   # PointReach (~1 h)
    python -m studies.compare --task=PickPlace --base=runs/bc/PickPlace --headline
    python -m studies.compare ... --methods=resfit,ibrl --override=ibrl:learner.rule=greedy

Methods: resfit, rlpd (Tuned RLPD: the same learner with no base), ibrl (the base and an RL
actor propose, the critic picks) with the task's preset and each baseline's recipe
(``sim.presets.with_method``), ppo (residual PPO, ResiP recipe) and fbc (Filtered BC: the base
itself fine-tuned on its own successes; a train_bc base only), each through
``sim.runs.method_trainer``, as ``resfit-train --method`` trains them. Each trains S seeds
vmapped into <out>/<method> and resumes there; a finished run is kept. The off-policy methods
share the env-step budget of the task's preset; PPO has its own (its preset), reported as
trained. --override=METHOD:field=value changes one method's config (repeatable).

Prints a table of the held-out final evaluation per method (pooled over seeds: success with a
95% Wilson interval, mean steps of successes, fixed / broken against the BC base on the same
starts, McNemar p), then each baseline against ResFiT on the same held-out starts, episode by
episode (``vs_resfit``: fixed / broken, p, interval of the difference; runs recorded before
outcomes were kept are left out until ``--rescore`` re-runs their held-out evaluation from their
last checkpoint), plots success against env steps (mean and min-max over seeds) and writes
benchmarks/results/compare.json (one entry per task, with the machine). --headline adds each
finished method's row to benchmarks/results/headline.json (setting "compare") and regenerates
the tables of README.md and docs/results.md.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

from resfit_jax.run.configs import usage_error

FLAGS = flags.FLAGS
RESULTS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "results"
)
LABELS = {
    "resfit": "ResFiT",
    "rlpd": "RLPD",
    "ibrl": "IBRL",
    "ppo": "residual PPO",
    "fbc": "Filtered BC",
}


def define_flags() -> None:
    flags.DEFINE_string("task", "PointReach", "Registered task name.")
    flags.DEFINE_string(
        "base",
        "scripted",
        "BC base directory; 'scripted' on PointReach: the "
        "biased scripted base with 60 expert demos.",
    )
    flags.DEFINE_string("demos", None, "RLDS demos (default: the base's).")
    flags.DEFINE_integer("seeds", 3, "Seeds per method (vmapped).")
    flags.DEFINE_list(
        "methods",
        ["resfit", "rlpd", "ibrl", "ppo", "fbc"],
        "Methods to compare (fbc is skipped on the scripted base).",
    )
    flags.DEFINE_multi_string("override", [], "METHOD:field=value, one method's override.")
    flags.DEFINE_string("out", None, "Run directories (default runs/compare/<task>).")
    flags.DEFINE_bool("analyze_only", False, "Train nothing; report the runs as they are.")
    flags.DEFINE_bool(
        "headline", False, "Add the finished rows to headline.json and regenerate the tables."
    )
    flags.DEFINE_bool(
        "rescore",
        False,
        "Re-run the held-out final evaluation of finished runs "
        "recorded before per-episode outcomes were kept, so they pair with ResFiT "
        "(same --override values as their training).",
    )
    flags.DEFINE_string(
        "json_out",
        os.path.join(RESULTS, "compare.json"),
        "Results JSON (the task's entry is replaced).",
    )
    flags.DEFINE_string("plot", None, "PNG (default benchmarks/results/compare_<task>.png).")


def method_overrides(items: list[str], methods: list[str]) -> dict[str, list[str]]:
    """{"ibrl": ["learner.rule=greedy"], ...} from METHOD:field=value strings."""
    out: dict[str, list[str]] = {m: [] for m in methods}
    for item in items:
        method, sep, ov = item.partition(":")
        if not sep or "=" not in ov:
            raise ValueError(f"--override={item!r}: expected METHOD:field=value.")
        if method not in out:
            raise ValueError(f"--override={item!r}: {method!r} is not one of --methods {methods}.")
        out[method].append(ov)
    return out


def wilson(successes: int, n: int) -> tuple[float, float]:
    from resfit_jax.run.stats import wilson_interval

    return wilson_interval(successes, n)


def report(task: str, rows: dict[str, dict | None]) -> str:
    """The held-out table, one line per method (a dash for a run without a final evaluation)."""
    lines = [
        f"{task}: held-out final evaluation, pooled over seeds (BC base on the same starts)",
        f"{'method':<14}{'success':>9}{'95% CI':>16}{'steps':>7}{'95% CI':>16}{'BC':>8}"
        f"{'BC steps':>9}"
        f"{'fixed':>7}{'broken':>7}{'p':>9}{'env steps':>12}{'wall min':>9}",
    ]
    for m, r in rows.items():
        if r is None:
            lines.append(f"{LABELS[m]:<14}{'(not finished)':>16}")
            continue
        lo, hi = r["ci95"]
        steps = "-" if r["mean_steps"] is None else f"{r['mean_steps']:.1f}"
        base_steps = "-" if r["base_mean_steps"] is None else f"{r['base_mean_steps']:.1f}"
        sci = r.get("mean_steps_ci95")  # None for runs recorded before it was kept
        sci = "-" if sci is None else f"[{sci[0]:.1f}, {sci[1]:.1f}]"
        lines.append(
            f"{LABELS[m]:<14}{r['success_rate']:>9.1%}{f'[{lo:.2f}, {hi:.2f}]':>16}"
            f"{steps:>7}{sci:>16}{r['base_success_rate']:>8.1%}{base_steps:>9}"
            f"{r['fixed']:>7}"
            f"{r['broken']:>7}{r['p_value']:>9.2g}"
            f"{r['env_steps'] + r['warmup_env_steps']:>12,}{r['wall_min']:>9.1f}"
        )
    return "\n".join(lines)


def against_resfit(runs: dict[str, str], rows: dict[str, dict | None]) -> dict[str, dict]:
    """Each finished baseline against ResFiT on the same held-out starts, episode by episode
    (``report.paired_between``; fixed: ResFiT fails and the baseline succeeds). Set as
    ``rows[m]["vs_resfit"]`` and returned; runs recorded without outcomes are skipped."""
    from resfit_jax.sim.report import paired_between

    if rows.get("resfit") is None:
        return {}
    load = lambda m: json.load(open(os.path.join(runs[m], "summary.json")))
    ref, out = load("resfit"), {}
    for m, r in rows.items():
        if m == "resfit" or r is None:
            continue
        try:
            out[m] = r["vs_resfit"] = paired_between(ref, load(m))
        except ValueError as e:
            print(f"{LABELS[m]}: not paired with ResFiT ({e})")
    return out


def resfit_table(paired: dict[str, dict]) -> str:
    from resfit_jax.sim.report import paired_cells, paired_header

    lines = [
        "Against ResFiT, episode by episode on the same held-out starts (fixed: ResFiT "
        "fails and the method succeeds)",
        f"{'method':<14}{paired_header('ResFiT', 'method')}",
    ]
    lines += [f"{LABELS[m]:<14}{paired_cells(v)}" for m, v in paired.items()]
    return "\n".join(lines)


def plot(curves: dict[str, dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from resfit_jax.run.plotting import save_success_plot

    fig, ax = plt.subplots(figsize=(7, 4))
    base = None
    for i, (m, c) in enumerate(curves.items()):
        x, y = c["total_env_steps"], c["success"]
        keep = x > 0
        ax.plot(
            x[keep],
            y[:, keep].mean(axis=0),
            color=f"C{i}",
            marker=".",
            label=f"{LABELS[m]} ({y.shape[0]} seeds)",
        )
        ax.fill_between(
            x[keep], y[:, keep].min(axis=0), y[:, keep].max(axis=0), color=f"C{i}", alpha=0.2
        )
        base = float(np.mean(c["base"]))
    if base is not None:
        ax.axhline(base, color="gray", ls="--", lw=1, label="BC base")
    save_success_plot(fig, ax, title, path)


def main(argv):
    del argv
    from resfit_jax.run.runtime import setup_script

    setup_script()
    from resfit_jax.run.machine import machine_info, write_results
    from resfit_jax.run.plotting import eval_curves
    from resfit_jax.sim.runs import (
        METHODS,
        check_comparable,
        finished,
        has_outcomes,
        open_inputs,
        rescore,
        train_or_resume,
    )

    from . import headline

    task, methods = FLAGS.task, list(FLAGS.methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        usage_error(f"--methods: {unknown or 'none given'}; choose from {METHODS}.")
    try:
        overrides = method_overrides(FLAGS.override, methods)
    except ValueError as e:
        usage_error(str(e))
    if FLAGS.base == "scripted" and "fbc" in methods:
        print("Filtered BC: left out (the scripted base has no parameters to tune)")
        methods.remove("fbc")
    out = FLAGS.out or os.path.join("runs", "compare", task)
    runs = {m: os.path.join(out, m) for m in methods}
    if not FLAGS.analyze_only or FLAGS.rescore:
        try:
            inputs = open_inputs(task, FLAGS.base, FLAGS.demos)
            check_comparable(runs)  # the runs already there, before any training
        except (FileNotFoundError, ValueError) as e:
            usage_error(str(e))
        for m in methods:
            if finished(runs[m]):
                print(f"{LABELS[m]}: finished run in {runs[m]}")
                if FLAGS.rescore and not has_outcomes(runs[m]):
                    print(f"{LABELS[m]}: rescoring its held-out evaluation")
                    try:
                        rescore(
                            m,
                            task,
                            inputs,
                            runs[m],
                            list(range(FLAGS.seeds)),
                            overrides[m],
                            base_dir=FLAGS.base,
                        )
                    except ValueError as e:
                        usage_error(f"{LABELS[m]}: {e}")
                continue
            if FLAGS.analyze_only:
                continue
            print(f"{LABELS[m]}: training into {runs[m]}")
            train_or_resume(
                m,
                task,
                inputs,
                runs[m],
                list(range(FLAGS.seeds)),
                overrides[m],
                base_dir=FLAGS.base,
            )
    try:
        check_comparable(runs)
    except ValueError as e:
        usage_error(str(e))
    rows, curves = {}, {}
    for m, run in runs.items():
        rows[m] = None
        if finished(run):
            r = headline.row_from_run(run, None, "compare")
            n = r["final_episodes"]
            r["ci95"] = list(wilson(round(r["success_rate"] * n), n))
            rows[m] = r
        if os.path.exists(os.path.join(run, "metrics.jsonl")):
            curves[m] = eval_curves(run)
    seeds = {tuple(c["seeds"]) for c in curves.values()}
    if len(seeds) > 1:
        usage_error(
            f"The runs have different seeds {sorted(seeds)}, so different "
            "evaluation starts; train them with the same --seeds."
        )
    print(report(task, rows))
    paired = against_resfit(runs, rows)
    if paired:
        print(resfit_table(paired))
    png = FLAGS.plot or os.path.join(RESULTS, f"compare_{task}.png")
    if curves:
        plot(curves, png, f"{task}: ResFiT and baselines, same base and starts")
        print(f"plot: {png}")
    result = {
        "task": task,
        "base": FLAGS.base
        if FLAGS.base == "scripted"
        else os.path.basename(os.path.normpath(FLAGS.base or "")),
        "methods": methods,
        "rows": {m: r and {k: v for k, v in r.items() if k != "machine"} for m, r in rows.items()},
        "curves": {
            m: {
                "total_env_steps": c["total_env_steps"].tolist(),
                "success_mean": c["success"].mean(axis=0).tolist(),
                "success_min": c["success"].min(axis=0).tolist(),
                "success_max": c["success"].max(axis=0).tolist(),
            }
            for m, c in curves.items()
        },
        "plot": os.path.relpath(png, os.path.dirname(RESULTS)),
        "machine": machine_info(),
    }
    data = json.load(open(FLAGS.json_out)) if os.path.exists(FLAGS.json_out) else {}
    data[task] = result
    write_results(FLAGS.json_out, data)
    if FLAGS.headline:
        hl = headline.load()
        for r in rows.values():
            if r is not None:
                hl = headline.add(hl, {k: v for k, v in r.items() if k != "ci95"})
        headline.save(hl)
        print(f"headline rows added; tables regenerated from {headline.HEADLINE}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
