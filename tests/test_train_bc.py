"""The BC pipeline (resfit_jax.bc.pipeline.train_bc, behind experiments/train_bc.py) end to end on
PointReach (pure JAX, fast): demos are generated,
the BC base learns the task, the best checkpoint, metrics, summary and export are written,
and the exported base reproduces the checkpointed one."""

import json
import os

import jax
import numpy as np
import pytest

from resfit_jax.base.policy import load_exported_base
from resfit_jax.bc.frozen import load_base
from resfit_jax.bc.pipeline import train_bc


@pytest.mark.slow
def test_train_bc_end_to_end(tmp_path):
    out = str(tmp_path / "bc")
    s = train_bc(
        "PointReach",
        out,
        policy="mlp",
        steps=1600,
        batch_size=128,
        chunk_size=5,
        eval_every=800,
        eval_episodes=40,
        final_episodes=60,
        num_envs=20,
        demo_episodes=30,
        demo_noise=0.0,
        seed=0,
        verbose=False,
    )
    assert s["final_episodes"] == 60
    assert s["success_rate"] >= 0.6, s  # measured 0.75; a broken pipeline gives ~0
    assert s["best_step"] in (800, 1600)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == [800, 1600]
    assert rows[-1]["l1"] < rows[0]["l1"] * 1.5
    assert os.listdir(os.path.join(out, "tb"))
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["success_rate"] == s["success_rate"]
    base, info = load_base(os.path.join(out, "checkpoint"), obs_dim=4, action_dim=2)
    exported = load_exported_base(os.path.join(out, "export"), obs_dim=4, action_dim=2)
    obs = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
    np.testing.assert_allclose(
        np.asarray(exported.predict(obs)), np.asarray(base.predict(obs)), rtol=1e-5, atol=1e-6
    )
    assert exported.chunk_size == 5 and info["task"] == "PointReach"


def test_a_second_bc_run_on_one_directory_is_refused(tmp_path):
    """train_bc locks its output directory: while another run holds it, a second one stops
    before writing anything, naming the holder."""
    from resfit_jax.run.locks import RunLock, RunLockedError

    out = str(tmp_path / "bc")
    with RunLock(out, "BC training"):
        with pytest.raises(RunLockedError, match="in use by another BC training"):
            train_bc("PointReach", out, policy="mlp", steps=10)
    assert sorted(os.listdir(out)) == [".lock"]


def test_an_earlier_run_in_the_directory_is_set_aside_not_mixed_in(tmp_path):
    """A new BC run in a directory that holds an earlier (e.g. interrupted) one moves the
    earlier metrics, checkpoint and summary to previous/<time>/, so its rows never precede
    the new run's and its best checkpoint cannot stand in for the new one's."""
    from resfit_jax.bc.pipeline import set_aside_previous_run

    out = tmp_path / "bc"
    assert set_aside_previous_run(str(out)) is None
    os.makedirs(out / "checkpoint" / "1000")
    (out / "metrics.jsonl").write_text('{"step": 1000}\n')
    (out / "demos.txt").write_text("kept where it is")
    moved = set_aside_previous_run(str(out))
    assert sorted(os.listdir(moved)) == ["checkpoint", "metrics.jsonl"]
    assert (tmp_path / "bc" / "demos.txt").exists() and not (out / "metrics.jsonl").exists()
    assert json.loads(open(os.path.join(moved, "metrics.jsonl")).read())["step"] == 1000
    os.makedirs(out / "checkpoint")
    assert set_aside_previous_run(str(out)) != moved  # a second one gets its own folder
