"""studies.compare and the paper-shaped README table: per-method overrides, the report,
and the task x method table generated from headline rows."""

import pytest

from studies.compare import method_overrides, report
from studies.headline import CMP_END, CMP_START, compare_table, render_tables


def _row(task, method, success, steps=50.0, base=0.5):
    return {
        "task": task,
        "method": method,
        "setting": "compare",
        "seeds": 3,
        "success_rate": success,
        "mean_steps": steps,
        "base_success_rate": base,
        "base_mean_steps": 60.0,
        "env_steps": 20_480,
        "warmup_env_steps": 2_048,
        "fixed": 10,
        "broken": 2,
        "churn": 0.01,
        "gain": 0.05,
        "p_value": 0.04,
        "wall_min": 3.0,
        "ci95": [0.8, 0.95],
        "evaluation": "held-out, 100 per seed",
    }


def test_method_overrides_go_to_their_method():
    out = method_overrides(
        ["ibrl:learner.rule=greedy", "ppo:total_env_steps=1000"], ["resfit", "ibrl", "ppo"]
    )
    assert out == {"resfit": [], "ibrl": ["learner.rule=greedy"], "ppo": ["total_env_steps=1000"]}
    with pytest.raises(ValueError, match="METHOD:field=value"):
        method_overrides(["learner.rule=greedy"], ["ibrl"])
    with pytest.raises(ValueError, match="not one of --methods"):
        method_overrides(["rlpd:tau=0.1"], ["ibrl"])


def test_report_and_the_paper_shaped_table():
    rows = {"resfit": _row("PointReach", "ResFiT", 0.95), "rlpd": None}
    text = report("PointReach", rows)
    assert "ResFiT" in text and "95.0%" in text and "(not finished)" in text
    rows["resfit"]["mean_steps_ci95"] = [48.25, 51.75]
    assert "[48.2, 51.8]" in report("PointReach", rows)
    data = {
        "rows": [
            _row("PointReach", "ResFiT", 0.95),
            _row("PointReach", "IBRL", 0.9),
            _row("PickPlace", "ResFiT", 0.88, base=0.86),
            dict(_row("PickPlace", "ResFiT", 0.5), setting="preset"),
        ]
    }
    table = compare_table(data).splitlines()
    assert table[0] == "| task | BC | ResFiT | IBRL | seeds |"
    assert table[2].startswith("| PickPlace | 86.0% / 60.0 | 88.0% / 50.0 (23k) | - |")
    assert table[3].startswith("| PointReach | 50.0% / 60.0 | 95.0% / 50.0 (23k) | 90.0%")
    # the BC column is ResFiT's pairing, whichever row came first
    data_rev = {
        "rows": [
            _row("PickPlace", "IBRL", 0.0, base=0.867),
            _row("PickPlace", "ResFiT", 0.88, base=0.86),
        ]
    }
    assert compare_table(data_rev).splitlines()[2].startswith("| PickPlace | 86.0% / 60.0 |")
    readme = (
        f"x\n<!-- headline:start -->\nold\n<!-- headline:end -->\n{CMP_START}\nold\n{CMP_END}\ny\n"
    )
    new = render_tables(readme, data)
    assert "| PickPlace | 86.0% / 60.0 | 88.0%" in new and "old" not in new and new.endswith("y\n")


def test_the_held_out_table_says_what_step_0_is_for_each_method():
    from resfit_jax.sim.report import final_table

    r = {
        "episodes": 100,
        "base_success_rate": 0.86,
        "success_rate": 0.0,
        "fixed": 0,
        "broken": 86,
        "churn": 0.86,
        "p_value": 1e-26,
        "diff_ci_low": -0.9,
        "diff_ci_high": -0.8,
        "base_mean_success_length": 80.0,
        "mean_success_length": None,
    }
    b = {"success_rate": 0.86, "mean_success_length": 80.0}
    final = {
        "per_seed": [r],
        "base_per_seed": [b],
        "pooled": r,
        "selected_env_steps": [0],
        "last": {"pooled": r},
    }
    text = lambda method: final_table({"method": method, "seeds": [0], "final": final})
    assert "0 = the base itself" in text("ResFiT")
    assert "0 = the untrained policy, not the base" in text("IBRL")
    assert "0 = the untrained policy, not the base" in text("RLPD")


def test_the_mean_steps_interval_pools_every_success_once():
    """summarize_eval keeps each seed's SD of successful lengths; pooled() gives the normal
    95% interval of the mean over all successes, as if computed from the episodes directly."""
    import numpy as np

    from resfit_jax.sim.report import length_interval, pooled, summarize_eval

    success = np.array([[True, True, False, True], [True, False, False, True]])
    length = np.array([[40, 50, 100, 60], [70, 100, 100, 90]])
    ev = {"success": success, "length": length, "mean_success_length": np.array([50.0, 80.0])}
    rows = [summarize_eval(ev, s) for s in range(2)]
    assert rows[0]["success_length_sd"] == pytest.approx(10.0)
    every = np.array([40, 50, 60, 70, 90], float)
    half = 1.959964 * every.std(ddof=1) / np.sqrt(every.size)
    assert length_interval(rows) == pytest.approx([every.mean() - half, every.mean() + half])
    out = pooled(success, success, rows, rows)
    assert out["mean_success_length_ci95"] == pytest.approx(length_interval(rows))
    # rows recorded before the SD was kept have no interval
    old = [{k: v for k, v in r.items() if k != "success_length_sd"} for r in rows]
    assert length_interval(old) is None


def test_baselines_are_paired_with_resfit_on_the_same_held_out_episodes(tmp_path):
    import json
    import os

    from studies.compare import against_resfit, resfit_table

    def run(name, policy, base=("0011", "0101"), with_outcomes=True):
        row = lambda bits: ({"outcomes": bits} if with_outcomes else {}) | {
            "episodes": len(bits),
            "successes": bits.count("1"),
        }
        path = tmp_path / name
        os.makedirs(path)
        json.dump(
            {
                "task": "PointReach",
                "seeds": [0, 1],
                "final": {
                    "per_seed": [row(b) for b in policy],
                    "base_per_seed": [row(b) for b in base],
                },
            },
            open(path / "summary.json", "w"),
        )
        return str(path)

    runs = {
        "resfit": run("resfit", ["0111", "1101"]),
        "rlpd": run("rlpd", ["0000", "0000"]),
        "ibrl": run("ibrl", ["1111", "1101"]),
        "fbc": run("fbc", ["0011", "0101"], with_outcomes=False),
        "ppo": None,
    }
    rows = {m: (None if r is None else {}) for m, r in runs.items()}
    paired = against_resfit(runs, rows)
    assert set(paired) == {"rlpd", "ibrl"}  # fbc has no outcomes, ppo unfinished
    assert (paired["rlpd"]["fixed"], paired["rlpd"]["broken"]) == (0, 6)
    assert paired["rlpd"]["reference_success_rate"] == 0.75 and paired["rlpd"]["success_rate"] == 0
    assert (paired["ibrl"]["fixed"], paired["ibrl"]["broken"]) == (1, 0)
    assert rows["rlpd"]["vs_resfit"] is paired["rlpd"] and "vs_resfit" not in rows["fbc"]
    text = resfit_table(paired)
    assert "RLPD" in text and "IBRL" in text and "Filtered BC" not in text
    assert against_resfit(runs, dict(rows, resfit=None)) == {}


def test_runs_that_clip_actions_to_other_ranges_are_refused_with_the_fix(tmp_path):
    """A Filtered BC run made before its preset took PegInsertion's 30% action margin ran
    its base clipped to the bare demo range (6 points lower): comparing it is refused."""
    import json
    import os

    from resfit_jax.sim.runs import check_same_action_range

    def run(name, margin):
        os.makedirs(tmp_path / name)
        json.dump(
            {"config": {"action_margin": margin, "obs_min_std": 2e-4}},
            open(tmp_path / name / "config.json", "w"),
        )
        return str(tmp_path / name)

    same = {
        "resfit": run("resfit", 0.3),
        "rlpd": run("rlpd", 0.3),
        "ibrl": str(tmp_path / "not_started"),
    }
    check_same_action_range(same)
    with pytest.raises(
        ValueError,
        match=r"different ranges.*Move fbc aside and re-train with "
        r"--override=fbc:action_margin=0.3",
    ):
        check_same_action_range(dict(same, fbc=run("fbc", 0.0)))


def test_headline_check_names_results_that_lack_their_rows(tmp_path):
    import json

    from studies.headline import add, add_se, missing_rows

    json.dump(
        {
            "PickPlace": {
                "rows": {
                    "resfit": _row("PickPlace", "ResFiT", 0.88),
                    "rlpd": _row("PickPlace", "RLPD", 0.0),
                    "ibrl": None,
                }
            }
        },
        open(tmp_path / "compare.json", "w"),
    )
    json.dump(
        {"PointReach": {"threshold": 0.8}, "PickPlace": {"note": "no threshold"}},
        open(tmp_path / "sample_efficiency.json", "w"),
    )
    row = lambda method, success: dict(_row("PickPlace", method, success), scale="cpu")
    data = add({"rows": []}, row("ResFiT", 0.88))
    assert missing_rows(data, str(tmp_path)) == [
        "compare row PickPlace / RLPD (compare.json)",
        "sample-efficiency row PointReach (sample_efficiency.json)",
    ]
    data = add_se(add(data, row("RLPD", 0.0)), {"task": "PointReach", "threshold": 0.8})
    assert missing_rows(data, str(tmp_path)) == []
