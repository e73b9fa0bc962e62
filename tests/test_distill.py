"""Distillation (bc.distill, bc.pipeline's fine-tuning, experiments.distill): the data holds
only successful rollouts cut at their first success (or every frame when asked), the
fine-tuned base starts from the base (its normalizer and parameters; the base itself is
evaluated first), learns from the improved policy's episodes, and round-trips through
export."""

import json
import os

import jax
import numpy as np
import pytest

from resfit_jax.bc.distill import distill_keys, rollout_episodes
from resfit_jax.sim.evaluation import record_episodes
from tests.test_calibration import setup  # noqa: F401 (a semi-MDP policy and its episodes)
from tests.test_decisions import demos  # noqa: F401 (the fixture setup needs)

# a weak PointReach BC base (an MLP trained 60 steps on 10 noisy expert demos)
WEAK_BC = dict(
    policy="mlp",
    batch_size=128,
    chunk_size=5,
    eval_episodes=40,
    final_episodes=40,
    num_envs=20,
    demo_episodes=10,
    demo_noise=1.0,
    verbose=False,
)


def _record():
    """3 rollouts of 6 steps, obs [T, N, 2] = (step, rollout), action = obs + 0.5."""
    t, n = 6, 3
    obs = np.stack(np.meshgrid(np.arange(t), np.arange(n), indexing="ij"), -1).astype(np.float32)
    return {
        "obs": obs,
        "action": obs + 0.5,
        "next_obs": obs + np.array([1.0, 0.0], np.float32),
        "success": np.array([True, False, True]),
        "length": np.array([3, 6, 1]),
    }


def test_rollout_episodes_keep_successes_cut_at_the_first_success():
    rec = _record()
    eps = rollout_episodes(rec, "successes")
    assert [e.episode_id for e in eps] == [0, 2]  # the failure is left out
    first, second = eps
    assert first.num_actions == 3 and second.num_actions == 1
    np.testing.assert_array_equal(first.observation[:, 0], [0, 1, 2, 3])  # + the final obs
    np.testing.assert_array_equal(first.observation[:, 1], [0, 0, 0, 0])
    np.testing.assert_array_equal(first.action[:3], rec["action"][:3, 0])
    np.testing.assert_array_equal(first.reward[:3], [0, 0, 1])  # success on its last action
    np.testing.assert_array_equal(second.observation[:, 0], [0, 1])
    every = rollout_episodes(rec, "all")
    assert [e.episode_id for e in every] == [0, 1, 2]
    assert every[1].num_actions == 6 and every[1].reward.sum() == 0
    with pytest.raises(ValueError, match="keep must be one of"):
        rollout_episodes(rec, "best")


def test_recorded_rollouts_match_the_evaluator_and_keeps_only_successes():
    from resfit_jax import envs
    from resfit_jax.base.policy import FunctionBase
    from resfit_jax.envs.point_reach import biased_base_action
    from resfit_jax.sim.evaluation import run_episodes

    task = envs.make("PointReach")
    policy = FunctionBase(biased_base_action, 2)
    keys = distill_keys(0, 64)
    rec = jax.device_get(jax.jit(lambda k: record_episodes(task, policy, k))(keys))
    ev = jax.device_get(jax.jit(lambda k: run_episodes(task, policy, k))(keys))
    np.testing.assert_array_equal(rec["success"], ev["success"])
    np.testing.assert_array_equal(rec["length"], ev["length"])
    assert 0 < rec["success"].sum() < 64  # a mixed batch: the filter matters
    eps = rollout_episodes(rec, "successes")
    assert len(eps) == rec["success"].sum()
    for e in eps:
        n = e.episode_id
        assert rec["success"][n] and e.num_actions == rec["length"][n] and e.reward.sum() == 1
        # the recorded chain: each next obs is the following step's obs
        np.testing.assert_array_equal(e.observation[1:-1], rec["obs"][1 : e.num_actions, n])
    # the distillation starts are not the evaluation starts of seed 0
    assert not np.array_equal(
        np.asarray(jax.random.key_data(keys)), np.asarray(jax.random.key_data(distill_keys(1, 64)))
    )


def test_correction_fit_on_chunked_policies_with_a_known_share_of_the_correction():
    """An improved chunked policy adds c(obs at the chunk's refill) to the base's chunk; a
    "distilled" one adds c / 2: it reproduces exactly half the correction and its squared
    error to the improved actions is a quarter of the base's (both replayed on the improved
    policy's own observations, refilling where they would have); the improved policy
    replayed on its own episodes is a perfect fit."""
    import jax.numpy as jnp

    from resfit_jax import envs
    from resfit_jax.base.policy import ChunkedBase
    from resfit_jax.bc.distill import correction_fit
    from resfit_jax.envs.point_reach import biased_base_action

    k = 5

    def chunked(share):
        def predict(obs):
            a = biased_base_action(obs) + share * 0.2 * jnp.tanh(obs[..., :2] * 7.0)
            return jnp.repeat(a[:, None], k, axis=1)

        return ChunkedBase(predict, 2, k)

    task = envs.make("PointReach")
    base, improved, half = chunked(0.0), chunked(1.0), chunked(0.5)
    keys = distill_keys(3, 16)
    fit = jax.device_get(jax.jit(lambda ks: correction_fit(task, improved, base, half, ks))(keys))
    assert fit["frames"] > 16 * k
    assert fit["correction"] > 0.01
    np.testing.assert_allclose(fit["reproduced"], 0.5, rtol=1e-5)
    np.testing.assert_allclose(fit["error_ratio"], 0.25, rtol=1e-5)
    np.testing.assert_allclose(fit["moved"], fit["correction"] / 2, rtol=1e-5)
    same = jax.jit(lambda ks: correction_fit(task, improved, base, improved, ks))(keys)
    np.testing.assert_allclose(float(same["reproduced"]), 1.0, rtol=1e-6)
    assert float(same["error_ratio"]) < 1e-10


@pytest.mark.slow
def test_fine_tuning_starts_from_the_base_learns_the_new_episodes_and_exports(tmp_path):
    """A weak PointReach base (MLP, 60 steps) fine-tuned on the expert's episodes: the base
    is evaluated first (step 0, its own success), the normalizer is the base's, success
    rises well above the base, and the export reproduces the checkpoint."""
    from resfit_jax import envs
    from resfit_jax.base.policy import load_exported_base
    from resfit_jax.bc.frozen import load_base
    from resfit_jax.bc.pipeline import train_bc
    from resfit_jax.data.demos import collect_episodes, make_rollout

    common = WEAK_BC
    train_bc("PointReach", str(tmp_path / "weak"), steps=60, eval_every=60, **common)
    task = envs.make("PointReach")
    expert = envs.make_expert("PointReach", task, envs.ExpertStyle())
    extra, _ = collect_episodes(make_rollout(task, expert.init, expert.act), 60, 30)
    out = str(tmp_path / "distilled")
    tuned = train_bc(
        "PointReach",
        out,
        os.path.join(str(tmp_path / "weak"), "demos", "resfit_demos", "1.0.0"),
        steps=800,
        eval_every=400,
        init_from=os.path.join(str(tmp_path / "weak"), "checkpoint"),
        extra_episodes=extra,
        extra_source="expert",
        **{k: v for k, v in common.items() if k not in ("demo_episodes", "demo_noise")},
    )
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [0, 400, 800] and rows[0]["l1"] is None
    _, weak_info = load_base(os.path.join(str(tmp_path / "weak"), "checkpoint"), 4, 2)
    base, info = load_base(os.path.join(out, "checkpoint"), 4, 2)
    assert info["normalizer"] == weak_info["normalizer"]  # the base's units, not refitted
    assert info["init_from"].endswith("checkpoint") and info["num_extra"] == len(extra)
    assert rows[0]["success_rate"] <= 0.5, rows  # measured: a weak start
    assert tuned["success_rate"] >= rows[0]["success_rate"] + 0.25, (rows, tuned)
    exported = load_exported_base(os.path.join(out, "export"), obs_dim=4, action_dim=2)
    obs = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
    np.testing.assert_allclose(
        np.asarray(exported.predict(obs)), np.asarray(base.predict(obs)), rtol=1e-5, atol=1e-6
    )


def test_chain_table_pools_seeds_pairs_stages_and_counts_env_steps():
    """Two seeds of 4 starts: the stages' outcomes pooled in seed order, paired comparisons
    on the same starts, mean steps weighted by successes, env steps accumulated."""
    from studies.distill_chain import chain_table

    def stage(bits, length, steps):
        return {"outcomes": bits, "mean_success_length": length, "env_steps": steps}

    rows = [
        {
            "seed": 0,
            "base": stage("1000", 80.0, 0),
            "round1": stage("1110", 70.0, 1000),
            "distilled": stage("1100", 75.0, 300),
            "round2": stage("1111", 60.0, 1000),
        },
        {
            "seed": 1,
            "base": stage("0100", 90.0, 0),
            "round1": stage("0111", 72.0, 1000),
            "distilled": stage("0110", 76.0, 340),
            "round2": stage("1111", 64.0, 1000),
        },
    ]
    t = chain_table(rows)
    st = t["stages"]
    assert [st[s]["success_rate"] for s in ("base", "round1", "distilled", "round2")] == [
        2 / 8,
        6 / 8,
        4 / 8,
        1.0,
    ]
    assert st["round1"]["mean_success_length"] == pytest.approx((3 * 70 + 3 * 72) / 6)
    assert [st[s]["env_steps_so_far"] for s in st] == [0, 1000, 1320, 2320]
    by = {(c["stage"], c["against"]): c for c in t["comparisons"]}
    assert (by["round1", "base"]["fixed"], by["round1", "base"]["broken"]) == (4, 0)
    assert (by["distilled", "round1"]["fixed"], by["distilled", "round1"]["broken"]) == (0, 2)
    assert (by["round2", "round1"]["fixed"], by["round2", "round1"]["broken"]) == (2, 0)
    assert by["round2", "round1"]["p_value"] == pytest.approx(0.5)
    assert t["share_of_gain_kept"] == pytest.approx((4 / 8 - 2 / 8) / (6 / 8 - 2 / 8))
    # a seed without round 2 yet: the table holds the stages every seed has
    rows[1].pop("round2")
    t = chain_table(rows)
    assert "round2" not in t["stages"] and all(c["stage"] != "round2" for c in t["comparisons"])


@pytest.mark.slow
def test_a_residual_ppo_run_reopens_replays_its_held_out_episodes_and_distils(tmp_path):
    """Residual PPO as the improved policy: a short PPO run on a weak PointReach BC base
    reopens as a ResFiT run does (its base and its deterministic residual replay the
    held-out outcomes the run recorded, episode by episode), and distils into a new base
    from its successful rollouts only, here with replanned labels and no dropout."""
    from resfit_jax.bc.distill import DistillOptions, distill_run
    from resfit_jax.bc.pipeline import train_bc
    from resfit_jax.sim.restore import open_trained_run
    from resfit_jax.sim.runs import method_trainer, open_inputs

    base_dir = str(tmp_path / "weak")
    train_bc("PointReach", base_dir, steps=60, eval_every=60, **WEAK_BC)
    task, base, episodes, identity, paths = open_inputs("PointReach", base_dir, None)
    overrides = [
        "num_envs=8",
        "total_env_steps=1600",
        "eval_every=800",
        "eval_episodes=20",
        "final_episodes=40",
        "learner.actor_hidden_dims=32,32",
        "learner.critic_hidden_dims=32,32",
        "learner.actor_warmup_iterations=0",
        "learner.actor_lr=0.003",
    ]
    trainer, train = method_trainer("ppo", "PointReach", (task, base, episodes), [0, 1], overrides)
    run = str(tmp_path / "ppo")
    summary = train(
        trainer,
        run,
        progress=False,
        task_name="PointReach",
        identity=identity,
        extra_info={"base": paths["base"], "demos": paths["demos"], "scale": "cpu"}
        | {"method": "ResidualPPO", "overrides": overrides},
    )
    assert summary["complete"]
    trained = open_trained_run(run)
    assert trained.method == "ppo" and trained.seeds == [0, 1]
    out = str(tmp_path / "distilled")
    o = DistillOptions(
        episodes=40,
        seed_index=1,
        steps=20,
        eval_every=20,
        eval_episodes=10,
        labels="replanned",
        dropout=0.0,
    )
    d = distill_run(run, out, o, log=lambda *a: None)
    assert d["distill"]["labels"] == "replanned" and d["distill"]["dropout"] == 0.0
    shift = d["distill"]["label_shift"]  # the residual's correction, far less than the demos'
    assert 0 < shift["replanned_rollouts"] < shift["executed_demos"]
    assert json.load(open(os.path.join(out, "summary.json")))["config"]["dropout"] == 0.0
    held = d["held_out"]["policies"]
    assert held["base"]["replays_run"] and held["improved"]["replays_run"]  # seed index 1
    assert held["improved"]["outcomes"] == summary["final"]["per_seed"][1]["outcomes"]
    assert d["correction_fit"]["correction"] > 0  # the PPO residual acts
    kept = d["distill"]["kept_episodes"]
    assert kept == d["distill"]["rollout_successes"] > 0
    assert os.path.exists(os.path.join(out, "export"))
    # a run of a method that is no residual on the base is refused by name
    fbc = tmp_path / "fbc"
    fbc.mkdir()
    (fbc / "config.json").write_text(json.dumps({"method": "fbc", "task": "PointReach"}))
    with pytest.raises(ValueError, match="only ResFiT and residual PPO runs"):
        open_trained_run(str(fbc))


def test_replanned_labels_are_the_chunks_the_improved_policy_executes(setup):  # noqa: F811
    """On the improved policy's own episodes (a semi-MDP residual deciding once per chunk of
    the chunked PointReach base), the chunk replanned at each refill is exactly the actions
    it executed over that chunk; the base alone replans its own chunk; a chunk dataset
    relabelled in padded batches holds those chunks, every position valid, and the label
    distances are measured on the right rows."""
    from resfit_jax.base.residual import ResidualPolicy
    from resfit_jax.bc.data import chunk_dataset
    from resfit_jax.bc.replan import relabel_replanned, replanned_chunks

    policy, rec = setup[0], setup[5]
    h = policy.base.horizon
    replan = jax.jit(lambda o: replanned_chunks(policy, o))
    own = jax.jit(policy.base.predict)
    checked = 0
    for t in range(0, rec["obs"].shape[0] - h + 1, h):
        alive = rec["length"] >= t + h
        chunk = np.asarray(replan(rec["obs"][t]))
        np.testing.assert_allclose(
            chunk[alive], np.swapaxes(rec["action"][t : t + h], 0, 1)[alive], atol=1e-5
        )
        checked += int(alive.sum())
    assert checked > 16
    bare = ResidualPolicy(policy.base, policy.normalizer)
    o = rec["obs"][0]
    np.testing.assert_array_equal(
        np.asarray(jax.jit(lambda x: replanned_chunks(bare, x))(o)), np.asarray(own(o))
    )
    assert np.abs(np.asarray(replan(o)) - np.asarray(own(o))).max() > 1e-3  # it corrects
    episodes = rollout_episodes(rec, "all")
    data = chunk_dataset(episodes, h)
    n, rows = data["obs"].shape[0], sum(e.num_actions for e in episodes[:3])
    out, shift = relabel_replanned(policy, data, extra_rows=rows, batch=7)  # padded batches
    np.testing.assert_allclose(out["chunk"], np.asarray(replan(data["obs"])), atol=1e-6)
    assert out["mask"].all() and not data["mask"].all()
    dist = np.linalg.norm(out["chunk"] - np.asarray(own(data["obs"])), axis=-1)
    np.testing.assert_allclose(shift["replanned_rollouts"], dist[n - rows :].mean(), rtol=1e-5)
    np.testing.assert_allclose(shift["replanned_demos"], dist[: n - rows].mean(), rtol=1e-5)
