"""Selection on periodic evaluations (``select="best"``): it keeps each seed's best state
(step 0 included, ties keep the earlier), survives a resume, leaves training untouched, and
the held-out evaluation scores the kept state (and the last one for contrast)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resfit_jax.base.policy import FunctionBase
from resfit_jax.envs.point_reach import biased_base_action
from resfit_jax.run.checkpointing import to_storable
from resfit_jax.run.logger import read_metrics
from resfit_jax.sim.config import Selection
from resfit_jax.sim.selection import improved, keep_better
from resfit_jax.sim.trainer import make_trainer, train_residual
from tests.test_trainer import CFG, TASK, demos, full_run, trainer  # noqa: F401


def test_keep_better_picks_per_seed_and_ties_keep_the_earlier():
    kept = {"w": jnp.zeros((3, 2, 2)), "b": jnp.zeros((3,))}
    cur = {"w": jnp.ones((3, 2, 2)), "b": jnp.ones((3,))}
    better = improved([0.5, 0.7, 0.9], [0.5, 0.6, 0.95])
    assert better.tolist() == [False, True, False]  # a tie is not better
    # with a margin the lead must exceed it: 2 of 100 episodes beat 0.01, 1 does not
    assert improved([0.86, 0.87, 0.90], [0.85, 0.85, 0.80], 0.01).tolist() == [False, True, True]
    assert improved([0.87], [0.85], 0.02).tolist() == [False]
    out = keep_better(kept, cur, better)
    assert out["b"].tolist() == [0.0, 1.0, 0.0]
    np.testing.assert_array_equal(out["w"][1], 1.0)
    np.testing.assert_array_equal(np.asarray(out["w"])[[0, 2]], 0.0)


def test_select_best_keeps_each_seeds_best_periodic_state(demos, full_run, tmp_path):  # noqa: F811
    _, full = full_run
    tr = make_trainer(
        TASK,
        FunctionBase(biased_base_action, 2),
        demos,
        CFG.replace(select=Selection("best")),
        seeds=[0, 1],
    )
    out = str(tmp_path / "sel")
    # Ctrl-C during the base's evaluation, before any state is kept: the checkpoint it
    # writes restores (it once had no "best" entry and the resume refused it as damaged)
    evaluate_base = tr.evaluator.evaluate_base

    def interrupted(*args):
        raise KeyboardInterrupt

    object.__setattr__(tr.evaluator, "evaluate_base", interrupted)  # a frozen dataclass
    try:
        with pytest.raises(KeyboardInterrupt):
            train_residual(tr, out, progress=False)
    finally:
        object.__setattr__(tr.evaluator, "evaluate_base", evaluate_base)
    assert os.listdir(os.path.join(out, "checkpoints"))
    train_residual(tr, out, resume=True, progress=False, stop_at_env_steps=64)
    summary = train_residual(tr, out, resume=True, progress=False)
    # selection does not change training
    a, b = to_storable(full["loop_state"]), to_storable(summary["loop_state"])
    jax.tree.map(np.testing.assert_array_equal, a, b)
    evals = [r for r in read_metrics(out) if r["kind"] == "eval"]
    final = summary["final"]
    for i, seed in enumerate((0, 1)):
        mine = sorted((r for r in evals if r["seed"] == seed), key=lambda r: r["env_steps"])
        rates = [r["success_rate"] for r in mine]
        first_best = mine[int(np.argmax(rates))]["env_steps"]  # argmax: the earliest max
        assert final["selected_env_steps"][i] == first_best
        # the kept state reproduces the periodic evaluation it was kept for
        kept = summary["selected_state"]
        ev = tr.evaluator.evaluate(kept, tr.evaluator.eval_keys())
        assert float(np.mean(ev["success"][i])) == pytest.approx(max(rates))
    # the last state's held-out result is the unselected run's
    assert final["last"]["pooled"] == full["final"]["pooled"]
    for i in range(2):
        if final["selected_env_steps"][i] == full["env_steps"]:
            assert final["per_seed"][i] == full["final"]["per_seed"][i]
        if final["selected_env_steps"][i] == 0:  # the zero residual: the base itself
            assert final["per_seed"][i]["fixed"] == final["per_seed"][i]["broken"] == 0
    from resfit_jax.sim.report import results_table  # the table says what was scored

    table = results_table(summary)
    assert "select=best" in table and f"{final['selected_env_steps'][0]:,}" in table
    assert f"The last states scored {final['last']['pooled']['success_rate']:.1%}" in table


def test_select_must_be_a_known_rule():
    with pytest.raises(ValueError, match="rule must be one of"):
        Selection("median")
    with pytest.raises(ValueError, match="margin must be in"):
        Selection("best", margin=-0.01)


def test_the_run_keeps_a_state_only_when_it_leads_by_more_than_the_margin():
    from types import SimpleNamespace

    from resfit_jax.sim.progress import Run

    cfg = CFG.replace(select=Selection("best", margin=0.01))
    run = SimpleNamespace(
        cfg=cfg,
        best=None,
        state=SimpleNamespace(learner_state=jnp.zeros(2)),
        prog=SimpleNamespace(env_steps=0, best_success=None, best_env_steps=None),
    )
    rows = lambda *rates: [{"success_rate": r} for r in rates]
    Run.keep_if_best(run, rows(0.85, 0.85))  # step 0: the base is kept
    run.prog.env_steps, run.state.learner_state = 10_000, jnp.ones(2)
    Run.keep_if_best(run, rows(0.86, 0.87))  # leads by 1 and 2 episodes
    assert run.best.tolist() == [0.0, 1.0] and run.prog.best_env_steps == [0, 10_000]
    assert run.prog.best_success == [0.85, 0.87]


def test_a_run_saved_before_an_option_existed_resumes_while_the_option_is_off():
    from resfit_jax.run.configs import same_config, to_dict

    saved = to_dict(CFG)
    del saved["select"], saved["learner"]["augment_pad"]
    assert same_config(saved, CFG)
    assert not same_config(saved, CFG.replace(select=Selection("best")))
    assert not same_config(to_dict(CFG.replace(num_envs=8)), CFG)
