"""The one source of truth for headline numbers: benchmarks/results/headline.json, one row per
(task, method, scale, setting); every results table in README.md and docs/results.md is
generated from it.

    python -m studies.headline add --run=runs/residual/PickPlace --method=ResFiT
    python -m studies.headline tables          # rewrite the tables from the JSON
    python -m studies.headline check           # exit 1 if a generated table is stale or a
                                               # compare / sample-efficiency result lacks its row

Tables (each where its block is in a document): the run log (every row,
``<!-- headline:start -->``; docs/results.md), the comparison (rows of setting "compare",
from ``studies.compare --headline``; README.md and docs/results.md) and the sample
efficiency (the "sample_efficiency" rows, from ``studies.sample_efficiency --headline``).

``add`` takes a finished run (summary.json with its held-out final evaluation) and writes
its row: seeds, env steps, base and final success (pooled over seeds) with mean steps of
successes, churn, gain, the McNemar p-value, wall clock and the machine.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from resfit_jax.run.configs import usage_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADLINE = os.path.join(ROOT, "benchmarks", "results", "headline.json")
README = os.path.join(ROOT, "README.md")
RESULTS = os.path.join(ROOT, "docs", "results.md")
DOCUMENTS = (README, RESULTS)
START, END = "<!-- headline:start -->", "<!-- headline:end -->"
CMP_START, CMP_END = "<!-- compare:start -->", "<!-- compare:end -->"
SE_START, SE_END = "<!-- sample_efficiency:start -->", "<!-- sample_efficiency:end -->"
METHOD_ORDER = ("ResFiT", "RLPD", "IBRL", "ResidualPPO", "FilteredBC")

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The script's flags (defined only when it runs, so importing it defines none)."""
    flags.DEFINE_string("run", None, "add: a finished residual run directory.")
    flags.DEFINE_string(
        "method", None, "add: method name (default: the run's, e.g. ResFiT or ResidualPPO)."
    )
    flags.DEFINE_string("setting", "preset", "add: what differs from the preset.")
    flags.DEFINE_string("note", "", "add: a short note for the table.")
    flags.DEFINE_string("headline", HEADLINE, "headline.json path.")


def load(path: str = HEADLINE) -> dict:
    if not os.path.exists(path):
        return {"rows": []}
    with open(path) as f:
        return json.load(f)


def row_from_run(run: str, method: str | None, setting: str, note: str = "") -> dict:
    from resfit_jax.run.machine import machine_info

    with open(os.path.join(run, "summary.json")) as f:
        s = json.load(f)
    with open(os.path.join(run, "config.json")) as f:
        info = json.load(f)
    if not s.get("complete") or not s.get("final"):
        raise ValueError(f"{run}: the run has no held-out final evaluation yet (finish it first).")
    p = s["final"]["pooled"]
    method = method or s.get("method", "ResFiT")
    return {
        "task": s["task"],
        "method": method,
        "scale": info.get("scale", "cpu"),
        "setting": setting,
        "note": note,
        "seeds": len(s["seeds"]),
        "env_steps": s["env_steps"],
        "warmup_env_steps": s["warmup_env_steps"],
        "evaluation": f"held-out, {p['episodes'] // len(s['seeds'])} per seed",
        "final_episodes": p["episodes"],
        "base_success_rate": p["base_success_rate"],
        "base_mean_steps": p["base_mean_success_length"],
        "success_rate": p["success_rate"],
        "mean_steps": p["mean_success_length"],
        "mean_steps_ci95": p.get("mean_success_length_ci95"),
        "base_mean_steps_ci95": p.get("base_mean_success_length_ci95"),
        "per_seed_success": [r["success_rate"] for r in s["final"]["per_seed"]],
        "fixed": p["fixed"],
        "broken": p["broken"],
        "churn": p["churn"],
        "gain": p["gain"],
        "p_value": p["p_value"],
        "diff_ci": [p["diff_ci_low"], p["diff_ci_high"]],
        "wall_min": round(s["wall_s"] / 60, 1),
        "overrides": info.get("overrides", []),
        "machine": machine_info(),
    }


def add(data: dict, row: dict) -> dict:
    key = lambda r: (r["task"], r["method"], r["scale"], r["setting"])
    rows = [r for r in data["rows"] if key(r) != key(row)] + [row]
    return data | {"rows": sorted(rows, key=lambda r: (r["task"], r["method"], r["setting"]))}


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _steps(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def table(data: dict) -> str:
    """The run log (paper's shape: task, BC success / steps, ResFiT success / steps,
    env steps, seeds), plus churn, gain and p."""
    lines = [
        "| task | method (setting) | BC success / steps | final success / steps | "
        "fixed / broken (churn) | p | env steps (+ warm-up) | seeds | evaluation |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        if r["setting"] == "compare":  # studies.compare's rows: compare_table
            continue
        fb = "-" if r.get("fixed") is None else f"{r['fixed']} / {r['broken']} ({_pct(r['churn'])})"
        p = "-" if r.get("p_value") is None else f"{r['p_value']:.2g}"
        note = f"; {r['note']}" if r.get("note") else ""
        lines.append(
            f"| {r['task']} | {r['method']} ({r['setting']}{note}) | "
            f"{_pct(r['base_success_rate'])} / {_steps(r['base_mean_steps'])} | "
            f"**{_pct(r['success_rate'])}** / {_steps(r['mean_steps'])} | {fb} | {p} | "
            f"{r['env_steps']:,} (+{r['warmup_env_steps']:,}) | {r['seeds']} | "
            f"{r['evaluation']} |"
        )
    return "\n".join(lines)


def compare_table(data: dict) -> str:
    """The paper's comparison shape from the rows of ``studies.compare`` (setting
    "compare"): one line per task, one column per method, held-out success / mean steps of
    successes, with the BC base and the env steps each method trained."""
    rows = [r for r in data["rows"] if r["setting"] == "compare"]
    methods = [m for m in METHOD_ORDER if any(r["method"] == m for r in rows)]
    methods += sorted({r["method"] for r in rows} - set(methods))
    lines = [
        "| task | BC | " + " | ".join(methods) + " | seeds |",
        "|---|---|" + "---|" * len(methods) + "---|",
    ]
    for task in sorted({r["task"] for r in rows}):
        mine = {r["method"]: r for r in rows if r["task"] == task}
        first = mine.get("ResFiT") or next(iter(mine.values()))  # the BC column: ResFiT's pairing
        cells = []
        for m in methods:
            r = mine.get(m)
            cells.append(
                "-"
                if r is None
                else f"{_pct(r['success_rate'])} / {_steps(r['mean_steps'])} ({_env_steps(r)})"
            )
        lines.append(
            f"| {task} | {_pct(first['base_success_rate'])} / "
            f"{_steps(first['base_mean_steps'])} | " + " | ".join(cells) + f" | {first['seeds']} |"
        )
    return "\n".join(lines)


def _env_steps(r: dict) -> str:
    n = r["env_steps"] + r["warmup_env_steps"]
    return f"{n / 1e6:g}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _replace_block(text: str, start: str, end: str, body: str) -> str:
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def se_row(r: dict) -> dict:
    """The sample-efficiency row of one ``studies.sample_efficiency`` result (a
    task with a threshold): steps to the threshold, the ratio and the final successes."""
    ppo_curve = r["curves"]["ppo"]
    keep = (
        "task",
        "threshold",
        "threshold_rule",
        "threshold_above_noise",
        "ratio",
        "ratio_kind",
        "ratio_range",
        "ppo_complete",
    )
    out = {k: r.get(k) for k in keep}
    if r.get("label"):
        out["label"] = r["label"]
    for m in ("resfit", "ppo"):
        out[m] = {k: r[m][k] for k in ("steps", "ci95", "max_steps")}
        final = r.get(f"{m}_final")
        out[m]["final_success"] = None if final is None else final["success_rate"]
    out["base_final_success"] = (r.get("resfit_final") or {}).get("base_success_rate")
    out["ppo"]["last_periodic"] = ppo_curve["success_mean"][-1]
    return out


def se_key(row: dict) -> tuple:
    """A sample-efficiency row's identity: its task, its label (a ResFiT setting beside the
    default one, ``--label``) and threshold kind, the default rule (whose value moves with
    ResFiT's held-out result) or an absolute threshold's value."""
    absolute = str(row.get("threshold_rule") or "").startswith("absolute")
    task = (row["task"], row.get("label") or "")
    return (*task, 1, round(row["threshold"], 6)) if absolute else (*task, 0, 0.0)


def add_se(data: dict, row: dict) -> dict:
    """``data`` with ``row`` in its "sample_efficiency" list (replacing the row of the same
    task and threshold kind, ``se_key``)."""
    rows = [x for x in data.get("sample_efficiency", []) if se_key(x) != se_key(row)] + [row]
    return data | {"sample_efficiency": sorted(rows, key=se_key)}


def _steps_cell(m: dict) -> str:
    fmt = lambda v: "not reached" if v is None else f"{v:,.0f}"
    return f"{fmt(m['steps'])} [{fmt(m['ci95'][0])}, {fmt(m['ci95'][1])}] of {m['max_steps']:,.0f}"


def se_table(data: dict) -> str:
    """The README's sample-efficiency table (ResFiT against residual PPO), one row per task
    and threshold."""
    lines = [
        "| task (BC held out) | threshold | ResFiT: env steps to it [95% CI] of trained | "
        "residual PPO: env steps to it [95% CI] of trained | PPO / ResFiT | "
        "final held-out success: ResFiT / PPO |",
        "|---|---|---|---|---|---|",
    ]
    for r in data.get("sample_efficiency", []):
        absolute = r["threshold_rule"].startswith("absolute")
        thr = f"{_pct(r['threshold'])} ({'absolute' if absolute else 'base + 75% of ResFiT gain'}"
        thr += (
            "; inside the base's noise" if r.get("threshold_above_noise") is False else ""
        ) + ")"
        noisy = r.get("threshold_above_noise") is False
        if r["ratio"] is None:
            ratio = "-"
        elif r["ratio_kind"] == "measured":
            ratio = f"{r['ratio']:.3g}x" if noisy else f"**{r['ratio']:.3g}x**"
        else:
            ratio = f">= {r['ratio']:.3g}x"
        if r.get("ratio_range"):
            lo, hi = r["ratio_range"]
            if hi is None:  # ResFiT may have crossed anywhere before its first evaluation
                ratio += " (grid: unbounded)" if lo == 0 else f" (grid: >= {lo:.3g}x)"
            else:
                ratio += f" (grid: {lo:.3g}-{hi:.3g}x)"
        ppo = r["ppo"]
        ppo_final = (
            _pct(ppo["final_success"])
            if r.get("ppo_complete")
            else f"(periodic {_pct(ppo['last_periodic'])} at {ppo['max_steps'] / 1e6:.2f}M, "
            "budget not finished)"
        )
        lines.append(
            f"| {r['task']}{', ' + r['label'] if r.get('label') else ''} "
            f"({_pct(r['base_final_success'])}) | {thr} | "
            f"{_steps_cell(r['resfit'])} | {_steps_cell(ppo)} | {ratio} | "
            f"{_pct(r['resfit']['final_success'])} / {ppo_final} |"
        )
    return "\n".join(lines)


def render_tables(text: str, data: dict) -> str:
    """``text`` (a document) with each generated table whose block it has (the run log, the
    comparison, the sample efficiency) rewritten from ``data``."""
    for start, end, make in (
        (START, END, table),
        (CMP_START, CMP_END, compare_table),
        (SE_START, SE_END, se_table),
    ):
        if start in text and end in text:
            text = _replace_block(text, start, end, make(data))
    return text


def stale_documents(data: dict, documents: tuple[str, ...] = DOCUMENTS) -> list[str]:
    """The documents whose generated tables differ from ``data``'s."""
    out = []
    for path in documents:
        with open(path) as f:
            text = f.read()
        if render_tables(text, data) != text:
            out.append(os.path.relpath(path, ROOT))
    return out


def missing_rows(data: dict, results_dir: str = os.path.dirname(HEADLINE)) -> list[str]:
    """Results the README should show but headline.json lacks: each finished method of
    compare.json (a "compare" row per task and method) and each task of
    sample_efficiency.json (a "sample_efficiency" row). Empty when nothing is missing."""
    out = []
    have = {(r["task"], r["method"]) for r in data["rows"] if r["setting"] == "compare"}
    path = os.path.join(results_dir, "compare.json")
    if os.path.exists(path):
        for task, entry in json.load(open(path)).items():
            for r in (entry.get("rows") or {}).values():
                if r is not None and (task, r["method"]) not in have:
                    out.append(f"compare row {task} / {r['method']} (compare.json)")
    se_tasks = {r["task"] for r in data.get("sample_efficiency", [])}
    path = os.path.join(results_dir, "sample_efficiency.json")
    if os.path.exists(path):
        for task, entry in json.load(open(path)).items():
            if "threshold" in entry and task not in se_tasks:
                out.append(f"sample-efficiency row {task} (sample_efficiency.json)")
    return out


def save(data: dict, path: str = HEADLINE, documents: tuple[str, ...] = DOCUMENTS) -> None:
    """Write ``data`` to headline.json and regenerate the documents' tables from it."""
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
    write_tables(data, documents)


def write_tables(data: dict, documents: tuple[str, ...] = DOCUMENTS) -> None:
    for doc in documents:
        with open(doc) as f:
            text = f.read()
        with open(doc, "w") as f:
            f.write(render_tables(text, data))


def main(argv):
    from resfit_jax.run.runtime import quiet_logging

    quiet_logging()
    cmd = argv[1] if len(argv) > 1 else "tables"
    if cmd not in ("add", "tables", "check"):
        usage_error(f"Unknown command {cmd!r}: add, tables or check.")
    data = load(FLAGS.headline)
    if cmd == "add":
        if not FLAGS.run:
            usage_error("add needs --run=<finished run directory>.")
        data = add(data, row_from_run(FLAGS.run, FLAGS.method, FLAGS.setting, FLAGS.note))
        with open(FLAGS.headline, "w") as f:
            json.dump(data, f, indent=2)
        print(f"wrote {FLAGS.headline}")
    if cmd == "check":
        stale = stale_documents(data)
        if stale:
            print(
                f"Generated tables are stale in {', '.join(stale)}: run python -m "
                "studies.headline tables",
                file=sys.stderr,
            )
            return 1
        missing = missing_rows(data, os.path.dirname(os.path.abspath(FLAGS.headline)))
        if missing:
            print(
                "headline.json lacks results that the tables should show: "
                f"{'; '.join(missing)}. Re-run that study with --headline.",
                file=sys.stderr,
            )
            return 1
        print("The tables in README.md and docs/results.md match headline.json")
        return 0
    write_tables(data)
    print(f"Tables in README.md and docs/results.md rewritten from {FLAGS.headline}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
