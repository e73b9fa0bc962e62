"""Env protocol wrappers on PointReach: auto-reset semantics, re-randomisation, time limit."""

import jax
import jax.numpy as jnp
import numpy as np

from resfit_jax.envs import AutoReset, PointReach, VmapWrapper, make
from resfit_jax.envs.point_reach import expert_action


def test_auto_reset_keeps_final_obs_and_separates_success_from_truncation():
    task = PointReach(episode_length=5)
    env = VmapWrapper(AutoReset(task), 2)
    s = env.reset(jax.random.key(0))
    step = jax.jit(env.step)
    # env 0 follows the expert (teleport it next to the goal first), env 1 stands still
    data = s.data
    data["pos"] = data["pos"].at[0].set(data["goal"][0] + jnp.array([0.06, 0.0]))
    s = s.replace(data=data, obs=jnp.concatenate([data["pos"], data["goal"]], -1))
    prev = s
    s = step(s, jnp.stack([expert_action(s.obs[0]), jnp.zeros(2)]))
    assert bool(s.done[0]) and bool(s.info["success"][0]) and not bool(s.info["truncated"][0])
    assert float(s.reward[0]) == 1.0
    # final_obs is the true last observation; obs already belongs to the next episode
    np.testing.assert_allclose(s.info["final_obs"][0, 2:], prev.obs[0, 2:])
    assert not np.allclose(s.obs[0], s.info["final_obs"][0])
    assert int(s.info["steps"][0]) == 0 and int(s.info["steps"][1]) == 1
    for _ in range(4):
        prev, s = s, step(s, jnp.zeros((2, 2)))
    # env 1 hit the time limit at step 5: truncated, not success, reward 0
    assert bool(s.done[1]) and bool(s.info["truncated"][1]) and not bool(s.info["success"][1])
    assert float(s.reward[1]) == 0.0
    np.testing.assert_allclose(s.info["final_obs"][1], prev.obs[1])


def test_reset_re_randomises_every_episode():
    env = VmapWrapper(AutoReset(PointReach(episode_length=2)), 64)
    s = env.reset(jax.random.key(1))
    goals = [np.asarray(s.obs[:, 2:])]
    step = jax.jit(env.step)
    for _ in range(6):
        s = step(s, jnp.zeros((64, 2)))
        goals.append(np.asarray(s.obs[:, 2:]))
    starts = np.stack(goals[::2])  # episodes restart every 2 steps
    assert len({tuple(np.round(g, 5)) for g in starts[:, 0]}) == starts.shape[0]
    assert np.all(np.abs(starts) <= 1.0)


def test_registry_and_spec():
    env = make("PointReach", episode_length=7)
    assert env.horizon == 7 and env.action_size == 2
    assert env.observation_spec.shape == (4,)


def test_time_feature_counts_the_episode_and_restarts_at_reset():
    from resfit_jax.base.policy import FunctionBase, ObservationPrefix
    from resfit_jax.envs.core import TimeFeature
    from resfit_jax.envs.point_reach import biased_base_action

    task = PointReach(episode_length=5, tolerance=1e-6)  # never succeeds: always truncates
    timed = TimeFeature(task)
    assert timed.observation_spec.shape == (5,)
    env = VmapWrapper(AutoReset(timed), 3)
    s = env.reset(jax.random.key(0))
    np.testing.assert_array_equal(s.obs[:, -1], 0.0)
    step = jax.jit(env.step)
    for t in range(1, 6):
        prev = s.obs
        s = step(s, jnp.zeros((3, 2)))
        np.testing.assert_allclose(s.info["final_obs"][:, -1], t / 5)
        np.testing.assert_array_equal(s.info["final_obs"][:, :4], prev[:, :4])  # zero action
    assert bool(s.done.all()) and bool(s.info["truncated"].all())
    np.testing.assert_array_equal(s.obs[:, -1], 0.0)  # the new episode starts at 0
    # the untimed env sees the same positions and goals
    plain = VmapWrapper(AutoReset(task), 3).reset(jax.random.key(0))
    np.testing.assert_array_equal(env.reset(jax.random.key(0)).obs[:, :4], plain.obs)
    # a base behind ObservationPrefix gets the task's own observation
    base = ObservationPrefix(FunctionBase(biased_base_action, 2), 4)
    a, _ = base.step(base.init_state(3), s.obs)
    np.testing.assert_array_equal(a, biased_base_action(s.obs[:, :4]))
    assert base.action_dim == 2
