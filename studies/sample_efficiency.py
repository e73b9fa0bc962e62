r"""Sample efficiency: ResFiT against residual PPO on the same task, base and evaluation starts.

    python -m studies.sample_efficiency --task=PointReach --base=scripted --seeds=3
    python -m studies.sample_efficiency --task=PickPlace --base=runs/bc/PickPlace --seeds=3 \
        --ppo_chunk=2000000          # PPO trains 2M more env steps per seed per invocation
    python -m studies.sample_efficiency --task=PickPlace --analyze_only
    python -m studies.sample_efficiency --task=PickPlaceEE --base=runs/bc/PickPlaceEE \
        --resfit_override=total_env_steps=20480 --ppo_chunk=500000   # the chunk recipe

Each method trains in its own run directory under --out (resfit/, ppo/), through the same
trainers as experiments.train (ResFiT with --recipe, by default the chunk recipe on the arm
tasks, and --method=ppo), 3 seeds vmapped each; the same seeds give both methods the same
periodic and held-out starts. Re-running resumes both; with --ppo_chunk a long PPO budget is
spread over several invocations. --resfit_run / --ppo_run use runs made elsewhere instead
(same base, demos and seeds; checked through their content hashes).

The analysis (also after every invocation, on whatever has been trained so far):
- success against total env steps (warm-up collection counted), mean and min-max over seeds,
  log-scale x, as a PNG;
- the threshold: the base's periodic success + ``--fraction`` (0.75) of ResFiT's gain on the
  held-out starts (final minus base, pooled over seeds), or ``--threshold`` (absolute);
- a warning when the threshold lies inside the base's own 95% interval on the periodic
  starts (pooled over seeds): a curve can then cross it by evaluation noise alone;
- the env steps each method's seed-mean periodic success first reaches it, with a bootstrap
  interval over seeds, and the ratio PPO / ResFiT. When PPO has not reached it within the
  steps it has run, its figure and the ratio are lower bounds and are reported as such;
- with ``--sweep=0.88,0.89,0.9``, the same ratio at each of those thresholds (a table, and
  ``sweep`` in the JSON): how much the ratio depends on where the threshold is put.
Writes benchmarks/results/sample_efficiency.json (one entry per task, with the machine).
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


def define_flags() -> None:
    flags.DEFINE_string("task", "PointReach", "Registered task name.")
    flags.DEFINE_string(
        "base",
        None,
        "BC base directory (default runs/bc/<task>); 'scripted' "
        "on PointReach: the biased scripted base with 60 expert demos.",
    )
    flags.DEFINE_string("demos", None, "RLDS demos (default: the base's).")
    flags.DEFINE_integer("seeds", 3, "Seeds per method (vmapped).")
    flags.DEFINE_string(
        "out", None, "Run directories go here (default runs/sample_efficiency/<task>)."
    )
    flags.DEFINE_string("resfit_run", None, "Use this ResFiT run instead of training one.")
    flags.DEFINE_string("ppo_run", None, "Use this residual-PPO run instead of training one.")
    flags.DEFINE_enum(
        "recipe",
        None,
        ["per_step", "chunk"],
        "ResFiT recipe (as experiments.train --recipe; default: chunk on the arm tasks, "
        "per_step elsewhere); --resfit_override applies after it.",
    )
    flags.DEFINE_multi_string("resfit_override", [], "ResFiT config overrides.")
    flags.DEFINE_multi_string(
        "ppo_override",
        [],
        "Residual-PPO config overrides (e.g. total_env_steps=10000000 for the budget).",
    )
    flags.DEFINE_integer(
        "ppo_chunk",
        None,
        "PPO env steps (per seed) to train in this invocation (default: to the end of its budget).",
    )
    flags.DEFINE_bool("analyze_only", False, "Train nothing; analyze the runs as they are.")
    flags.DEFINE_float("fraction", 0.75, "Threshold = base + fraction * (ResFiT final - base).")
    flags.DEFINE_float("threshold", None, "Absolute success threshold instead of --fraction.")
    flags.DEFINE_list(
        "sweep",
        [],
        "Also report the ratio at each of these absolute "
        "thresholds (e.g. 0.88,0.89,0.9): how the ratio depends on the choice.",
    )
    flags.DEFINE_integer("bootstrap", 2000, "Bootstrap resamples over seeds.")
    flags.DEFINE_string(
        "json_out",
        os.path.join(RESULTS, "sample_efficiency.json"),
        "Results JSON (one entry per task is replaced).",
    )
    flags.DEFINE_bool(
        "headline",
        False,
        "Add the task's row (this threshold) to headline.json and regenerate the tables.",
    )
    flags.DEFINE_string(
        "label",
        None,
        "Names a ResFiT setting beside the default (e.g. '1 critic step per env step'): "
        "its headline row is kept next to the default's instead of replacing it.",
    )
    flags.DEFINE_string(
        "plot", None, "PNG (default benchmarks/results/sample_efficiency_<task>.png)."
    )


# ------------------------------------------------------------------------------ analysis
def first_reach(steps: np.ndarray, success: np.ndarray, threshold: float) -> float | None:
    """The first env step at which success [T] >= threshold (None: never)."""
    hit = np.nonzero(np.asarray(success) >= threshold - 1e-12)[0]
    return float(steps[hit[0]]) if hit.size else None


def last_below(steps: np.ndarray, success: np.ndarray, threshold: float) -> float | None:
    """The evaluation just before the first one that reaches the threshold: the curve crossed
    somewhere in (last_below, first_reach], the resolution of the evaluation grid (None when
    the first evaluation already reaches it, or it is never reached)."""
    hit = np.nonzero(np.asarray(success) >= threshold - 1e-12)[0]
    return float(steps[hit[0] - 1]) if hit.size and hit[0] > 0 else None


def steps_to_threshold(
    steps: np.ndarray, success: np.ndarray, threshold: float, num_bootstrap: int, seed: int = 0
) -> dict:
    """Env steps at which the seed-mean success [S, T] first reaches the threshold, and a 95%
    bootstrap interval over seeds (resampled with replacement; a resample that never reaches
    it counts as beyond the last step, so the upper end can be "not reached")."""
    mean = first_reach(steps, success.mean(axis=0), threshold)
    rng = np.random.default_rng(seed)
    s = success.shape[0]
    beyond = 2.0 * float(steps[-1]) + 1.0  # stands for "not reached"
    draws = []
    for _ in range(num_bootstrap):
        x = first_reach(steps, success[rng.integers(0, s, s)].mean(axis=0), threshold)
        draws.append(beyond if x is None else x)
    lo, hi = np.percentile(draws, [2.5, 97.5], method="lower") if draws else (beyond, beyond)
    bound = lambda v: None if v >= beyond else float(v)
    return {
        "steps": mean,
        "reached": mean is not None,
        "ci95": [bound(lo), bound(hi)],
        "after": last_below(steps, success.mean(axis=0), threshold),
        "max_steps": float(steps[-1]),
        "per_seed": [first_reach(steps, row, threshold) for row in success],
    }


def compare(resfit: dict, ppo: dict, threshold: float, num_bootstrap: int) -> dict:
    """Both methods' steps to the threshold and the ratio PPO / ResFiT (curves from
    ``plotting.eval_curves``)."""
    out = {"threshold": threshold}
    for name, c in (("resfit", resfit), ("ppo", ppo)):
        out[name] = steps_to_threshold(c["total_env_steps"], c["success"], threshold, num_bootstrap)
    r, p = out["resfit"], out["ppo"]
    if not r["reached"]:
        out["ratio"], out["ratio_kind"] = None, "ResFiT did not reach the threshold"
    elif p["reached"]:
        out["ratio"], out["ratio_kind"] = p["steps"] / r["steps"], "measured"
        out["ratio_range"] = ratio_range(r, p)
    else:
        out["ratio"], out["ratio_kind"] = (
            p["max_steps"] / r["steps"],
            (
                "lower bound: PPO had not reached the threshold after its "
                f"{p['max_steps']:,.0f} env steps"
            ),
        )
    return out


def sweep(resfit: dict, ppo: dict, thresholds: list[float], num_bootstrap: int) -> list[dict]:
    """``compare`` at each absolute threshold, one row each: both methods' env steps to it,
    the ratio, its kind and the range the evaluation grids allow."""
    rows = []
    for t in sorted(thresholds):
        c = compare(resfit, ppo, t, num_bootstrap)
        rows.append(
            {
                "threshold": t,
                "resfit_steps": c["resfit"]["steps"],
                "ppo_steps": c["ppo"]["steps"],
                "ratio": c["ratio"],
                "ratio_kind": c["ratio_kind"],
                "ratio_range": c.get("ratio_range"),
            }
        )
    return rows


def ratio_range(resfit: dict, ppo: dict) -> list[float | None]:
    """[low, high] of PPO / ResFiT that the evaluation grids allow: each curve crossed in
    (after, steps], so the ratio lies in [ppo.after / resfit.steps, ppo.steps / resfit.after]
    (low 0 when PPO's first evaluation reached it; high None, unbounded, when ResFiT's
    crossing may lie anywhere before its first evaluation)."""
    low = (ppo["after"] or 0.0) / resfit["steps"]
    high = ppo["steps"] / resfit["after"] if resfit["after"] else None
    return [float(low), None if high is None else float(high)]


def threshold_of(
    base: float, final: dict | None, fraction: float, absolute: float | None
) -> tuple[float | None, str]:
    """The success threshold on the periodic curves: ``base`` (the base on the periodic
    starts) + fraction x ResFiT's gain on the held-out starts (``final``: its pooled row)."""
    if absolute is not None:
        return absolute, f"absolute {absolute:.3f}"
    if final is None:
        return None, "ResFiT has no final evaluation yet"
    gain = final["success_rate"] - final["base_success_rate"]
    if gain <= 0:
        return None, (
            f"ResFiT's held-out final success ({final['success_rate']:.1%}) does not "
            f"exceed the base's ({final['base_success_rate']:.1%}); pass --threshold "
            "for an absolute one"
        )
    return base + fraction * gain, (
        f"periodic base {base:.1%} + {fraction:g} x ResFiT's held-out gain "
        f"({final['base_success_rate']:.1%} -> {final['success_rate']:.1%})"
    )


def noise_ceiling(base: np.ndarray, episodes: np.ndarray) -> float:
    """The upper end of the 95% Wilson interval of the base's periodic success, pooled over
    seeds (``base`` [S] rates, ``episodes`` [S] per evaluation). A threshold at or below it
    can be crossed by evaluation noise alone, so steps to it do not measure learning."""
    from resfit_jax.run.stats import wilson_interval

    n = int(np.sum(episodes))
    if n < 1:
        return float("nan")
    return float(wilson_interval(int(round(float(np.dot(base, episodes)))), n)[1])


def plot(resfit: dict, ppo: dict, threshold: float | None, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from resfit_jax.run.plotting import save_success_plot

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (label, c) in enumerate((("ResFiT", resfit), ("residual PPO", ppo))):
        if c is None:
            continue
        keep = c["total_env_steps"] > 0  # step 0 (the base) is the dashed line
        x, y = c["total_env_steps"][keep], c["success"][:, keep]
        ax.plot(x, y.mean(axis=0), color=f"C{i}", marker=".", label=f"{label} ({y.shape[0]} seeds)")
        ax.fill_between(x, y.min(axis=0), y.max(axis=0), color=f"C{i}", alpha=0.2)
    base = resfit if resfit is not None else ppo
    ax.axhline(float(np.mean(base["base"])), color="gray", ls="--", lw=1, label="BC base")
    if threshold is not None:
        ax.axhline(threshold, color="k", ls=":", lw=1, label=f"threshold {threshold:.1%}")
    save_success_plot(fig, ax, title, path)


# ----------------------------------------------------------------------------- training
def resfit_overrides(task: str, recipe: str | None, overrides: list[str]) -> list[str]:
    """The ResFiT run's config overrides: ``recipe``'s (default: the task's, as
    experiments.train) followed by ``overrides``."""
    from resfit_jax.sim.presets import default_recipe, recipe_overrides

    return recipe_overrides(recipe or default_recipe(task), overrides)


def _train(task_name: str, out: str) -> tuple[str, str]:
    from resfit_jax.sim.runs import finished, open_inputs, train_or_resume

    resfit_run = FLAGS.resfit_run or os.path.join(out, "resfit")
    ppo_run = FLAGS.ppo_run or os.path.join(out, "ppo")
    if FLAGS.analyze_only:
        return resfit_run, ppo_run
    try:
        inputs = open_inputs(task_name, FLAGS.base, FLAGS.demos)
    except (FileNotFoundError, ValueError) as e:
        usage_error(str(e))
    seeds = list(range(FLAGS.seeds))
    if not finished(resfit_run):
        overrides = resfit_overrides(task_name, FLAGS.recipe, FLAGS.resfit_override)
        print(f"ResFiT: {resfit_run} ({' '.join(overrides) or 'the preset'})")
        train_or_resume("resfit", task_name, inputs, resfit_run, seeds, overrides)
    if not finished(ppo_run):
        print(f"residual PPO: {ppo_run}")
        stop = None
        if FLAGS.ppo_chunk is not None:
            done = 0
            if os.path.exists(os.path.join(ppo_run, "metrics.jsonl")):
                from resfit_jax.run.plotting import eval_curves

                done = int(eval_curves(ppo_run)["env_steps"][-1])
            stop = done + FLAGS.ppo_chunk
        train_or_resume(
            "ppo", task_name, inputs, ppo_run, seeds, FLAGS.ppo_override, stop_at_env_steps=stop
        )
    return resfit_run, ppo_run


def main(argv):
    del argv
    from resfit_jax.run.runtime import setup_script

    setup_script()
    from resfit_jax.run.machine import machine_info, write_results
    from resfit_jax.run.plotting import eval_curves
    from resfit_jax.sim.runs import run_identity

    try:  # checked before any training
        levels = [float(t) for t in FLAGS.sweep]
    except ValueError:
        usage_error(f"--sweep={','.join(FLAGS.sweep)}: expected success rates such as 0.88,0.9.")
    if not all(0.0 < t <= 1.0 for t in levels):
        usage_error(f"--sweep: {levels} are not all success rates in (0, 1].")
    task = FLAGS.task
    out = FLAGS.out or os.path.join("runs", "sample_efficiency", task)
    resfit_run, ppo_run = _train(task, out)
    ids = [run_identity(resfit_run), run_identity(ppo_run)]
    if None not in ids and ids[0] != ids[1]:
        usage_error(
            f"{resfit_run} and {ppo_run} were trained on different bases or "
            f"demos ({ids[0]} vs {ids[1]}); compare runs on the same inputs."
        )
    cpus = {"resfit": run_cpu(resfit_run), "ppo": run_cpu(ppo_run)}
    curves = {}
    for name, run in (("resfit", resfit_run), ("ppo", ppo_run)):
        curves[name] = (
            eval_curves(run) if os.path.exists(os.path.join(run, "metrics.jsonl")) else None
        )
    if curves["resfit"] is None or curves["ppo"] is None:
        usage_error("Both runs need evaluations; train them first (drop --analyze_only).")
    if curves["resfit"]["seeds"] != curves["ppo"]["seeds"]:
        usage_error(
            f"The runs have different seeds ({curves['resfit']['seeds']} vs "
            f"{curves['ppo']['seeds']}), so different evaluation starts."
        )
    summaries = {
        n: json.load(open(os.path.join(r, "summary.json")))
        if os.path.exists(os.path.join(r, "summary.json"))
        else {}
        for n, r in (("resfit", resfit_run), ("ppo", ppo_run))
    }
    base = float(np.mean(curves["resfit"]["base"]))
    final = (summaries["resfit"].get("final") or {}).get("pooled")
    threshold, how = threshold_of(base, final, FLAGS.fraction, FLAGS.threshold)
    result = {
        "task": task,
        "seeds": curves["resfit"]["seeds"],
        "threshold_rule": how,
        "base_success_rate_periodic": base,
        "resfit_run": os.path.basename(os.path.normpath(resfit_run)),
        "resfit_overrides": run_overrides(resfit_run),
        "ppo_run": os.path.basename(os.path.normpath(ppo_run)),
        "resfit_final": final,
        "ppo_final": (summaries["ppo"].get("final") or {}).get("pooled"),
        "ppo_complete": summaries["ppo"].get("complete", False),
        "ppo_vs_resfit": held_out_pairing(summaries["resfit"], summaries["ppo"]),
        "cpus": cpus,
        "label": FLAGS.label,
        "curves": {
            n: {
                "total_env_steps": c["total_env_steps"].tolist(),
                "success_mean": c["success"].mean(axis=0).tolist(),
                "success_min": c["success"].min(axis=0).tolist(),
                "success_max": c["success"].max(axis=0).tolist(),
            }
            for n, c in curves.items()
        },
        "machine": machine_info(),
    }
    if threshold is not None:
        result |= compare(curves["resfit"], curves["ppo"], threshold, FLAGS.bootstrap)
        ceiling = noise_ceiling(curves["resfit"]["base"], curves["resfit"]["episodes"])
        result["base_noise_ceiling"] = ceiling
        result["threshold_above_noise"] = bool(threshold > ceiling)
    if levels:
        result["sweep"] = sweep(curves["resfit"], curves["ppo"], levels, FLAGS.bootstrap)
    png = FLAGS.plot or os.path.join(RESULTS, f"sample_efficiency_{task}.png")
    plot(
        curves["resfit"],
        curves["ppo"],
        threshold,
        png,
        f"{task}: ResFiT vs residual PPO, {len(result['seeds'])} seeds",
    )
    result["plot"] = os.path.relpath(png, os.path.dirname(RESULTS))
    print(report(result))
    data = json.load(open(FLAGS.json_out)) if os.path.exists(FLAGS.json_out) else {}
    data[task] = result
    write_results(FLAGS.json_out, data)
    print(f"plot: {png}")
    if FLAGS.headline and threshold is not None:
        from . import headline

        headline.save(headline.add_se(headline.load(), headline.se_row(result)))
        print(f"wrote the {task} row to {headline.HEADLINE} and the tables")


def run_overrides(run: str) -> list[str] | None:
    """The overrides a run was built from (its config.json; a recipe's come first), None
    for a run that did not record them."""
    return _run_config(run).get("overrides")


def run_cpu(run: str) -> str | None:
    """The CPU a run was started on (its config.json), None for a run that did not record it."""
    return (_run_config(run).get("machine") or {}).get("cpu")


def _run_config(run: str) -> dict:
    """A run's config.json ({} where there is none)."""
    path = os.path.join(run, "config.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def held_out_pairing(resfit: dict, ppo: dict) -> dict | None:
    """PPO's final state against ResFiT's kept state on the same held-out episodes
    (``report.paired_between``: fixed = ResFiT fails and PPO succeeds); None until both runs
    are finished with per-episode outcomes (``compare --rescore`` adds them to older runs)."""
    from resfit_jax.sim.report import paired_between

    if not (resfit.get("complete") and ppo.get("complete")):
        return None
    try:
        return paired_between(resfit, ppo)
    except ValueError as e:
        print(f"held-out pairing left out: {e}")
        return None


def _fmt(x) -> str:
    return "not reached" if x is None else f"{x:,.0f}"


def sweep_table(rows: list[dict]) -> str:
    """The ``--sweep`` rows as a table (ratio "-" where ResFiT never reached the level)."""
    lines = [
        "ratio against the threshold (--sweep)",
        f"{'threshold':>10}{'ResFiT':>14}{'PPO':>14}{'PPO / ResFiT':>16}{'grid allows':>20}",
    ]
    for x in rows:
        ratio = (
            "-"
            if x["ratio"] is None
            else (
                f"{x['ratio']:,.1f}x" if x["ratio_kind"] == "measured" else f">= {x['ratio']:,.1f}x"
            )
        )
        grid = ""
        if x.get("ratio_range"):
            lo, hi = x["ratio_range"]
            grid = f"{lo:,.1f}x-" + ("unbounded" if hi is None else f"{hi:,.1f}x")
        lines.append(
            f"{x['threshold']:>10.1%}{_fmt(x['resfit_steps']):>14}"
            f"{_fmt(x['ppo_steps']):>14}{ratio:>16}{grid:>20}"
        )
    return "\n".join(lines)


def report(r: dict) -> str:
    lines = [
        f"{r['task']}: ResFiT vs residual PPO, seeds {r['seeds']}",
        f"threshold: {r['threshold_rule']}",
    ]
    if r.get("sweep"):
        lines.append(sweep_table(r["sweep"]))
    if "threshold" not in r:
        return "\n".join(lines + ["(no threshold: no ratio)"])
    lines.append(
        f"{'method':<14}{'env steps to threshold':>24}{'95% CI (bootstrap)':>28}{'trained':>14}"
    )
    for name, label in (("resfit", "ResFiT"), ("ppo", "residual PPO")):
        m = r[name]
        lo, hi = m["ci95"]
        ci = f"[{_fmt(lo)}, {_fmt(hi)}]"
        lines.append(f"{label:<14}{_fmt(m['steps']):>24}{ci:>28}{m['max_steps']:>14,.0f}")
    ratio = "-" if r["ratio"] is None else f"{r['ratio']:,.1f}x"
    lines.append(f"ratio PPO / ResFiT: {ratio} ({r['ratio_kind']})")
    if r.get("ratio_range"):
        lo, hi = r["ratio_range"]
        hi = "unbounded" if hi is None else f"{hi:,.1f}x"
        crossed = ", ".join(
            f"{label} in ({_fmt(r[n]['after'] or 0)}, {_fmt(r[n]['steps'])}]"
            for n, label in (("resfit", "ResFiT"), ("ppo", "PPO"))
        )
        lines.append(
            f"  the evaluation grids place the crossings at {crossed}: the ratio lies "
            f"in [{lo:,.1f}x, {hi}]"
        )
    v = r.get("ppo_vs_resfit")
    if v:
        lines.append(
            f"held out, episode by episode: ResFiT {v['reference_success_rate']:.1%}, "
            f"PPO {v['success_rate']:.1%} (PPO fixes {v['fixed']} and breaks "
            f"{v['broken']} of ResFiT's episodes, p = {v['p_value']:.2g}; "
            f"{v['episodes']} starts)"
        )
    cpus = r.get("cpus") or {}
    if None not in (cpus.get("resfit"), cpus.get("ppo")) and cpus["resfit"] != cpus["ppo"]:
        lines.append(
            f"note: the runs were trained on different CPUs ({cpus['resfit']} / {cpus['ppo']}). "
            "MJX rollouts from the same start can end differently on another CPU type, so "
            "the curves share their starts but not every outcome (docs/benchmarks.md)."
        )
    if not r.get("threshold_above_noise", True):
        lines.append(
            f"warning: the threshold {r['threshold']:.1%} is inside the base's 95% "
            f"interval on the periodic starts (up to {r['base_noise_ceiling']:.1%}): "
            "a curve can cross it by evaluation noise alone, so these steps do not "
            "measure learning. Pass --threshold above that for a meaningful ratio."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    define_flags()
    app.run(main)
