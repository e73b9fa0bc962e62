"""The off-policy baselines of the paper's comparison (spec/baselines.md): IBRL's selection
rule against hand-made Q values and against its critic, the RLPD recipe with no base, config
errors, a short run of each through every phase (paired against the BC base), and each
improving a biased base on PointReach."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resfit_jax import envs
from resfit_jax.agents.ibrl import IBRLConfig, choose, make_ibrl
from resfit_jax.agents.residual_td3 import ResidualTD3Config
from resfit_jax.agents.rlpd import NoBase
from resfit_jax.base.policy import FunctionBase
from resfit_jax.data.demos import collect_episodes, make_rollout
from resfit_jax.envs.point_reach import biased_base_action
from resfit_jax.normalization import Normalizer
from resfit_jax.replay import Transition
from resfit_jax.run.logger import read_metrics
from resfit_jax.sim.config import ResidualOptions, TrainConfig
from resfit_jax.sim.presets import preset
from resfit_jax.sim.trainer import make_trainer, train_residual

TASK = envs.PointReach(episode_length=20)
SMALL = dict(actor_hidden_dims=(32, 32), critic_hidden_dims=(32, 32))


def test_ibrl_rule_on_a_hand_made_q_table():
    p_base = jnp.array([0.5, 0.2, 0.7, 0.0])
    p_rl = jnp.array([0.6, 0.1, 0.7, 0.3])
    # greedy: the RL proposal only where its value is strictly higher (ties keep the base)
    np.testing.assert_array_equal(choose(p_base, p_rl, "greedy", 10.0, None), [1, 0, 0, 1])
    # soft: P(RL) = softmax(beta * [P_b, P_rl])[1] = sigmoid(beta * (P_rl - P_b))
    keys = jax.random.split(jax.random.key(0), 20_000)
    freq = jax.vmap(lambda k: choose(p_base, p_rl, "soft", 10.0, k))(keys).mean(axis=0)
    expect = 1 / (1 + np.exp(-10 * np.array([0.1, -0.1, 0.0, 0.3])))  # .731 .269 .5 .953
    np.testing.assert_allclose(freq, expect, atol=0.015)
    # beta = 0: a fair coin; deterministic (key None) is greedy whatever the rule
    keys = jax.random.split(jax.random.key(1), 20_000)
    coin = jax.vmap(lambda k: choose(p_base, p_rl, "soft", 0.0, k))(keys).mean()
    assert abs(float(coin) - 0.5) < 0.01
    np.testing.assert_array_equal(choose(p_base, p_rl, "soft", 10.0, None), [1, 0, 0, 1])


@pytest.fixture(scope="module")
def ibrl():
    cfg = IBRLConfig(**SMALL, num_critics=4, num_min_critics=4, rule="greedy")
    learner = make_ibrl(cfg, 3, 2)
    state = learner.init(jax.random.key(0), Normalizer.identity(3, 2))
    # targets different from the online critic, so acting must use the target's values
    state = state.replace(
        target_critic_params=jax.tree.map(
            lambda x: x + 0.3 * jax.random.normal(jax.random.key(2), x.shape),
            state.target_critic_params,
        )
    )
    return learner, state


def _pess(learner, params, obs, action):
    """min over all heads of the critic ``params`` on identity-normalized obs (the test's
    hand-written reference)."""
    return learner.critic.apply(params, obs, action).min(axis=0)


def test_ibrl_acts_with_the_proposal_its_target_critic_prefers(ibrl):
    learner, state = ibrl
    obs = jax.random.normal(jax.random.key(3), (64, 3))
    a_b = jax.random.uniform(jax.random.key(4), (64, 2), minval=-1, maxval=1)
    r, aux = learner.act(state, obs, a_b, jax.random.key(5), deterministic=True)
    a_rl = learner.actor.apply(state.actor_params, obs, jnp.zeros_like(a_b))
    np.testing.assert_allclose(aux["rl_action"], a_rl, atol=1e-6)
    take = _pess(learner, state.target_critic_params, obs, a_rl) > _pess(
        learner, state.target_critic_params, obs, a_b
    )
    assert 0 < int(take.sum()) < 64  # both proposals win somewhere
    np.testing.assert_array_equal(aux["gate"], take)
    np.testing.assert_allclose(aux["action"], jnp.where(take[:, None], a_rl, a_b), atol=1e-6)
    np.testing.assert_allclose(a_b + r, aux["action"], atol=1e-6)  # the loops run a_b + r
    # a non-finite observation runs the base
    bad = obs.at[0, 1].set(jnp.nan)
    r, aux = learner.act(state, bad, a_b, jax.random.key(5), deterministic=True)
    assert not aux["obs_finite"][0] and np.all(np.asarray(r[0]) == 0)


def test_ibrl_td_target_bootstraps_the_preferred_next_action(ibrl):
    learner, state = ibrl
    k = jax.random.split(jax.random.key(6), 4)
    n = 32
    batch = Transition(
        obs=jax.random.normal(k[0], (n, 3)),
        base_action=jnp.zeros((n, 2)),
        action=jnp.zeros((n, 2)),
        reward=(jnp.arange(n) % 3 == 0).astype(jnp.float32),
        discount=jnp.full((n,), 0.97),
        nonterminal=(jnp.arange(n) % 5 != 0).astype(jnp.float32),
        next_obs=jax.random.normal(k[1], (n, 3)),
        next_base_action=jax.random.uniform(k[2], (n, 2), minval=-1, maxval=1),
    )
    y = learner.td_target(state, batch, k[3], 0.0)  # no target noise: a deterministic y
    a_rl = learner.actor.apply(state.target_actor_params, batch.next_obs, jnp.zeros((n, 2)))
    q_b = _pess(learner, state.target_critic_params, batch.next_obs, batch.next_base_action)
    q_rl = _pess(learner, state.target_critic_params, batch.next_obs, a_rl)
    expect = batch.reward + batch.discount * batch.nonterminal * jnp.maximum(q_b, q_rl)
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-6)


def test_rlpd_recipe_acts_with_no_base():
    cfg = preset("PointReach", "cpu", "rlpd")
    lr = cfg.learner
    assert (lr.action_scale, lr.actor_zero_init, lr.actor_lr, lr.tau, lr.exploration_std) == (
        1.0,
        False,
        1e-4,
        0.01,
        0.1,
    )
    assert (
        cfg.warmup_env_steps,
        cfg.warmup_noise,
        cfg.critic_warmup_updates,
        cfg.replay.n_step,
    ) == (10_000, 1.0, 0, 3)
    ib = preset("PointReach", "cpu", "ibrl")
    assert isinstance(ib.learner, IBRLConfig) and ib.warmup_noise == 0.0
    assert ib.learner.actor_hidden_dims == cfg.learner.actor_hidden_dims  # the task's sizes
    nz = Normalizer.identity(3, 2)
    nz = dataclasses.replace(
        nz, action=dataclasses.replace(nz.action, center=jnp.array([0.3, -0.2]))
    )
    base = NoBase.for_normalizer(nz)
    a, _ = base.step(base.init_state(5), jnp.ones((5, 3)))
    np.testing.assert_allclose(a, np.tile([0.3, -0.2], (5, 1)))
    np.testing.assert_allclose(nz.normalize_action(a), 0.0, atol=1e-6)


def test_baseline_configs_refuse_resfit_only_options():
    with pytest.raises(ValueError, match="preset\\(task, scale, method\\)"):
        TrainConfig(method="ibrl")  # a ResidualTD3Config learner
    with pytest.raises(ValueError, match="method must be one of"):
        TrainConfig(method="sac")
    with pytest.raises(ValueError, match="ResFiT's options"):
        preset("PointReach", "cpu", "rlpd", residual=ResidualOptions(base_phase=True))
    with pytest.raises(ValueError, match="value gate"):
        IBRLConfig(gate_tau=0.0)
    with pytest.raises(ValueError, match="rule must be one of"):
        IBRLConfig(rule="argmax")
    with pytest.raises(TypeError, match="IBRLConfig"):
        make_ibrl(ResidualTD3Config(), 3, 2)


@pytest.fixture(scope="module")
def demos():
    expert = envs.make_expert("PointReach", TASK, envs.ExpertStyle())
    eps, _ = collect_episodes(make_rollout(TASK, expert.init, expert.act), 12, 12)
    return eps


def _small(method: str, **kw) -> TrainConfig:
    cfg = preset("PointReach", "cpu", method)
    return dataclasses.replace(
        cfg,
        learner=dataclasses.replace(cfg.learner, **SMALL, num_critics=4),
        replay=dataclasses.replace(cfg.replay, batch_size=32, utd=2, capacity=2048),
        num_envs=4,
        warmup_env_steps=64,
        total_env_steps=128,
        steps_per_chunk=8,
        eval_every=64,
        eval_episodes=13,
        **kw,
    )


@pytest.mark.parametrize(
    "method,name", [("rlpd", "RLPD"), pytest.param("ibrl", "IBRL", marks=pytest.mark.slow)]
)
def test_short_baseline_run_goes_through_every_phase(method, name, demos, tmp_path):
    trainer = make_trainer(
        TASK, FunctionBase(biased_base_action, 2), demos, _small(method), seeds=[0, 1]
    )
    assert isinstance(trainer.loop.base, NoBase) == (method == "rlpd")
    s = train_residual(trainer, str(tmp_path), progress=False, task_name="PointReach")
    assert s["complete"] and s["method"] == name
    rows = read_metrics(str(tmp_path))
    assert {r["kind"] for r in rows} == {"warmup", "train", "eval", "final_eval"}  # no critic
    evals = [r for r in rows if r["kind"] == "eval" and r["seed"] == 0]
    assert [r["env_steps"] for r in evals] == [0, 64, 128]
    # the paired reference is the BC base itself, the same as a ResFiT run's on these starts
    ref = make_trainer(
        TASK,
        FunctionBase(biased_base_action, 2),
        demos,
        _small("resfit", critic_warmup_updates=0),
        seeds=[0, 1],
    )
    base = jax.device_get(ref.evaluator.evaluate_base(ref.normalizer, ref.evaluator.eval_keys()))[
        "success"
    ]
    assert [b["success_rate"] for b in s["base"]] == pytest.approx(
        np.asarray(base).mean(axis=1).tolist()
    )
    assert all(np.isfinite(r["critic_loss"]) for r in rows if r["kind"] == "train")
    if method == "ibrl":
        assert all(0.0 <= r["gate_open"] <= 1.0 for r in rows if r["kind"] == "train")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rlpd", "ibrl"])
def test_baseline_improves_a_biased_base_on_point_reach(method, tmp_path):
    """The recipes on the PointReach CPU preset (RLPD with a 2k random warm-up instead of
    10k): from the biased base's ~50% to at least 15 points above it in 20k env steps, with
    a paired McNemar p < 0.01 on the 200 matched starts. One seed's exact rate moves with
    XLA's numerics between jax releases (RLPD: 0.80 on jax 0.12.0.1, 0.735 on 0.12.1), so
    the test asks for a clear, significant gain rather than one seed's number."""
    task = envs.make("PointReach")
    expert = envs.make_expert("PointReach", task, envs.ExpertStyle())
    eps, _ = collect_episodes(make_rollout(task, expert.init, expert.act), 60, 30)
    kw = {"warmup_env_steps": 2048} if method == "rlpd" else {}
    cfg = preset(
        "PointReach",
        "cpu",
        method,
        total_env_steps=20_480,
        eval_every=20_480,
        eval_episodes=200,
        **kw,
    )
    trainer = make_trainer(task, FunctionBase(biased_base_action, 2), eps, cfg, seeds=[0])
    s = train_residual(trainer, str(tmp_path), progress=False, task_name="PointReach")
    base, final = s["base"][0], s["resfit"][0]
    assert 0.30 <= base["success_rate"] <= 0.60, base
    assert final["success_rate"] >= base["success_rate"] + 0.15, (method, base, final)
    assert final["p_value"] < 0.01, (method, base, final)
