"""Sim loop invariants on PointReach (fast): errors, exact-N evaluation, replay accounting,
and the pure residual_env_step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resfit_jax.agents.residual_td3 import ResidualTD3Config, make_learner
from resfit_jax.base.policy import FunctionBase
from resfit_jax.base.residual import ResidualPolicy
from resfit_jax.envs import PointReach
from resfit_jax.envs.point_reach import biased_base_action
from resfit_jax.normalization import ActionScaler, Normalizer, StateStandardizer
from resfit_jax.replay import ReplayConfig
from resfit_jax.sim.evaluation import episode_keys, run_episodes
from resfit_jax.sim.loop import SimLoop

TASK = PointReach(episode_length=20)
CFG = ResidualTD3Config(actor_hidden_dims=(32, 32), critic_hidden_dims=(32, 32), num_critics=4)
REPLAY = ReplayConfig(batch_size=32, utd=2, capacity=4096)
NORM = Normalizer(
    obs=StateStandardizer.identity(4),
    action=ActionScaler.from_bounds(TASK.action_low, TASK.action_high, CFG.action_scale),
)


@pytest.fixture(scope="module")
def loop():
    return SimLoop(
        TASK, FunctionBase(biased_base_action, 2), make_learner(CFG, 4, 2), REPLAY, num_envs=8
    )


def _evaluate(loop, learner_state, key, n, record=False):
    policy = ResidualPolicy(
        loop.base, NORM, None if learner_state is None else loop.learner, learner_state
    )
    return run_episodes(TASK, policy, episode_keys(key, n), record)


def test_base_with_wrong_action_size_is_rejected(loop):
    with pytest.raises(
        ValueError, match=r"base policy's action size \(3\) does not match the task's \(2\)"
    ):
        SimLoop(
            TASK,
            FunctionBase(lambda o: jnp.zeros(o.shape[:-1] + (3,)), 3),
            loop.learner,
            REPLAY,
            num_envs=4,
        )


def test_zero_residual_evaluation_equals_base_alone(loop):
    evaluate = jax.jit(lambda s, k, n: _evaluate(loop, s, k, n), static_argnums=2)
    key = jax.random.key(3)
    base = evaluate(None, key, 37)
    with_residual = evaluate(loop.learner.init(jax.random.key(0), NORM), key, 37)
    assert base["success"].shape == (37,)  # exactly N episodes, not a multiple of the env count
    np.testing.assert_array_equal(base["success"], with_residual["success"])
    np.testing.assert_array_equal(base["length"], with_residual["length"])
    assert np.all((np.asarray(base["length"]) >= 1) & (np.asarray(base["length"]) <= TASK.horizon))
    assert 0.0 < float(base["success_rate"]) < 1.0


def test_recorded_evaluation_ends_each_episode_at_its_final_observation(loop):
    evaluate = jax.jit(lambda s, k, n, r: _evaluate(loop, s, k, n, r), static_argnums=(2, 3))
    key = jax.random.key(3)
    plain, rec = evaluate(None, key, 37, False), evaluate(None, key, 37, True)
    assert "obs" not in plain
    np.testing.assert_array_equal(plain["success"], rec["success"])
    obs, length = np.asarray(rec["obs"]), np.asarray(rec["length"])
    assert obs.shape == (TASK.horizon, 37, 4)
    final = obs[length - 1, np.arange(37)]  # the observation that ended it
    dist = np.linalg.norm(final[:, :2] - final[:, 2:], axis=1)
    success = np.asarray(rec["success"])
    assert success.any() and (~success).any()
    assert np.all(dist[success] < TASK.tolerance)
    assert np.all(dist[~success] >= TASK.tolerance)
    assert np.all(length[~success] == TASK.horizon)  # failures run to the time limit


def test_every_env_step_becomes_one_transition(loop):
    ls = loop.init(jax.random.key(1), loop.learner.init(jax.random.key(2), NORM))
    steps = 45
    ls, stats = jax.jit(loop.warmup, static_argnums=1)(ls, steps)
    n = REPLAY.n_step
    count = np.asarray(ls.writer_state.count)
    pending = np.where(count < n, count, n - 1).sum()
    assert int(ls.env_steps) == 8 * steps
    assert int(ls.replay_state.size) == 8 * steps - pending
    assert int(stats["episodes"]) >= 8 * steps // TASK.horizon
    data = jax.tree.map(lambda x: np.asarray(x[: int(ls.replay_state.size)]), ls.replay_state.data)
    allowed = np.float32([REPLAY.gamma**k for k in range(1, n + 1)])
    assert np.all(np.min(np.abs(data.discount[:, None] - allowed[None]), axis=1) < 1e-6)
    assert np.all(np.abs(data.action) <= 1.0) and np.all(np.abs(data.base_action) <= 1.0)
    # the executed action is the base action plus a warm-up residual within +-0.2
    assert np.all(np.abs(data.action - data.base_action) <= loop.warmup_noise + 1e-6)


class _Exploding(PointReach):
    """PointReach whose simulation 'diverges' (NaN state) once |pos[0]| exceeds 0.3."""

    def step(self, state, action):
        s = super().step(state, action)
        bad = jnp.abs(s.data["pos"][0]) > 0.3
        return s.replace(obs=jnp.where(bad, jnp.nan, s.obs))


def test_a_diverged_simulation_ends_the_episode_and_stores_nothing_non_finite():
    task = _Exploding(episode_length=20)
    # the base pushes +x: most episodes diverge before success or the time limit
    base = FunctionBase(lambda o: jnp.broadcast_to(jnp.array([1.0, 0.0]), o.shape[:-1] + (2,)), 2)
    loop = SimLoop(
        task,
        base,
        make_learner(CFG, 4, 2),
        ReplayConfig(batch_size=32, utd=2, capacity=2048),
        num_envs=8,
    )
    ls = loop.init(jax.random.key(1), loop.learner.init(jax.random.key(2), NORM))
    ls, stats = jax.jit(loop.warmup, static_argnums=1)(ls, 40)
    assert int(stats["diverged"]) > 8
    assert np.all(np.isfinite(np.asarray(ls.env_state.obs)))  # reset after divergence
    n = int(ls.replay_state.size)
    data = jax.tree.map(lambda x: np.asarray(x[:n]), ls.replay_state.data)
    assert n > 0 and all(np.all(np.isfinite(x)) for x in jax.tree.leaves(data))
    ls, metrics = jax.jit(loop.train, static_argnums=2)(ls, None, 4)  # the learner keeps going
    assert np.isfinite(float(metrics["critic_loss"]))


def test_residual_env_step_is_the_loop_s_step_and_vmaps_over_seeds(loop):
    """residual_env_step alone (as an on-policy loop would call it) executes
    clip(a_b + r), reports the true next observation and requeries the base after a reset;
    it runs under jit and vmap."""
    from resfit_jax.sim.step import initial_base_action, residual_env_step

    env = loop.env

    def one(key):
        s = env.reset(key)
        b, a_b = initial_base_action(loop.base, NORM, s, 8)
        r = jnp.full_like(a_b, 0.05)
        out = residual_env_step(env, loop.base, NORM, s, b, a_b, r)
        return a_b, out

    a_b, out = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(4), 3))
    assert out.action.shape == (3, 8, 2)
    np.testing.assert_allclose(out.action, np.clip(np.asarray(a_b) + 0.05, -1, 1), atol=1e-6)
    np.testing.assert_array_equal(out.prev_base_action, a_b)
    # no episode ends in one step here: next_obs is the env's obs, and the base action follows it
    assert not np.any(out.done)
    np.testing.assert_allclose(out.next_obs, out.env_state.obs)
    np.testing.assert_allclose(out.base_action, out.next_base_action, atol=1e-6)


def test_progressive_enablement_and_per_episode_exploration_std():
    """progressive_steps = T: the residual is on w.p. min(t / T, 1), so with T huge the main
    loop executes the base's actions; exploration_std_range draws each env's std per episode."""
    import dataclasses

    lrn = make_learner(CFG, 4, 2)
    loop = SimLoop(
        TASK,
        FunctionBase(biased_base_action, 2),
        lrn,
        REPLAY,
        num_envs=8,
        progressive_steps=10**9,
        explore_std_range=(0.01, 0.05),
    )
    ls = loop.init(jax.random.key(1), lrn.init(jax.random.key(2), NORM))
    std0 = np.asarray(ls.explore_std)
    assert np.all((std0 >= 0.01) & (std0 <= 0.05)) and len(set(std0.tolist())) == 8
    ls, _ = jax.jit(loop.train, static_argnums=2)(ls, None, 30)
    data = jax.tree.map(np.asarray, ls.replay_state.data)
    new = slice(0, int(ls.replay_state.size))
    np.testing.assert_allclose(data.action[new], data.base_action[new], atol=1e-6)
    assert int(ls.train_env_steps) == 8 * 30
    # 30 steps of 20-step episodes: every env started a new episode, with a new std
    assert np.all(np.asarray(ls.explore_std) != std0)
    always = dataclasses.replace(loop, progressive_steps=0)
    ls2 = always.init(jax.random.key(1), lrn.init(jax.random.key(2), NORM))
    ls2, _ = jax.jit(always.train, static_argnums=2)(ls2, None, 5)
    d2 = jax.tree.map(np.asarray, ls2.replay_state.data)
    n2 = int(ls2.replay_state.size)
    assert np.abs(d2.action[:n2] - d2.base_action[:n2]).max() > 1e-3
