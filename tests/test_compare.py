"""benchmarks.compare and the paper-shaped README table: per-method overrides, the report,
and the task x method table generated from headline rows."""
import pytest

from benchmarks.compare import method_overrides, report
from benchmarks.headline import CMP_END, CMP_START, compare_table, render_readme


def _row(task, method, success, steps=50.0, base=0.5):
    return {"task": task, "method": method, "setting": "compare", "seeds": 3,
            "success_rate": success, "mean_steps": steps, "base_success_rate": base,
            "base_mean_steps": 60.0, "env_steps": 20_480, "warmup_env_steps": 2_048,
            "fixed": 10, "broken": 2, "churn": 0.01, "gain": 0.05, "p_value": 0.04,
            "wall_min": 3.0, "ci95": [0.8, 0.95], "evaluation": "held-out, 100 per seed"}


def test_method_overrides_go_to_their_method():
    out = method_overrides(["ibrl:learner.rule=greedy", "ppo:total_env_steps=1000"],
                           ["resfit", "ibrl", "ppo"])
    assert out == {"resfit": [], "ibrl": ["learner.rule=greedy"], "ppo": ["total_env_steps=1000"]}
    with pytest.raises(ValueError, match="METHOD:field=value"):
        method_overrides(["learner.rule=greedy"], ["ibrl"])
    with pytest.raises(ValueError, match="not one of --methods"):
        method_overrides(["rlpd:tau=0.1"], ["ibrl"])


def test_report_and_the_paper_shaped_table():
    rows = {"resfit": _row("PointReach", "ResFiT", 0.95), "rlpd": None}
    text = report("PointReach", rows)
    assert "ResFiT" in text and "95.0%" in text and "(not finished)" in text
    data = {"rows": [_row("PointReach", "ResFiT", 0.95), _row("PointReach", "IBRL", 0.9),
                     _row("PickPlace", "ResFiT", 0.88, base=0.86),
                     dict(_row("PickPlace", "ResFiT", 0.5), setting="preset")]}
    table = compare_table(data).splitlines()
    assert table[0] == "| task | BC | ResFiT | IBRL | seeds |"
    assert table[2].startswith("| PickPlace | 86.0% / 60.0 | 88.0% / 50.0 (23k) | - |")
    assert table[3].startswith("| PointReach | 50.0% / 60.0 | 95.0% / 50.0 (23k) | 90.0%")
    # the BC column is ResFiT's pairing, whichever row came first
    data_rev = {"rows": [_row("PickPlace", "IBRL", 0.0, base=0.867),
                         _row("PickPlace", "ResFiT", 0.88, base=0.86)]}
    assert compare_table(data_rev).splitlines()[2].startswith("| PickPlace | 86.0% / 60.0 |")
    readme = ("x\n<!-- headline:start -->\nold\n<!-- headline:end -->\n"
              f"{CMP_START}\nold\n{CMP_END}\ny\n")
    new = render_readme(readme, data)
    assert "| PickPlace | 86.0% / 60.0 | 88.0%" in new and "old" not in new and new.endswith("y\n")


def test_the_held_out_table_says_what_step_0_is_for_each_method():
    from resfit_jax.sim.report import final_table
    r = {"episodes": 100, "base_success_rate": 0.86, "success_rate": 0.0, "fixed": 0,
         "broken": 86, "churn": 0.86, "p_value": 1e-26, "diff_ci_low": -0.9,
         "diff_ci_high": -0.8, "base_mean_success_length": 80.0, "mean_success_length": None}
    b = {"success_rate": 0.86, "mean_success_length": 80.0}
    final = {"per_seed": [r], "base_per_seed": [b], "pooled": r, "selected_env_steps": [0],
             "last": {"pooled": r}}
    text = lambda method: final_table({"method": method, "seeds": [0], "final": final})
    assert "0 = the base itself" in text("ResFiT")
    assert "0 = the untrained policy, not the base" in text("IBRL")
    assert "0 = the untrained policy, not the base" in text("RLPD")
