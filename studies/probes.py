r"""Record finished runs as one probe table: the held-out result of the kept and the last
state, the periodic evaluations and the critic's mechanism numbers, in one JSON per study.

    python -m studies.probes --run=runs/probes/k20 --run=runs/probes/k20_mc_adv \
        --out=benchmarks/results/semi_mdp_probes_pickplace.json [--unfinished]

A probe is a cheap run that can falsify an idea (one seed, the paired held-out starts of
the run's base); a run already in the JSON is replaced by its new record, so the file
collects a study across sessions. The table printed compares every probe with its base on
the held-out starts (kept state and last state: success, fixed / broken, McNemar p) and
gives the action gap against the heads' disagreement on it, the TD error and the head
spread at the start, middle and end of the main loop (``sim.report.mechanism_numbers``).
"""

from __future__ import annotations

import json
import os

from absl import app, flags

FLAGS = flags.FLAGS
PAIRED = ("episodes", "base_success_rate", "success_rate", "fixed", "broken", "p_value")


def define_flags() -> None:
    flags.DEFINE_multi_string("run", [], "A finished run directory (summary.json).")
    flags.DEFINE_string("out", None, "The probes' JSON (created or updated).")
    flags.DEFINE_bool(
        "unfinished",
        False,
        "Also record runs stopped before their held-out evaluation (periodic evaluations "
        "and mechanism only, marked complete: false).",
    )


def record(run_dir: str, unfinished: bool = False) -> dict:
    """One run's probe record; an unfinished run raises FileNotFoundError / ValueError
    unless ``unfinished`` (then only its periodic evaluations and mechanism numbers)."""
    from resfit_jax.run.logger import read_metrics
    from resfit_jax.sim.report import mechanism_numbers

    summary_path = os.path.join(run_dir, "summary.json")
    summary = json.load(open(summary_path)) if os.path.exists(summary_path) else None
    if summary is None and not unfinished:
        raise FileNotFoundError(f"{run_dir} has no summary.json: is the run finished?")
    if summary is not None and not summary.get("complete") and not unfinished:
        raise ValueError(f"{run_dir} is not complete; finish it with --resume first.")
    if not os.path.exists(os.path.join(run_dir, "config.json")):
        raise FileNotFoundError(f"{run_dir} holds no run (no config.json).")
    config = json.load(open(os.path.join(run_dir, "config.json")))
    rows = read_metrics(run_dir)
    if summary is None or not summary.get("complete"):
        train = [r["env_steps"] for r in rows if r.get("kind") == "train"]
        return {
            "name": os.path.basename(os.path.normpath(run_dir)),
            "complete": False,
            "task": config.get("task"),
            "base": os.path.relpath(config["base"]) if config.get("base") else None,
            "overrides": config.get("overrides", []),
            "seeds": config.get("seeds"),
            "env_steps": max(train, default=0),
            "kept": None,
            "last": None,
            "periodic": _periodic(rows),
            "mechanism": mechanism_numbers(rows),
        }
    final = summary["final"]
    return {
        "complete": True,
        "name": os.path.basename(os.path.normpath(run_dir)),
        "task": summary["task"],
        "base": os.path.relpath(config.get("base", "")) if config.get("base") else None,
        "overrides": config.get("overrides", []),
        "seeds": summary["seeds"],
        "env_steps": summary["env_steps"],
        "kept": {k: final["pooled"][k] for k in PAIRED},
        "kept_env_steps": final.get("selected_env_steps"),
        "last": {k: final["last"]["pooled"][k] for k in PAIRED} if "last" in final else None,
        "periodic": _periodic(rows),
        "mechanism": mechanism_numbers(rows),
        "wall_s": summary.get("wall_s"),
    }


def _periodic(rows: list[dict]) -> list[dict]:
    keys = ("env_steps", "seed", "success_rate", "fixed", "broken")
    return [{k: r[k] for k in keys if k in r} for r in rows if r.get("kind") == "eval"]


def table(records: list[dict]) -> str:
    from resfit_jax.sim.report import mechanism_table

    cell = lambda p: (
        "-"
        if p is None
        else f"{p['success_rate']:.1%} ({p['fixed']}/{p['broken']}, p {p['p_value']:.2g})"
    )
    lines = [f"{'probe':<28}{'base':>8}{'kept state':>28}{'last state':>28}"]
    for r in records:
        if r["kept"] is None:  # stopped before its held-out evaluation
            last = r["periodic"][-1] if r["periodic"] else None
            note = "-" if last is None else f"periodic {last['success_rate']:.0%} at "
            note += "" if last is None else f"{last['env_steps']:,} (stopped)"
            lines.append(f"{r['name'][:27]:<28}{'-':>8}{note:>56}")
            continue
        lines.append(
            f"{r['name'][:27]:<28}{r['kept']['base_success_rate']:>8.1%}"
            f"{cell(r['kept']):>28}{cell(r['last']):>28}"
        )
    mech = {r["name"]: r["mechanism"] for r in records if r["mechanism"]}
    if mech:
        lines += ["", mechanism_table(mech)]
    return "\n".join(lines)


def main(argv):
    del argv
    from resfit_jax.run.runtime import setup_script

    setup_script()
    from resfit_jax.run.configs import usage_error
    from resfit_jax.run.machine import machine_info

    if not FLAGS.run or not FLAGS.out:
        usage_error("give --run=DIR (one or more) and --out=FILE.json")
    try:
        new = [record(d, FLAGS.unfinished) for d in FLAGS.run]
    except (FileNotFoundError, ValueError) as e:
        usage_error(str(e))
    data = {"probes": [], "machine": machine_info()}
    if os.path.exists(FLAGS.out):
        data = json.load(open(FLAGS.out))
    names = {r["name"] for r in new}
    data["probes"] = [r for r in data["probes"] if r["name"] not in names] + new
    data["machine"] = machine_info()
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, "w") as f:
        json.dump(data, f, indent=2)
    print(table(data["probes"]))
    print(f"\nwritten: {FLAGS.out}")


def run():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
