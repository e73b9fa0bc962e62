"""Frame-once replay: the frame ring round-trips frames exactly, and a pixel sim loop that
stores each frame once samples the same transitions and learns the same parameters as one
that stores two frames per transition, in less memory; an undersized ring is reported."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resfit_jax import envs
from resfit_jax.agents.residual_td3 import ResidualTD3Config, make_learner
from resfit_jax.base.policy import FunctionBase
from resfit_jax.normalization import ActionScaler, Normalizer, StateStandardizer
from resfit_jax.replay import ReplayConfig
from resfit_jax.replay.frames import FrameStore, alive, frame_capacity, read, resolve, stale_count
from resfit_jax.sim.loop import SimLoop

TASK = envs.make("PixelPointReach", episode_length=4)  # many episode ends
E = 4
CFG = ResidualTD3Config(
    actor_hidden_dims=(16,),
    critic_hidden_dims=(16,),
    num_critics=2,
    camera_feature_dim=8,
    actor_lr=1e-3,
    check_finite=False,
)
REPLAY = ReplayConfig(n_step=3, batch_size=8, utd=1, capacity=160, frame_once=True)


def test_frame_ring_round_trip_masks_and_overwrites():
    spec = {
        "a": jax.ShapeDtypeStruct((2, 2, 3), jnp.uint8),
        "b": jax.ShapeDtypeStruct((1, 1, 3), jnp.uint8),
    }
    store = FrameStore(5)
    fs = store.init(spec)
    img = (
        lambda v, s: jnp.full((len(v),) + s, 0, jnp.uint8)
        + jnp.asarray(v, jnp.uint8)[:, None, None, None]
    )
    fs, ids = store.write(
        fs,
        {"a": img([1, 2, 3], (2, 2, 3)), "b": img([1, 2, 3], (1, 1, 3))},
        jnp.array([True, False, True]),
    )
    assert ids.tolist() == [0, -1, 1] and int(fs.count) == 2
    got = read(fs, jnp.array([0, 1]))
    assert got["a"][:, 0, 0, 0].tolist() == [1, 3] and got["b"][:, 0, 0, 0].tolist() == [1, 3]
    fs, ids2 = store.write(
        fs, {"a": img([4, 5, 6, 7], (2, 2, 3)), "b": img([4, 5, 6, 7], (1, 1, 3))}
    )
    assert ids2.tolist() == [2, 3, 4, 5] and int(fs.count) == 6
    assert alive(fs, jnp.arange(7)).tolist() == [False, True, True, True, True, True, False]
    assert read(fs, jnp.array([5]))["a"][0, 0, 0, 0] == 7  # id 5 overwrote id 0
    assert int(stale_count(fs, jnp.array([0, 1, 5, 0]), jnp.array(3))) == 1
    with pytest.raises(ValueError, match="cameras"):
        store.write(fs, {"a": img([1], (2, 2, 3))})
    with pytest.raises(ValueError, match="do not match"):
        store.write(fs, {"a": img([1], (2, 2, 3)), "b": img([1], (2, 2, 3))})
    assert frame_capacity(100, 3, 4, 0.25) == 125 + 32


def _loop(replay):
    base = FunctionBase(lambda o: -0.3 * o["state"], 2)
    learner = make_learner(CFG, TASK.observation_spec, 2)
    return SimLoop(TASK, base, learner, replay, num_envs=E)


@pytest.fixture(scope="module")
def runs():
    """The same run (keys, learner, envs) with frames stored once and twice; warm-up to fill
    the replay past its capacity, then a train chunk of updates."""
    norm = Normalizer(
        obs=StateStandardizer.identity(2),
        action=ActionScaler.from_bounds(TASK.action_low, TASK.action_high, CFG.action_scale),
    )
    out = {}
    for once in (True, False):
        loop = _loop(dataclasses.replace(REPLAY, frame_once=once))
        ls = loop.init(jax.random.PRNGKey(0), loop.learner.init(jax.random.PRNGKey(1), norm))
        ls, wstats = jax.jit(lambda s: loop.warmup(s, 60))(ls)
        ls, tstats = jax.jit(lambda s: loop.train(s, None, 6))(ls)
        out[once] = (loop, ls, wstats, tstats)
    return out


@pytest.mark.slow
def test_frames_stored_once_give_the_same_transitions_and_learning(runs):
    loop, once, wstats, tstats = runs[True]
    _, twice, _, _ = runs[False]
    assert loop.frame_once and int(wstats["episodes"]) > 2 * E  # episodes ended and reset
    rs, rt = once.replay_state, twice.replay_state
    assert int(rs.size) == int(rt.size) == REPLAY.capacity  # the ring wrapped
    assert rs.data.obs["top"].dtype == jnp.int32 and rs.frames.frames["top"].dtype == jnp.uint8
    for field in ("obs", "next_obs"):
        got = resolve(getattr(rs.data, field), rs.frames)
        want = getattr(rt.data, field)
        np.testing.assert_array_equal(got["top"], want["top"])  # every frame exact
        np.testing.assert_array_equal(got["state"], want["state"])
    np.testing.assert_array_equal(rs.data.reward, rt.data.reward)
    # sampled batches, and so the updates, are the same
    k = jax.random.PRNGKey(5)
    a, b = loop.buffer.sample(rs, k, (3, 8)), loop.buffer.sample(rt, k, (3, 8))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6),
        once.learner_state.critic_params,
        twice.learner_state.critic_params,
    )
    assert int(tstats["stale_frames_max"]) == 0 and int(wstats["stale_frames_max"]) == 0
    # memory: frames kept per transition (incl. the n-step windows) against two per transition
    frame_bytes = 32 * 32 * 3
    nbytes = lambda t: sum(x.nbytes for x in jax.tree.leaves(t))
    stored_once = nbytes(rs) + nbytes(once.writer_state)
    stored_twice = nbytes(rt) + nbytes(twice.writer_state)
    assert stored_once < 0.75 * stored_twice
    assert rs.frames.capacity == frame_capacity(160, 3, E) < 2 * 160 * frame_bytes


def test_an_undersized_frame_ring_is_reported():
    # frame_margin 0: the ring holds capacity + the windows, too few with 4-step episodes
    norm = Normalizer(
        obs=StateStandardizer.identity(2),
        action=ActionScaler.from_bounds(TASK.action_low, TASK.action_high, CFG.action_scale),
    )
    loop = _loop(dataclasses.replace(REPLAY, frame_margin=0.0, capacity=128, n_step=1))
    ls = loop.init(jax.random.PRNGKey(0), loop.learner.init(jax.random.PRNGKey(1), norm))
    _, stats = jax.jit(lambda s: loop.warmup(s, 60))(ls)
    assert int(stats["stale_frames_max"]) > 0
