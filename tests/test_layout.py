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
        bad = {
            m for m in _imports(path) if m == "resfit_jax.sim" or m.startswith("resfit_jax.sim.")
        }
        assert not bad, f"{os.path.relpath(path, ROOT)} imports {sorted(bad)}"


def test_no_library_module_exceeds_about_400_lines():
    long = {os.path.relpath(p, ROOT): n for p in _modules() if (n := sum(1 for _ in open(p))) > 420}
    assert not long, long


def test_residual_td3_implements_the_learner_protocol():
    from resfit_jax.agents.residual_td3 import ResidualTD3Config, make_learner
    from resfit_jax.learner import Learner, has_critic_warmup

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
        rest = configs.config_flag_parser(
            [
                "prog",
                "--config.replay.utd=8",
                "--task=PegInsertion",
                "--config.learner.actor_lr",
                "1e-5",
            ]
        )
    finally:
        flags.FLAGS = saved
    assert rest == ["prog"] and fv.task == "PegInsertion"
    assert configs.config_overrides(["num_envs=8"]) == [
        "replay.utd=8",
        "learner.actor_lr=1e-5",
        "num_envs=8",
    ]
    cfg = configs.apply_overrides(preset("PegInsertion"), configs.config_overrides())
    assert cfg.replay.utd == 8 and cfg.learner.actor_lr == 1e-5
    text = configs.config_lines(cfg)
    assert "  replay.utd = 8\n" in text and "  learner.actor_lr = 1e-05\n" in text
    assert max(len(line) for line in text.splitlines()) < 100
    with pytest.raises(SystemExit):
        configs.resolve(lambda: preset("PegInsertion"), ["replay.nope=1"])
    configs._CONFIG_ARGS.clear()


def test_the_results_tables_are_generated_from_headline_json():
    from studies.headline import load, missing_rows, stale_documents

    assert stale_documents(load()) == [], "run python -m studies.headline tables"
    assert missing_rows(load()) == [], "headline.json lacks rows the tables should show"


def _module_imports(path: str) -> set[str]:
    """Modules imported at module level (what runs on import), resolved to module names:
    ``from pkg import sub`` names ``pkg.sub`` when that is a module of the package."""
    tree = ast.parse(open(path).read())
    names, body = set(), list(tree.body)
    while body:  # module level, including `if TYPE_CHECKING:` / try blocks
        node = body.pop()
        if isinstance(node, (ast.If, ast.Try)):
            body += node.body + node.orelse + getattr(node, "handlers", [])
        if isinstance(node, ast.ExceptHandler):
            body += node.body
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                is_module = os.path.exists(_path_of(sub) or "")
                names.add(sub if is_module else node.module)
    return {n for n in names if n == "resfit_jax" or n.startswith("resfit_jax.")}


def _path_of(module: str) -> str | None:
    rel = os.path.join(os.path.dirname(ROOT), *module.split("."))
    for cand in (rel + ".py", os.path.join(rel, "__init__.py")):
        if os.path.exists(cand):
            return cand
    return None


def _name_of(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(ROOT))[: -len(".py")].split(os.sep)
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def test_no_import_cycles_in_the_library():
    """Module-level imports form no cycle (type-only ones included: every agent's config
    lives in its own config.py)."""
    graph = {_name_of(p): _module_imports(p) for p in _modules()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_package_top_holds_few_modules_and_the_public_surface():
    top = sorted(f for f in os.listdir(ROOT) if f.endswith(".py") and f != "__init__.py")
    assert len(top) <= 8, top
    import resfit_jax

    for name in (
        "make_learner",
        "ResidualTD3Config",
        "ReplayConfig",
        "replay_updates",
        "Normalizer",
        "ChunkedBase",
        "load_exported_base",
    ):
        assert name in resfit_jax.__all__


def test_the_readme_is_a_users_page_whose_commands_ci_runs():
    root = os.path.dirname(ROOT)
    readme = open(os.path.join(root, "README.md")).read()
    assert len(readme.encode()) < 15_000, len(readme.encode())
    ci = open(os.path.join(root, ".ci", "run")).read()
    install = 'python3.12 -m venv .venv && .venv/bin/pip install -e ".[test]"'
    test = ".venv/bin/python -m pytest -q tests"
    for command in (install, test):
        assert f"    {command}\n" in readme and command in ci, command
    assert ".venv/bin/python -m experiments.quickstart" in readme
