"""Sim loop invariants on PointReach (fast): errors, exact-N evaluation, replay accounting."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resfit_jax.base_policy import FunctionBase
from resfit_jax.envs import PointReach
from resfit_jax.envs.point_reach import biased_base_action
from resfit_jax.normalization import ActionScaler
from resfit_jax.residual_td3 import ResidualTD3Config, make_learner
from resfit_jax.training.sim_loop import SimLoop

TASK = PointReach(episode_length=20)
CFG = ResidualTD3Config(actor_hidden_dims=(32, 32), critic_hidden_dims=(32, 32), num_critics=4,
                        batch_size=32, utd=2)


@pytest.fixture(scope="module")
def loop():
    scaler = ActionScaler.from_bounds(TASK.action_low, TASK.action_high, CFG.action_scale)
    return SimLoop(TASK, FunctionBase(biased_base_action, 2), make_learner(CFG, 4, 2), scaler,
                   num_envs=8, replay_capacity=4096)


def test_base_with_wrong_action_size_is_rejected(loop):
    with pytest.raises(ValueError, match=r"base policy's action size \(3\) does not match the task's \(2\)"):
        SimLoop(TASK, FunctionBase(lambda o: jnp.zeros(o.shape[:-1] + (3,)), 3), loop.learner,
                loop.scaler, num_envs=4)


def test_zero_residual_evaluation_equals_base_alone(loop):
    evaluate = jax.jit(loop.evaluate, static_argnums=2)
    key = jax.random.key(3)
    base = evaluate(None, key, 37)
    with_residual = evaluate(loop.learner.init(jax.random.key(0)), key, 37)
    assert base["success"].shape == (37,)  # exactly N episodes, not a multiple of the env count
    np.testing.assert_array_equal(base["success"], with_residual["success"])
    np.testing.assert_array_equal(base["length"], with_residual["length"])
    assert np.all((np.asarray(base["length"]) >= 1) & (np.asarray(base["length"]) <= TASK.horizon))
    assert 0.0 < float(base["success_rate"]) < 1.0


def test_recorded_evaluation_ends_each_episode_at_its_final_observation(loop):
    evaluate = jax.jit(loop.evaluate, static_argnums=(2, 3))
    key = jax.random.key(3)
    plain, rec = evaluate(None, key, 37, False), evaluate(None, key, 37, True)
    assert "obs" not in plain
    np.testing.assert_array_equal(plain["success"], rec["success"])
    obs, length = np.asarray(rec["obs"]), np.asarray(rec["length"])
    assert obs.shape == (TASK.horizon, 37, 4)
    final = obs[length - 1, np.arange(37)]                     # the observation that ended it
    dist = np.linalg.norm(final[:, :2] - final[:, 2:], axis=1)
    success = np.asarray(rec["success"])
    assert success.any() and (~success).any()
    assert np.all(dist[success] < TASK.tolerance)
    assert np.all(dist[~success] >= TASK.tolerance)
    assert np.all(length[~success] == TASK.horizon)            # failures run to the time limit


def test_every_env_step_becomes_one_transition(loop):
    ls = loop.init(jax.random.key(1), loop.learner.init(jax.random.key(2)))
    steps = 45
    ls, stats = jax.jit(loop.warmup, static_argnums=1)(ls, steps)
    n = CFG.n_step
    count = np.asarray(ls.writer_state.count)
    pending = np.where(count < n, count, n - 1).sum()
    assert int(ls.env_steps) == 8 * steps
    assert int(ls.replay_state.size) == 8 * steps - pending
    assert int(stats["episodes"]) >= 8 * steps // TASK.horizon
    data = jax.tree.map(lambda x: np.asarray(x[: int(ls.replay_state.size)]), ls.replay_state.data)
    allowed = np.float32([CFG.gamma ** k for k in range(1, n + 1)])
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
    scaler = ActionScaler.from_bounds(task.action_low, task.action_high, CFG.action_scale)
    # the base pushes +x: most episodes diverge before success or the time limit
    base = FunctionBase(lambda o: jnp.broadcast_to(jnp.array([1.0, 0.0]), o.shape[:-1] + (2,)), 2)
    loop = SimLoop(task, base, make_learner(CFG, 4, 2), scaler, num_envs=8, replay_capacity=2048)
    ls = loop.init(jax.random.key(1), loop.learner.init(jax.random.key(2)))
    ls, stats = jax.jit(loop.warmup, static_argnums=1)(ls, 40)
    assert int(stats["diverged"]) > 8
    assert np.all(np.isfinite(np.asarray(ls.env_state.obs)))           # reset after divergence
    n = int(ls.replay_state.size)
    data = jax.tree.map(lambda x: np.asarray(x[:n]), ls.replay_state.data)
    assert n > 0 and all(np.all(np.isfinite(x)) for x in jax.tree.leaves(data))
    ls, metrics = jax.jit(loop.train, static_argnums=2)(ls, None, 4)   # the learner keeps going
    assert np.isfinite(float(metrics["critic_loss"]))
