"""MJX manipulation tasks: expert success, reset distributions, single-trace steps. One
compiled function per purpose per task, shared through module-scoped fixtures (MJX compiles
take 10-40 s each on CPU). Wrappers on the MJX tasks: test_mjx_wrappers.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resfit_jax import envs
from resfit_jax.data.demos import collect_episodes, make_rollout

# (task, parallel envs for the expert check, minimum successes out of them)
EXPERT_CHECK = {"PickPlace": (16, 15), "PegInsertion": (16, 15), "BimanualHandover": (8, 8)}


# PickPlace runs in the fast subset; the other tasks' compiles are the slow part of the suite
@pytest.fixture(
    scope="module",
    params=[
        pytest.param(name, marks=() if name == "PickPlace" else pytest.mark.slow)
        for name in envs.MANIPULATION_TASKS
    ],
)
def task_bundle(request):
    name = request.param
    task = envs.make(name)
    return name, task, jax.jit(jax.vmap(task.reset))


def _home(task):
    return task.home_action


def _object_xy(name, obs):
    """Object centre xy and target xy from an observation [..., O]."""
    if name == "PickPlace":
        return obs[..., 16:18], obs[..., 26:28]
    if name == "PegInsertion":
        return obs[..., 16:18], obs[..., 26:28]
    return obs[..., 32:34], obs[..., 45:47]


def test_expert_success_and_demo_roundtrip(task_bundle, tmp_path):
    """The clean expert succeeds on nearly every seed; its episodes survive an RLDS round
    trip bit-exactly and have the documented reward / flag layout."""
    from resfit_jax.data import read_episodes, write_episodes

    name, task, _ = task_bundle
    num, need = EXPERT_CHECK[name]
    expert = envs.make_expert(name, task)
    rollout = make_rollout(task, expert.init, expert.act)
    eps, stats = collect_episodes(rollout, num, num, seed=0, successful_only=False)
    assert stats.attempted == num
    assert stats.succeeded >= need, f"{name}: expert {stats.succeeded}/{num}"
    assert rollout._cache_size() == 1
    for ep in eps:
        t = ep.num_actions
        assert 1 <= t <= task.horizon
        assert ep.reward.sum() == float(ep.success)
        if ep.success:
            assert ep.reward[t - 1] == 1.0 and ep.is_terminal[-1] and ep.discount[-1] == 0.0
        assert np.all(ep.action[:-1] <= np.asarray(task.action_high) + 1e-6)
        assert np.all(ep.action[:-1] >= np.asarray(task.action_low) - 1e-6)
    path = write_episodes(str(tmp_path), eps, metadata={"task": name})
    back = read_episodes(path)
    assert len(back) == len(eps)
    for a, b in zip(eps, back):
        for k in (
            "observation",
            "action",
            "reward",
            "discount",
            "is_first",
            "is_last",
            "is_terminal",
        ):
            np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
        assert (a.episode_id, a.success, a.seed) == (b.episode_id, b.success, b.seed)
    # the residual preset's observation standardizer keeps every moving feature at its scale
    from resfit_jax.replay.demos import fit_normalizer
    from resfit_jax.sim.presets import preset

    cfg = preset(name, "cpu")
    nz = fit_normalizer(eps, cfg.learner.action_scale, cfg.action_margin, cfg.obs_min_std)
    std = np.concatenate([ep.observation for ep in eps]).std(axis=0)
    moving = std > 1e-6
    squash = np.asarray(nz.obs.std)[moving] / std[moving]
    assert squash.max() <= 2.0, f"{name}: features squashed {np.round(squash, 1)}"


def test_reset_distribution(task_bundle):
    """Initial object / target positions lie in the configured ranges and differ per key."""
    name, task, reset = task_bundle
    s = reset(jax.random.split(jax.random.PRNGKey(3), 64))
    obs = np.asarray(s.obs)
    assert obs.shape == (64,) + task.observation_spec.shape
    assert np.all(np.isfinite(obs))
    obj, target = _object_xy(name, obs)
    ranges = {
        "PickPlace": ("cube", "tote"),
        "PegInsertion": ("peg", "hole"),
        "BimanualHandover": ("bar", "tote"),
    }[name]
    ox, oy = getattr(task, f"{ranges[0]}_x_range"), getattr(task, f"{ranges[0]}_y_range")
    tx, ty = getattr(task, f"{ranges[1]}_x_range"), getattr(task, f"{ranges[1]}_y_range")
    eps = 1e-5  # float32 rounding; reset places objects exactly
    assert np.all((obj[:, 0] >= ox[0] - eps) & (obj[:, 0] <= ox[1] + eps))
    assert np.all((obj[:, 1] >= oy[0] - eps) & (obj[:, 1] <= oy[1] + eps))
    assert np.all((target[:, 0] >= tx[0]) & (target[:, 0] <= tx[1]))
    assert np.all((target[:, 1] >= ty[0]) & (target[:, 1] <= ty[1]))
    # Different keys -> different episodes; spread over most of the range.
    assert len(np.unique(np.round(obj, 4), axis=0)) == 64
    assert np.ptp(obj[:, 0]) > 0.5 * (ox[1] - ox[0])
    assert np.ptp(target[:, 1]) > 0.5 * (ty[1] - ty[0])
    assert not np.asarray(s.done).any() and not np.asarray(s.reward).any()


def test_step_traces_once_and_bad_action(task_bundle):
    """The jitted vmapped step compiles once when fed its own outputs (the MJX
    committed-array double-compile pitfall) and rejects a wrongly sized action."""
    name, task, reset = task_bundle
    step = jax.jit(jax.vmap(task.step))
    s = reset(jax.random.split(jax.random.PRNGKey(0), 64))  # test_reset_distribution's compile
    a = jnp.broadcast_to(_home(task), (64, task.action_size))
    for _ in range(3):
        s = step(s, a)
    jax.block_until_ready(s)
    assert step._cache_size() == 1
    assert np.all(np.isfinite(np.asarray(s.obs)))
    with pytest.raises(ValueError, match="action has shape"):
        task.step(jax.tree.map(lambda x: x[0], s), jnp.zeros(task.action_size + 1))
