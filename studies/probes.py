r"""Record finished runs as one probe table: the held-out result of the kept and the last
state, the periodic evaluations and the critic's mechanism numbers, in one JSON per study.

    python -m studies.probes --run=runs/probes/k20 --run=runs/probes/k20_mc_adv \
        --out=benchmarks/results/semi_mdp_probes_pickplace.json

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


def record(run_dir: str) -> dict:
    """One finished run's probe record (raises FileNotFoundError / ValueError if unfinished)."""
    from resfit_jax.run.logger import read_metrics
    from resfit_jax.sim.report import mechanism_numbers

    summary_path = os.path.join(run_dir, "summary.json")
    if not os.path.exists(summary_path):
        raise FileNotFoundError(f"{run_dir} has no summary.json: is the run finished?")
    summary = json.load(open(summary_path))
    if not summary.get("complete"):
        raise ValueError(f"{run_dir} is not complete; finish it with --resume first.")
    config = json.load(open(os.path.join(run_dir, "config.json")))
    rows = read_metrics(run_dir)
    final = summary["final"]
    return {
        "name": os.path.basename(os.path.normpath(run_dir)),
        "task": summary["task"],
        "base": os.path.relpath(config.get("base", "")) if config.get("base") else None,
        "overrides": config.get("overrides", []),
        "seeds": summary["seeds"],
        "env_steps": summary["env_steps"],
        "kept": {k: final["pooled"][k] for k in PAIRED},
        "kept_env_steps": final.get("selected_env_steps"),
        "last": {k: final["last"]["pooled"][k] for k in PAIRED} if "last" in final else None,
        "periodic": [
            {k: r[k] for k in ("env_steps", "seed", "success_rate", "fixed", "broken") if k in r}
            for r in rows
            if r.get("kind") == "eval"
        ],
        "mechanism": mechanism_numbers(rows),
        "wall_s": summary.get("wall_s"),
    }


def table(records: list[dict]) -> str:
    from resfit_jax.sim.report import mechanism_table

    cell = lambda p: (
        "-"
        if p is None
        else f"{p['success_rate']:.1%} ({p['fixed']}/{p['broken']}, p {p['p_value']:.2g})"
    )
    lines = [f"{'probe':<28}{'base':>8}{'kept state':>28}{'last state':>28}"]
    for r in records:
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
        new = [record(d) for d in FLAGS.run]
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
