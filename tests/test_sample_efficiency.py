"""The sample-efficiency analysis: first crossing, bootstrap over seeds, the threshold rule
and the ratio, measured or a lower bound when PPO has not reached the threshold."""

import numpy as np
import pytest

from studies.sample_efficiency import (
    compare,
    first_reach,
    noise_ceiling,
    report,
    resfit_overrides,
    run_cpu,
    run_overrides,
    steps_to_threshold,
    sweep,
    threshold_of,
)


def _curve(steps, success):
    return {"total_env_steps": np.asarray(steps, float), "success": np.asarray(success, float)}


def test_resfit_trains_the_scripts_default_recipe_and_the_run_records_it(tmp_path):
    from resfit_jax.sim.presets import RECIPES

    chunk = list(RECIPES["chunk"])
    assert "residual.decision_steps=20" in chunk
    # the arm tasks default to the semi-MDP residual, as experiments.train; user overrides last
    assert resfit_overrides("PickPlaceEE", None, ["eval_every=2560"]) == [*chunk, "eval_every=2560"]
    assert resfit_overrides("PickPlace", "per_step", ["eval_every=2560"]) == ["eval_every=2560"]
    assert resfit_overrides("PointReach", None, []) == []
    with pytest.raises(ValueError, match="Unknown recipe"):
        resfit_overrides("PickPlace", "nope", [])
    (tmp_path / "config.json").write_text('{"overrides": ["a=1", "b=2"]}')
    assert run_overrides(str(tmp_path)) == ["a=1", "b=2"]
    assert run_overrides(str(tmp_path / "missing")) is None


def test_first_reach_and_the_bootstrap_interval():
    steps = np.array([0, 10, 20, 30])
    assert first_reach(steps, [0.5, 0.7, 0.9, 0.95], 0.9) == 20
    assert first_reach(steps, [0.5, 0.7, 0.8, 0.85], 0.9) is None
    same = steps_to_threshold(steps, np.array([[0.5, 0.7, 0.9, 0.9]] * 3), 0.9, 200)
    assert same["steps"] == 20 and same["ci95"] == [20.0, 20.0] and same["reached"]
    spread = steps_to_threshold(
        steps,
        np.array([[0.5, 0.95, 0.95, 0.95], [0.5, 0.5, 0.5, 0.95], [0.5, 0.5, 0.95, 0.95]]),
        0.9,
        2000,
    )
    assert spread["steps"] == 30 and spread["per_seed"] == [10, 30, 20]
    lo, hi = spread["ci95"]
    assert lo == 10 and hi == 30


def test_the_ratio_is_measured_or_a_lower_bound():
    resfit = _curve([0, 1_000, 2_000], [[0.5, 0.8, 0.95]] * 3)
    ppo = _curve([0, 100_000, 200_000], [[0.5, 0.6, 0.96]] * 3)
    out = compare(resfit, ppo, 0.9, 100)
    assert out["ratio"] == pytest.approx(100.0) and out["ratio_kind"] == "measured"
    # ResFiT crossed in (1k, 2k], PPO in (100k, 200k]: the grid allows 50x to 200x
    assert out["resfit"]["after"] == 1_000 and out["ppo"]["after"] == 100_000
    assert out["ratio_range"] == pytest.approx([50.0, 200.0])
    r = {"task": "T", "seeds": [0, 1, 2], "threshold_rule": "absolute 0.900"} | out
    assert "[50.0x, 200.0x]" in report(r)
    slow = _curve([0, 100_000, 200_000], [[0.5, 0.6, 0.7]] * 3)
    out = compare(resfit, slow, 0.9, 100)
    assert out["ratio"] == pytest.approx(100.0) and out["ratio_kind"].startswith("lower bound")
    assert out["ppo"]["steps"] is None and out["ppo"]["ci95"][1] is None
    assert "ratio_range" not in out
    # a curve already at the threshold at its first evaluation: no lower grid point
    early = _curve([1_000, 2_000], [[0.95, 0.95]] * 3)
    out = compare(early, ppo, 0.9, 100)
    assert out["resfit"]["after"] is None and out["ratio_range"][1] is None


def test_the_sweep_reports_the_ratio_at_each_threshold():
    resfit = _curve([0, 1_000, 2_000], [[0.5, 0.8, 0.95]] * 3)
    ppo = _curve([0, 100_000, 200_000, 400_000], [[0.5, 0.85, 0.92, 0.99]] * 3)
    rows = sweep(resfit, ppo, [0.98, 0.8, 0.9], 50)
    assert [x["threshold"] for x in rows] == [0.8, 0.9, 0.98]  # sorted
    assert [x["ratio"] for x in rows[:2]] == pytest.approx([100.0, 100.0])
    assert rows[0]["ratio_range"] == [0.0, None]  # both crossed at their first evaluation
    assert rows[1]["ratio_range"] == pytest.approx([50.0, 200.0])
    assert rows[2]["ratio"] is None and rows[2]["ppo_steps"] == 400_000  # ResFiT never got there
    r = {"task": "T", "seeds": [0], "threshold_rule": "absolute 0.900", "sweep": rows}
    text = report(r | compare(resfit, ppo, 0.9, 10))
    assert "ratio against the threshold" in text and "50.0x-200.0x" in text
    assert text.splitlines()[6].split() == ["98.0%", "not", "reached", "400,000", "-"]


def test_the_threshold_is_the_base_plus_a_fraction_of_the_held_out_gain():
    t, how = threshold_of(0.5, {"success_rate": 0.9, "base_success_rate": 0.4}, 0.75, None)
    assert t == pytest.approx(0.5 + 0.75 * 0.5) and "held-out" in how
    t, how = threshold_of(0.5, {"success_rate": 0.8, "base_success_rate": 0.85}, 0.75, None)
    assert t is None and "does not exceed" in how
    assert threshold_of(0.5, None, 0.75, 0.9)[0] == 0.9


def test_a_threshold_inside_the_bases_noise_is_flagged():
    # 3 seeds x 100 episodes at 85%: the pooled Wilson interval reaches about 88.9%
    ceiling = noise_ceiling(np.array([0.9, 0.8, 0.85]), np.array([100, 100, 100]))
    assert 0.885 < ceiling < 0.892
    # more episodes narrow it
    assert noise_ceiling(np.array([0.85] * 3), np.array([1000] * 3)) < ceiling
    resfit = _curve([0, 1_000, 2_000], [[0.85, 0.9, 0.9]] * 3)
    ppo = _curve([0, 100_000, 200_000], [[0.85, 0.88, 0.9]] * 3)
    r = {"task": "T", "seeds": [0, 1, 2], "threshold_rule": "absolute 0.870"}
    r |= compare(resfit, ppo, 0.87, 100)
    r |= {"base_noise_ceiling": ceiling, "threshold_above_noise": 0.87 > ceiling}
    assert "evaluation noise" in report(r)
    r |= {"threshold_above_noise": True}
    assert "evaluation noise" not in report(r)


def test_runs_from_different_cpus_are_named_in_the_report(tmp_path):
    (tmp_path / "config.json").write_text('{"machine": {"cpu": "AMD EPYC"}}')
    assert run_cpu(str(tmp_path)) == "AMD EPYC"
    (tmp_path / "config.json").write_text("{}")  # a run from before the field existed
    assert run_cpu(str(tmp_path)) is None and run_cpu(str(tmp_path / "missing")) is None
    resfit = _curve([0, 1_000, 2_000], [[0.5, 0.7, 0.8]] * 3)
    ppo = _curve([0, 100_000, 200_000], [[0.5, 0.6, 0.8]] * 3)
    r = {"task": "T", "seeds": [0, 1, 2], "threshold_rule": "absolute 0.700"}
    r |= compare(resfit, ppo, 0.7, 100)
    for cpus, noted in (
        ({"resfit": "Intel Xeon", "ppo": "AMD EPYC"}, True),
        ({"resfit": "AMD EPYC", "ppo": "AMD EPYC"}, False),
        ({"resfit": "Intel Xeon", "ppo": None}, False),  # unknown: nothing to say
    ):
        assert ("different CPUs" in report(r | {"cpus": cpus})) == noted


def test_the_readme_table_is_generated_from_headline_rows():
    """sample_efficiency --headline: a compact row per task and threshold in headline.json,
    the README block rewritten from it (a rerun replaces its row)."""
    from studies.headline import SE_END, SE_START, add_se, render_tables, se_row

    resfit = _curve([0, 1_000, 2_000], [[0.5, 0.8, 0.95]] * 3)
    ppo = _curve([0, 100_000, 200_000], [[0.5, 0.6, 0.96]] * 3)
    result = {
        "task": "T",
        "threshold_rule": "absolute 0.900",
        "ppo_complete": False,
        "resfit_final": {"success_rate": 0.9, "base_success_rate": 0.5},
        "ppo_final": None,
        "curves": {"ppo": {"success_mean": [0.5, 0.6, 0.96]}},
    } | compare(resfit, ppo, 0.9, 50)
    data = add_se({"rows": []}, se_row(result))
    data = add_se(data, se_row(result))  # replaced, not duplicated
    assert len(data["sample_efficiency"]) == 1
    # the default rule's threshold moves with ResFiT's held-out result (a rescore): its row
    # is replaced too, and an absolute threshold keeps its own row
    rule = lambda t: {"task": "T", "threshold": t, "threshold_rule": "periodic base 50.0% + ..."}
    moved = add_se(add_se(data, rule(0.87)), rule(0.8625))["sample_efficiency"]
    assert [(r["threshold"], r["threshold_rule"][:8]) for r in moved] == [
        (0.8625, "periodic"),
        (0.9, "absolute"),
    ]
    # a labelled setting (--label) keeps its own row beside the default one, named in the table
    labelled = {"sample_efficiency": moved}
    labelled = add_se(labelled, rule(0.8625) | {"label": "UTD 1"})["sample_efficiency"]
    assert [r.get("label") for r in labelled] == [None, None, "UTD 1"]
    cells = render_tables(
        f"{SE_START}\n{SE_END}\n",
        {"rows": [], "sample_efficiency": [se_row(result | {"label": "UTD 1"})]},
    )
    assert "| T, UTD 1 (50.0%) |" in cells
    # adding a results row (compare --headline, headline add) keeps the sample-efficiency rows
    from studies.headline import add
    from tests.test_compare import _row

    data = add(data, _row("T", "ResFiT", 0.9))
    assert (
        len(data["rows"]) == 1
        and data["sample_efficiency"] == add_se({"rows": []}, se_row(result))["sample_efficiency"]
    )
    readme = f"a\n<!-- headline:start -->\n<!-- headline:end -->\n{SE_START}\nold\n{SE_END}\nb\n"
    new = render_tables(readme, data)
    row = new.split(SE_START)[1].split(SE_END)[0].strip().splitlines()[-1]
    assert row.startswith("| T (50.0%) | 90.0% (absolute) | 2,000 [2,000, 2,000] of 2,000 |")
    assert "**100x** (grid: 50-200x)" in row
    assert "(periodic 96.0% at 0.20M, budget not finished)" in row
    assert "\nold\n" not in new
    # both curves crossed at their first evaluation: the grids bound the ratio nowhere
    first = se_row(result | {"ratio_range": [0.0, None]})
    row = render_tables(readme, {"rows": [], "sample_efficiency": [first]})
    assert "**100x** (grid: unbounded)" in row and ">= 0x" not in row


def test_ppo_is_paired_with_resfit_on_the_held_out_episodes_once_both_finished():
    from studies.sample_efficiency import held_out_pairing

    row = lambda bits: {"outcomes": bits, "episodes": len(bits), "successes": bits.count("1")}
    run = lambda policy, done=True: {
        "task": "PickPlace",
        "seeds": [0],
        "complete": done,
        "final": {"per_seed": [row(policy)], "base_per_seed": [row("0110")]},
    }
    v = held_out_pairing(run("0111"), run("1101"))
    assert (v["fixed"], v["broken"], v["reference_success_rate"]) == (1, 1, 0.75)
    assert held_out_pairing(run("0111"), run("1101", done=False)) is None
    assert (
        held_out_pairing(
            run("0111"), {"task": "PickPlace", "seeds": [0], "complete": True, "final": {}}
        )
        is None
    )  # no outcomes: left out
    resfit = _curve([0, 1_000], [[0.5, 0.95]])
    r = {"task": "T", "seeds": [0], "threshold_rule": "absolute 0.9", "ppo_vs_resfit": v} | compare(
        resfit, resfit, 0.9, 10
    )
    assert "PPO fixes 1 and breaks 1 of ResFiT's episodes" in report(r)
