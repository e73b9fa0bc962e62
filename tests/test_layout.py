"""Layout rules: the robot side imports nothing from the simulated side, no library module
grows past about 400 lines, and every learner the loops take implements the protocol."""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "resfit_jax")


def _imports(path: str) -> set[str]:
    tree = ast.parse(open(path).read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _modules(sub: str = ""):
    for d, _, files in os.walk(os.path.join(ROOT, sub)):
        for f in files:
            if f.endswith(".py"):
                yield os.path.join(d, f)


def test_the_robot_side_imports_nothing_from_the_sim_side():
    for path in _modules("robot"):
        bad = {m for m in _imports(path) if m == "resfit_jax.sim" or m.startswith("resfit_jax.sim.")}
        assert not bad, f"{os.path.relpath(path, ROOT)} imports {sorted(bad)}"


def test_no_library_module_exceeds_about_400_lines():
    long = {os.path.relpath(p, ROOT): n for p in _modules()
            if (n := sum(1 for _ in open(p))) > 420}
    assert not long, long


def test_residual_td3_implements_the_learner_protocol():
    from resfit_jax.learner import Learner, has_critic_warmup
    from resfit_jax.agents.residual_td3 import ResidualTD3Config, make_learner

    learner = make_learner(ResidualTD3Config.small(), 4, 2)
    assert isinstance(learner, Learner) and has_critic_warmup(learner)
    assert (learner.obs_dim, learner.action_dim) == (4, 2)


def test_config_flags_and_readable_printing():
    from absl import flags

    from resfit_jax.run import configs
    from resfit_jax.sim.presets import preset

    fv = flags.FlagValues()
    flags.DEFINE_string("task", "PickPlace", "", flag_values=fv)
    saved = flags.FLAGS
    flags.FLAGS = fv
    try:
        rest = configs.config_flag_parser(["prog", "--config.replay.utd=8", "--task=PegInsertion",
                                           "--config.learner.actor_lr", "1e-5"])
    finally:
        flags.FLAGS = saved
    assert rest == ["prog"] and fv.task == "PegInsertion"
    assert configs.config_overrides(["num_envs=8"]) == ["replay.utd=8", "learner.actor_lr=1e-5",
                                                        "num_envs=8"]
    cfg = configs.apply_overrides(preset("PegInsertion"), configs.config_overrides())
    assert cfg.replay.utd == 8 and cfg.learner.actor_lr == 1e-5
    text = configs.config_lines(cfg)
    assert "  replay.utd = 8\n" in text and "  learner.actor_lr = 1e-05\n" in text
    assert max(len(line) for line in text.splitlines()) < 100
    with pytest.raises(SystemExit):
        configs.resolve(lambda: preset("PegInsertion"), ["replay.nope=1"])
    configs._CONFIG_ARGS.clear()


def test_the_readme_results_table_is_generated_from_headline_json():
    from studies.headline import README, load, render_readme

    readme = open(README).read()
    assert render_readme(readme, load()) == readme, \
        "README results table is stale: run python -m studies.headline readme"
    from studies.headline import missing_rows
    assert missing_rows(load()) == [], "headline.json lacks rows the README should show"
