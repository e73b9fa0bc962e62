"""Residual PPO (the ResiP baseline): GAE and the clipped loss against hand-computed values,
the residual is exactly zero at init, the KL early stop, a short run through every phase
with exact resume, and PPO fixing a biased base on PointReach."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resfit_jax import envs
from resfit_jax.agents.residual_ppo import (
    PPOBatch,
    ResidualPPOConfig,
    Rollout,
    gae,
    gaussian_log_prob,
    make_ppo,
)
from resfit_jax.base.policy import FunctionBase
from resfit_jax.base.residual import ResidualPolicy
from resfit_jax.data.demos import collect_episodes, make_rollout
from resfit_jax.envs.point_reach import biased_base_action
from resfit_jax.normalization import Normalizer
from resfit_jax.run.checkpointing import to_storable
from resfit_jax.run.logger import read_metrics
from resfit_jax.sim.evaluation import episode_keys, run_episodes
from resfit_jax.sim.ppo_presets import PPOTrainConfig, ppo_preset
from resfit_jax.sim.ppo_trainer import make_ppo_trainer, train_residual_ppo

TASK = envs.PointReach(episode_length=20)
SMALL = ResidualPPOConfig(
    actor_hidden_dims=(32, 32),
    critic_hidden_dims=(32, 32),
    update_epochs=4,
    num_minibatches=2,
    actor_warmup_iterations=1,
)
CFG = PPOTrainConfig(
    learner=SMALL, num_envs=8, total_env_steps=640, eval_every=320, eval_episodes=11
)


def test_gae_matches_a_hand_computed_reference_with_episode_ends():
    g, lam = 0.9, 0.8
    r = np.array([0.0, 1.0, 0.0, 0.0, 1.0])
    v = np.array([0.5, 0.6, 0.2, 0.3, 0.4])
    nv = np.array([0.6, 0.7, 0.3, 0.4, 0.9])  # V of each step's true next observation
    term = np.array([0, 1, 0, 0, 0], bool)  # step 1 succeeded (terminal)
    trunc = np.array([0, 0, 0, 1, 0], bool)  # step 3 timed out; step 4 ends the rollout
    done = term | trunc
    for boot in (False, True):
        m = 1.0 - (term if boot else done)
        # by hand, backwards
        delta = r + g * m * nv - v
        a = np.zeros(5)
        a[4] = delta[4]
        a[3] = delta[3]  # episode ended at 3
        a[2] = delta[2] + g * lam * a[3]
        a[1] = delta[1]  # episode ended at 1
        a[0] = delta[0] + g * lam * a[1]
        adv, ret = gae(
            jnp.asarray(r)[:, None],
            jnp.asarray(v)[:, None],
            jnp.asarray(nv)[:, None],
            jnp.asarray(m)[:, None],
            jnp.asarray(done, jnp.float32)[:, None],
            g,
            lam,
        )
        np.testing.assert_allclose(np.asarray(adv)[:, 0], a, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(ret)[:, 0], a + v, rtol=1e-6)
    # the truncated step bootstraps only with bootstrap_truncation
    assert delta[3] == pytest.approx(0.0 + g * 0.4 - 0.3)


def test_the_clipped_loss_matches_a_hand_computed_value():
    cfg = ResidualPPOConfig(
        actor_hidden_dims=(8,), critic_hidden_dims=(8,), normalize_advantages=False, vf_coef=0.5
    )
    ppo = make_ppo(cfg, 3, 2, 10)
    state = ppo.init(jax.random.key(0))
    obs = jax.random.normal(jax.random.key(1), (4, 3))
    a_b = jnp.zeros((4, 2))
    u = jnp.array([[0.1, -0.2], [0.3, 0.0], [-0.1, 0.1], [0.2, 0.2]])
    # at init the mean is 0 and log_std -1: the new log-prob by hand
    new_lp = np.sum(
        -0.5 * (np.asarray(u) / math.exp(-1.0)) ** 2 + 1.0 - 0.5 * math.log(2 * math.pi), axis=-1
    )
    np.testing.assert_allclose(
        gaussian_log_prob(u, jnp.zeros(2), jnp.full(2, -1.0)), new_lp, rtol=1e-6
    )
    ratio = np.array([0.5, 1.5, 1.1, 0.7])
    adv = np.array([1.0, 1.0, -1.0, -1.0])
    ret = np.array([1.0, 0.0, 0.5, 0.2])
    batch = PPOBatch(
        obs, a_b, u, jnp.asarray(new_lp - np.log(ratio)), jnp.asarray(adv), jnp.asarray(ret)
    )
    total, aux = ppo.losses.loss((state.actor_params, state.critic_params), state.normalizer, batch)
    # min(r A, clip(r, 0.8, 1.2) A): 0.5, 1.2, -1.1, -0.8
    assert float(aux["pg_loss"]) == pytest.approx(-(0.5 + 1.2 - 1.1 - 0.8) / 4, abs=1e-6)
    v = np.asarray(ppo.value(state, obs, a_b))
    v_loss = 0.5 * np.mean((v - ret) ** 2)
    assert float(aux["value_loss"]) == pytest.approx(v_loss, rel=1e-5)
    assert float(total) == pytest.approx(0.05 + 0.5 * v_loss, rel=1e-5)
    assert float(aux["approx_kl"]) == pytest.approx(np.mean(ratio - 1 - np.log(ratio)), rel=1e-5)
    assert float(aux["clip_fraction"]) == pytest.approx(0.75)  # 0.5, 1.5 and 0.7


def test_the_residual_is_exactly_zero_at_init_so_ppo_starts_as_the_base():
    base = FunctionBase(biased_base_action, 2)
    ppo = make_ppo(SMALL, TASK.observation_spec, 2, 10)
    nz = Normalizer.identity(4, 2)
    state = ppo.init(jax.random.key(3), nz)
    keys = episode_keys(jax.random.key(4), 16)
    alone = run_episodes(TASK, ResidualPolicy(base, nz), keys, record=True)
    with_ppo = run_episodes(TASK, ResidualPolicy(base, nz, ppo, state), keys, record=True)
    # the residual is exactly 0 on every state the base visits; the trajectories agree to
    # float rounding (two separately compiled programs may round the action's
    # normalize / unnormalize round trip differently, depending on the CPU)
    visited = jnp.asarray(alone["obs"]).reshape(-1, 4)
    _, at_visited = ppo.act(
        state, visited, jnp.zeros((visited.shape[0], 2)), jax.random.key(6), deterministic=True
    )
    assert np.all(np.asarray(at_visited["residual_mean"]) == 0.0)
    np.testing.assert_allclose(alone["obs"], with_ppo["obs"], rtol=0, atol=1e-6)
    r, aux = ppo.act(state, jnp.ones((5, 4)), jnp.full((5, 2), 0.3), jax.random.key(5))
    assert np.all(np.asarray(aux["residual_mean"]) == 0.0)
    # exploration is the recipe's: scale * exp(-1) per dim
    r, _ = ppo.act(state, jnp.ones((4096, 4)), jnp.zeros((4096, 2)), jax.random.key(6))
    assert float(jnp.std(r)) == pytest.approx(SMALL.action_scale * math.exp(-1.0), rel=0.05)


def _rollout(ppo, state, t=16, e=8):
    k = jax.random.split(jax.random.key(7), 4)
    obs = jax.random.normal(k[0], (t, e, 4))
    a_b = jnp.zeros((t, e, 2))
    r, aux = jax.vmap(lambda o, kk: ppo.act(state, o, a_b[0], kk))(obs, jax.random.split(k[1], t))
    reward = (jax.random.uniform(k[2], (t, e)) < 0.1).astype(jnp.float32)
    done = reward > 0
    return Rollout(
        obs,
        a_b,
        aux["sample"],
        aux["log_prob"],
        aux["value"],
        reward,
        aux["value"],
        done,
        jnp.zeros_like(done),
        done,
    )


def test_the_kl_early_stop_ends_the_update_and_the_lr_schedule():
    cfg = ResidualPPOConfig(
        actor_hidden_dims=(32,),
        critic_hidden_dims=(32,),
        actor_lr=1e-2,
        update_epochs=20,
        target_kl=1e-4,
        actor_warmup_iterations=0,
    )
    ppo = make_ppo(cfg, 4, 2, 10)
    state = ppo.init(jax.random.key(0))
    new, m = jax.jit(ppo.update)(state, _rollout(ppo, state))
    assert 1 <= int(m["grad_steps"]) < 20 and float(m["stopped_early"]) == 1.0
    assert float(m["last_approx_kl"]) > 1e-4 and int(new.iteration) == 1
    no_stop = make_ppo(cfg.__class__(**{**cfg.__dict__, "target_kl": None}), 4, 2, 10)
    _, m = jax.jit(no_stop.update)(state, _rollout(ppo, state))
    assert int(m["grad_steps"]) == 20 and float(m["stopped_early"]) == 0.0
    # cosine over the iterations; the actor waits actor_warmup_iterations
    warm = make_ppo(SMALL, 4, 2, 10)
    lrs = [tuple(float(x) for x in warm.learning_rates(jnp.asarray(i))) for i in (0, 1, 5, 10)]
    assert lrs[0][0] == 0.0 and lrs[1][0] == pytest.approx(
        3e-4 * 0.5 * (1 + math.cos(math.pi * 0.1))
    )
    assert lrs[2][1] == pytest.approx(5e-3 * 0.5) and lrs[3] == (0.0, 0.0)


@pytest.fixture(scope="module")
def demos():
    expert = envs.make_expert("PointReach", TASK, envs.ExpertStyle())
    eps, _ = collect_episodes(make_rollout(TASK, expert.init, expert.act), 12, 12)
    return eps


@pytest.fixture(scope="module")
def trainer(demos):
    return make_ppo_trainer(TASK, FunctionBase(biased_base_action, 2), demos, CFG, seeds=[0, 1])


@pytest.fixture(scope="module")
def full_run(trainer, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ppo_full"))
    return out, train_residual_ppo(trainer, out, progress=False, task_name="PointReach")


def test_a_short_ppo_run_goes_through_every_phase(full_run):
    out, s = full_run
    assert s["complete"] and s["method"] == "ResidualPPO" and s["seeds"] == [0, 1]
    assert s["env_steps"] == 640 == 4 * 8 * 20
    rows = read_metrics(out)
    train = [r for r in rows if r["kind"] == "train"]
    assert len(train) == 4 * 2 and all(r["grad_steps"] >= 1 for r in train)
    assert {r["env_steps"] for r in rows if r["kind"] == "eval"} == {0, 320, 640}
    final = s["final"]
    assert final["pooled"]["episodes"] == 22 and len(final["per_seed"]) == 2
    assert {"fixed", "broken", "churn", "gain", "p_value"} <= set(final["per_seed"][0])
    # the held-out final starts are not the periodic ones
    assert (
        final["base_per_seed"][0]["successes"] != s["base"][0]["successes"]
        or final["base_per_seed"][1]["successes"] != s["base"][1]["successes"]
    )


def test_a_ppo_resume_equals_the_uninterrupted_run(trainer, full_run, tmp_path):
    _, full = full_run
    out = str(tmp_path / "staged")
    first = train_residual_ppo(trainer, out, progress=False, stop_at_env_steps=320)
    assert not first["complete"] and first["env_steps"] == 320
    with pytest.raises(FileExistsError, match="--resume"):
        train_residual_ppo(trainer, out, progress=False)
    resumed = train_residual_ppo(trainer, out, resume=True, progress=False)
    assert resumed["complete"]
    jax.tree.map(
        np.testing.assert_array_equal,
        to_storable(full["loop_state"]),
        to_storable(resumed["loop_state"]),
    )
    assert full["final"] == resumed["final"]


def test_ppo_refuses_a_base_of_the_wrong_action_size(demos):
    with pytest.raises(ValueError, match="action size"):
        make_ppo_trainer(
            TASK, FunctionBase(lambda o: jnp.zeros(o.shape[:-1] + (3,)), 3), demos, CFG, seeds=[0]
        )
    with pytest.raises(ValueError, match="update_epochs must be >= 1"):
        ResidualPPOConfig(update_epochs=0)
    with pytest.raises(ValueError, match="target_kl"):
        ResidualPPOConfig(target_kl=0.0)


def test_every_arm_task_and_its_ee_variant_has_a_ppo_preset():
    from resfit_jax.sim.presets import PRESETS

    for task in ("PickPlace", "PegInsertion", "BimanualHandover"):
        assert task + "EE" in PRESETS  # ResFiT trains it, so PPO can be compared on it
        assert ppo_preset(task + "EE") == ppo_preset(task)
        assert ppo_preset(task + "EE", "accelerator") == ppo_preset(task, "accelerator")
    with pytest.raises(ValueError, match="No residual-PPO preset for task 'Nope'"):
        ppo_preset("Nope")


@pytest.mark.slow
def test_residual_ppo_fixes_a_biased_base_on_point_reach(tmp_path):
    task = envs.make("PointReach")
    expert = envs.make_expert("PointReach", task, envs.ExpertStyle())
    eps, _ = collect_episodes(make_rollout(task, expert.init, expert.act), 60, 30)
    cfg = ppo_preset("PointReach", total_env_steps=192_000, eval_every=192_000, eval_episodes=200)
    tr = make_ppo_trainer(task, FunctionBase(biased_base_action, 2), eps, cfg, seeds=[0])
    s = train_residual_ppo(tr, str(tmp_path), progress=False, task_name="PointReach")
    final = s["final"]["per_seed"][0]
    base = s["final"]["base_per_seed"][0]
    assert 0.30 <= base["success_rate"] <= 0.60, base
    assert final["success_rate"] >= base["success_rate"] + 0.25, (base, final)
    assert final["p_value"] < 1e-3 and final["broken"] <= 5
