"""Filtered BC (resfit_jax.agents.filtered_bc): only successful episodes become training
samples, with chunks cut at the episode's end; a short run through every phase on a small
PointReach BC base, paired against the frozen base; an exported base is refused with a clear
error."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from resfit_jax import envs
from resfit_jax.agents.filtered_bc import (
    FilteredBCConfig,
    filtered_bc_preset,
    make_filtered_bc,
    train_filtered_bc,
)
from resfit_jax.agents.filtered_bc.trainer import success_samples
from resfit_jax.data import read_episodes
from resfit_jax.run.logger import read_metrics


def test_only_successful_episodes_are_kept_and_cut_at_their_end():
    t, n, k = 6, 3, 3
    action = jnp.arange(t * n * 2, dtype=jnp.float32).reshape(t, n, 2)
    length = jnp.array([4, 6, 2])  # env 0 succeeded at step 4, env 2 at step 2
    rollout = {
        "obs": jnp.zeros((t, n, 5)),
        "action": action,
        "alive": jnp.arange(t)[:, None] < length[None],
        "success": jnp.array([True, False, True]),
        "length": length,
    }
    items, keep = success_samples(rollout, k)
    keep = np.asarray(keep)
    np.testing.assert_array_equal(keep[:, 0], [1, 1, 1, 1, 0, 0])  # steps 0..3 of env 0
    assert not keep[:, 1].any()  # the failure: nothing
    np.testing.assert_array_equal(keep[:, 2], [1, 1, 0, 0, 0, 0])
    chunk, mask = np.asarray(items["chunk"]), np.asarray(items["mask"])
    # env 0, step 2: actions 2, 3, then padding with the last action (3), masked
    np.testing.assert_array_equal(chunk[2, 0], np.asarray(action)[[2, 3, 3], 0])
    np.testing.assert_array_equal(mask[2, 0], [True, True, False])
    np.testing.assert_array_equal(mask[1, 2], [True, False, False])
    assert int(keep.sum()) == 4 + 2


@pytest.fixture(scope="module")
def small_base(tmp_path_factory):
    from resfit_jax.bc.pipeline import train_bc

    out = str(tmp_path_factory.mktemp("bc"))
    train_bc(
        "PointReach",
        out,
        policy="mlp",
        steps=200,
        batch_size=64,
        chunk_size=5,
        eval_every=200,
        eval_episodes=10,
        final_episodes=10,
        num_envs=10,
        demo_episodes=12,
        demo_noise=0.0,
        seed=0,
        verbose=False,
        export=True,
    )
    return out


def test_short_filtered_bc_run_goes_through_every_phase(small_base, tmp_path):
    task = envs.make("PointReach")
    info = json.load(open(os.path.join(small_base, "checkpoint", "base_info.json")))
    eps = read_episodes(info["demos"])
    cfg = FilteredBCConfig(
        num_envs=8,
        total_env_steps=800,
        batch_size=32,
        steps_per_round=5,
        capacity=2048,
        eval_every=400,
        eval_episodes=12,
    )
    trainer = make_filtered_bc(task, small_base, eps, cfg, seeds=[0, 1])
    assert trainer.env_steps_per_chunk == 8 * task.horizon and trainer.iterations == 2
    s = train_filtered_bc(trainer, str(tmp_path), progress=False, task_name="PointReach")
    assert s["complete"] and s["method"] == "FilteredBC" and s["env_steps"] == 800
    rows = read_metrics(str(tmp_path))
    assert {r["kind"] for r in rows} == {"train", "eval", "final_eval"}
    train = [r for r in rows if r["kind"] == "train"]
    assert all(r["kept_samples"] <= r["env_steps_ran"] for r in train)
    assert all(r["buffer_size"] >= r["kept_samples"] for r in train)
    # the params moved, and the reference stayed the frozen base: step 0 is the base itself
    evals = [r for r in rows if r["kind"] == "eval" and r["seed"] == 0]
    assert evals[0]["success_rate"] == evals[0]["base_success_rate"]
    params = s["loop_state"].learner_state.params
    import jax

    moved = [
        not np.allclose(a[0], b)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(trainer.init_params))
    ]
    assert any(moved)
    # an export has no parameters to tune
    with pytest.raises(FileNotFoundError, match="train_bc checkpoint"):
        make_filtered_bc(task, os.path.join(small_base, "export"), eps, cfg, seeds=[0])


def test_the_preset_matches_resfits_budget():
    from resfit_jax.sim.presets import preset

    r, f = preset("PickPlace", "cpu"), filtered_bc_preset("PickPlace")
    assert f.total_env_steps == r.total_env_steps + r.warmup_env_steps
    # the base runs under the same action range as in ResFiT's run (PegInsertion widens it)
    for task in ("PickPlace", "PegInsertion"):
        r, f = preset(task, "cpu"), filtered_bc_preset(task)
        assert (f.action_margin, f.obs_min_std) == (r.action_margin, r.obs_min_std)
    assert filtered_bc_preset("PegInsertion").action_margin == 0.3
    assert (f.lr, f.batch_size, f.steps_per_round, f.demo_fraction) == (5e-5, 1024, 100, 0.5)
    with pytest.raises(ValueError, match="demo_fraction"):
        FilteredBCConfig(demo_fraction=1.5)
