"""The ablation runner's settings (cartesian factors, named settings) and its table."""

import os

import pytest

from studies.ablate import row, settings, table


def test_factors_make_a_cartesian_product_and_named_settings_follow():
    s = settings(
        ["base_phase=false,true", "replay.n_step=3,10"],
        ["old:obs_min_std=0.1;warmup_env_steps=2048"],
    )
    assert [n for n, _ in s] == [
        "base_phase=false,n_step=3",
        "base_phase=false,n_step=10",
        "base_phase=true,n_step=3",
        "base_phase=true,n_step=10",
        "old",
    ]
    assert s[3][1] == ["base_phase=true", "replay.n_step=10"]
    assert s[4][1] == ["obs_min_std=0.1", "warmup_env_steps=2048"]
    with pytest.raises(ValueError, match="FIELD=V1,V2"):
        settings(["base_phase"], [])
    with pytest.raises(ValueError, match="NAME:OVERRIDE"):
        settings([], ["no_colon"])
    with pytest.raises(ValueError, match="at least one"):
        settings([], [])
    with pytest.raises(ValueError, match="repeat"):
        settings([], ["a:x=1", "a:x=2"])


def test_a_recipe_in_a_setting_stands_for_its_overrides():
    from resfit_jax.run.configs import apply_overrides
    from resfit_jax.sim.presets import RECIPES, preset

    s = dict(
        settings(["recipe=per_step,chunk"], ["chunk_no_mc:recipe=chunk;residual.mc_bound=false"])
    )
    assert s["recipe=per_step"] == [] and s["recipe=chunk"] == list(RECIPES["chunk"])
    assert s["chunk_no_mc"] == list(RECIPES["chunk"]) + ["residual.mc_bound=false"]
    cfg = apply_overrides(preset("PickPlace"), s["chunk_no_mc"])  # later overrides win
    assert cfg.residual.decision_steps == 20 and not cfg.residual.mc_bound
    with pytest.raises(ValueError, match="unknown recipe"):
        settings([], ["x:recipe=fast"])


def test_rows_come_from_the_held_out_final_evaluation():
    pooled = {
        "episodes": 200,
        "base_success_rate": 0.8,
        "success_rate": 0.9,
        "fixed": 25,
        "broken": 5,
        "gain": 0.125,
        "churn": 0.025,
        "p_value": 0.0003,
        "diff_ci_low": 0.04,
        "diff_ci_high": 0.16,
        "base_mean_success_length": 80.0,
        "mean_success_length": 70.0,
    }
    summary = {
        "seeds": [0, 1],
        "env_steps": 1000,
        "wall_s": 5.0,
        "final": {"pooled": pooled, "per_seed": [{"success_rate": 0.88}, {"success_rate": 0.92}]},
    }
    r = row("new", ["base_phase=true"], summary)
    assert r["success_rate"] == 0.9 and r["per_seed_success"] == [0.88, 0.92]
    text = table([r])
    assert "new" in text and "90.0%" in text and "80.0 -> 70.0" in text


def test_the_paper_ablations_are_valid_settings_of_every_preset():
    from resfit_jax.run.configs import apply_overrides
    from resfit_jax.sim.presets import preset
    from studies.ablate import paper_ablations

    for task in ("PointReach", "PickPlace"):
        p = preset(task, "cpu")
        named = settings([], paper_ablations(p.num_envs, p.updates_per_step))
        assert [n for n, _ in named][:3] == ["preset", "layernorm_off", "no_demos"]
        for name, ovs in named:
            cfg = apply_overrides(p, ovs)  # each one validates as a config
            if name.startswith("utd_"):
                assert cfg.critic_steps_per_env_step == float(name[4:])
        assert apply_overrides(p, dict(named)["warmup_off"]).warmup_env_steps == 0
        # a setting equal to the preset (n = 3 on PointReach) reuses the preset's run
        from studies.ablate import same_as_earlier

        same = same_as_earlier([apply_overrides(p, ovs) for _, ovs in named])
        names = [n for n, _ in named]
        assert {names[i]: names[j] for i, j in same.items()} == (
            {"nstep_3": "preset"} if task == "PointReach" else {"nstep_10": "preset"}
        )
        assert not apply_overrides(p, dict(named)["layernorm_off"]).learner.layer_norm


def _summary(base: list[str], policy: list[str], seeds=(0, 1), task="PointReach") -> dict:
    """A summary.json with held-out outcomes per seed ("0110..." strings)."""
    row = lambda bits: {"outcomes": bits, "episodes": len(bits), "successes": bits.count("1")}
    return {
        "task": task,
        "seeds": list(seeds),
        "final": {"per_seed": [row(b) for b in policy], "base_per_seed": [row(b) for b in base]},
    }


def test_settings_are_compared_with_the_reference_episode_by_episode():
    from resfit_jax.sim.report import paired_between
    from studies.ablate import against_reference, reference_table

    base = ["0011", "0101"]
    ref = _summary(base, ["0111", "1101"])  # 6 / 8
    other = _summary(base, ["1110", "0111"])  # 6 / 8: 2 fixed, 2 broken vs ref
    better = _summary(base, ["1111", "1111"])  # 8 / 8: 2 fixed, 0 broken
    v = paired_between(ref, other)
    assert (v["fixed"], v["broken"], v["episodes"]) == (2, 2, 8)
    assert v["reference_success_rate"] == v["success_rate"] == 0.75 and v["p_value"] == 1.0
    v = paired_between(ref, better)
    assert (v["fixed"], v["broken"]) == (2, 0) and v["diff_ci_low"] < 0.25 < v["diff_ci_high"]
    # not the same starts: other seeds, another task, or the base scoring differently
    with pytest.raises(ValueError, match="seeds"):
        paired_between(ref, _summary(base, ["1111", "1111"], seeds=(0, 2)))
    with pytest.raises(ValueError, match="task"):
        paired_between(ref, _summary(base, ["1111", "1111"], task="PickPlace"))
    with pytest.raises(ValueError, match="base's held-out outcomes differ in 8 of 8"):
        paired_between(ref, _summary(["1100", "1010"], ["1111", "1111"]))
    # float32 rounding of the base in other batches flips a few borderline episodes: paired,
    # the flips counted, while up to a quarter of the ~37.5 episodes that independent starts
    # would differ in (base at 75%); more than that is not the same starts and base
    base100 = ["01" * 25 + "1" * 50]
    ref100 = _summary(base100, ["1" * 100], seeds=(0,))
    near = _summary(["10" * 4 + "01" * 21 + "1" * 50], ["0" + "1" * 99], seeds=(0,))
    v = paired_between(ref100, near)
    assert v["base_disagreements"] == 8 and (v["fixed"], v["broken"]) == (0, 1)
    far = _summary(["10" * 25 + "1" * 50], ["1" * 100], seeds=(0,))
    with pytest.raises(ValueError, match="differ in 50 of 100 .*about 38, .*at most 9"):
        paired_between(ref100, far)
    old = _summary(base, ["1111", "1111"])
    del old["final"]["per_seed"][0]["outcomes"]
    with pytest.raises(ValueError, match="no held-out outcomes"):
        paired_between(ref, old)

    rows = [{"setting": n} for n in ("preset", "other", "better", "old")]
    against_reference(rows, [ref, other, better, old], "preset")
    assert rows[0]["vs_reference"] is None and rows[3]["vs_reference"] is None
    assert (
        rows[2]["vs_reference"]["fixed"] == 2 and rows[2]["vs_reference"]["reference"] == "preset"
    )
    text = reference_table(rows, "preset")
    assert "better" in text and "100.0%" in text and "old" not in text
    with pytest.raises(ValueError, match="not a setting"):
        against_reference(rows, [ref, other, better, old], "nope")


def test_the_paper_claims_get_a_verdict_from_paired_held_out_episodes():
    from studies.ablate import PAPER_CLAIMS, claims_table, paper_claims

    base = ["0" * 50 + "1" * 50] * 3  # the base: 50% on each seed
    at = lambda k: _summary(base, ["1" * k + "0" * (100 - k)] * 3)  # k% on each seed
    runs = {
        "preset": at(90),
        "layernorm_off": at(60),
        "no_demos": at(89),
        "utd_0.5": at(70),
        "utd_1": at(95),
        "utd_4": at(90),
        "utd_8": at(91),
        "nstep_1": at(40),
        "nstep_3": at(90),
        "nstep_5": at(92),
        "nstep_10": at(99),
    }
    claims = {c["claim"]: c for c in paper_claims(runs)}
    assert len(claims) == len(PAPER_CLAIMS)
    verdict = {(c["setting"], c["against"]): c["verdict"] for c in claims.values()}
    assert verdict["utd_4", "utd_0.5"] == "supported"  # 90% vs 70%
    assert verdict["utd_4", "utd_1"] == "contradicted"  # 90% vs 95%
    assert verdict["utd_8", "utd_4"] == "supported"  # 91% vs 90%: no gain
    assert verdict["nstep_3", "nstep_1"] == "supported"
    assert verdict["nstep_10", "nstep_3"] == "contradicted"  # 99% vs 90%
    assert verdict["preset", "layernorm_off"] == "supported"
    assert verdict["preset", "no_demos"] == "not supported"  # 90% vs 89%
    assert verdict["preset", "warmup_off"] == "not measured"  # warmup_off missing
    c = claims["UTD 4 beats UTD 1/2"]
    assert (c["fixed"], c["broken"], c["episodes"]) == (60, 0, 300)
    text = claims_table(list(claims.values()))
    assert "contradicted" in text and "not measured" in text and "90.0%" in text


def test_settings_train_cheapest_first_and_report_in_declared_order():
    """UTD 4 / 8 (16x / 32x the PointReach preset's critic updates) train last; rows keep the
    declared order, a setting equal to an earlier one shares its summary, and unfinished
    settings are listed, not reported."""
    from resfit_jax.run.configs import apply_overrides
    from resfit_jax.sim.presets import preset
    from studies.ablate import (
        declared_rows,
        paper_ablations,
        same_as_earlier,
        training_order,
        update_cost,
    )

    p = preset("PointReach", "cpu")
    named = settings([], paper_ablations(p.num_envs, p.updates_per_step))
    names = [n for n, _ in named]
    configs = [apply_overrides(p, ovs) for _, ovs in named]
    costs = {n: update_cost(c) for n, c in zip(names, configs)}
    assert costs["utd_8"] == 32 * costs["preset"] and costs["heads_2"] == costs["preset"] / 5
    order = [names[i] for i in training_order(configs)]
    assert order[:2] == ["heads_2", "heads_5"] and order[-3:] == ["utd_1", "utd_4", "utd_8"]
    assert order.index("preset") < order.index("layernorm_off")  # declared order among equals
    same = same_as_earlier(configs)
    pooled = {
        "episodes": 10,
        "base_success_rate": 0.5,
        "success_rate": 0.9,
        "fixed": 4,
        "broken": 0,
        "gain": 0.4,
        "churn": 0.0,
        "p_value": 0.1,
        "diff_ci_low": 0.1,
        "diff_ci_high": 0.7,
        "base_mean_success_length": 9.0,
        "mean_success_length": 8.0,
    }
    done = {
        "seeds": [0],
        "env_steps": 100,
        "wall_s": 1.0,
        "final": {"pooled": pooled, "per_seed": [{"success_rate": 0.9}]},
    }
    finished = {names.index("preset"): done, names.index("heads_2"): done}
    rows, kept, unfinished = declared_rows(names, [ovs for _, ovs in named], same, finished)
    assert [r["setting"] for r in rows] == ["preset", "nstep_3", "heads_2"]
    assert len(kept) == 3 and "utd_8" in unfinished and "nstep_3" not in unfinished


def test_mechanism_numbers_take_the_start_middle_and_end_of_the_main_loop():
    from resfit_jax.sim.report import mechanism_numbers, mechanism_table

    rows = [{"kind": "eval", "env_steps": 0, "seed": 0}]
    for step in (1024, 2048, 3072, 4096, 5120):
        for seed in (0, 1):
            rows.append(
                {
                    "kind": "train",
                    "env_steps": step,
                    "seed": seed,
                    "action_gap": step / 1e5 + seed * 0.01,
                    "td_error_abs": 0.02,
                    "q_head_std": 0.01 * (seed + 1),
                }
            )
    m = mechanism_numbers(rows)
    assert [m[s]["env_steps"] for s in ("start", "middle", "end")] == [1024, 3072, 5120]
    assert m["end"]["action_gap"] == pytest.approx(0.0512 + 0.005)  # mean over the seeds
    assert m["start"]["q_head_std"] == pytest.approx(0.015)
    assert mechanism_numbers([r for r in rows if "action_gap" not in r]) == {}
    text = mechanism_table({"semi_k20": m, "old": {}})
    assert "semi_k20" in text and "old" not in text and "0.0562 / 0.0200 / 0.0150" in text


def test_a_train_run_is_built_from_its_recipe_then_its_config_flags():
    """experiments.train builds, prints and records ``recipe_overrides(recipe, --config)``:
    the recipe's fields are in the trained config and a --config flag after it wins (the
    script once printed the chunk recipe and trained the plain preset)."""
    from resfit_jax.run.configs import apply_overrides
    from resfit_jax.sim.presets import RECIPES, preset, recipe_overrides, with_recipe

    flags = ["learner.exploration_std=0.03", "residual.decision_steps=10"]
    overrides = recipe_overrides("chunk", flags)
    assert overrides == [*RECIPES["chunk"], *flags]
    cfg = apply_overrides(preset("PickPlace"), overrides)
    assert cfg.residual.decision_steps == 10 and not cfg.residual.hold
    assert cfg.learner.advantage_head and cfg.residual.mc_bound
    assert cfg.learner.exploration_std == 0.03
    assert cfg == apply_overrides(with_recipe(preset("PickPlace"), "chunk"), flags)
    assert recipe_overrides("per_step") == [] and with_recipe(preset("PickPlace"), "per_step") == (
        preset("PickPlace")
    )
    with pytest.raises(ValueError, match="Unknown recipe 'fast'"):
        recipe_overrides("fast")


def test_the_arm_tasks_default_to_the_chunk_recipe_and_per_step_stays_reachable():
    """Without --recipe, experiments.train builds the semi-MDP residual on the arm tasks (and
    prints it before anything is opened); --recipe=per_step gives the preset itself; other
    tasks and the baselines keep the preset."""
    import subprocess
    import sys

    from resfit_jax.sim.presets import default_recipe

    assert [default_recipe(t) for t in ("PickPlace", "PegInsertionEE", "BimanualHandover")] == [
        "chunk"
    ] * 3
    assert default_recipe("PointReach") == default_recipe("PixelPickPlace") == "per_step"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def train(*flags):
        argv = ["experiments.train", "--task=PickPlace", "--base=/nonexistent/base", *flags]
        r = subprocess.run(
            [sys.executable, "-m", *argv], cwd=root, capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 2 and "No base at /nonexistent/base" in r.stderr, r.stderr[-2000:]
        return r.stdout

    chunk = train()
    assert "(PickPlace, ResFiT, cpu, recipe chunk)" in chunk
    assert "a decision every 20 env steps" in chunk and "mc_bound = True" in chunk
    per_step = train("--recipe=per_step")
    assert "recipe chunk" not in per_step and "semi-MDP" not in per_step
    assert "residual.decision_steps = 1" in per_step
