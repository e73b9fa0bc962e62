"""Chunk-queue semantics of ChunkedBase: order, refill, execution horizon, reset at every
episode end, per-env independence, temporal ensembling, jit/scan/vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resfit_jax.base.policy import ChunkedBase

K, A = 4, 2


def _predict(obs):
    """Chunk whose action j is [100 * obs_id + j, -j]: tells which query and position."""
    j = jnp.arange(K, dtype=jnp.float32)
    first = 100.0 * obs[:, :1] + j[None]
    return jnp.stack([first, jnp.broadcast_to(-j, first.shape)], -1)


def _run(base, obs_ids, dones=None):
    """Step through obs ids [T, E]; dones [T, E] are applied (reset) BEFORE each step."""
    t_len, e = obs_ids.shape
    dones = np.zeros((t_len, e), bool) if dones is None else dones

    @jax.jit
    def run(obs_ids, dones):
        def body(q, x):
            ids, d = x
            q = base.reset(q, d)
            a, q = base.step(q, ids[:, None].astype(jnp.float32))
            return q, a[:, 0]

        return jax.lax.scan(body, base.init_state(e), (obs_ids, dones))[1]

    return np.asarray(run(jnp.asarray(obs_ids), jnp.asarray(dones)))


def test_order_and_refill():
    base = ChunkedBase(_predict, A, K)
    ids = np.arange(10)[:, None]  # obs id = step index
    out = _run(base, ids)[:, 0]
    # chunk from obs 0 for steps 0-3, from obs 4 for 4-7, from obs 8 for 8-9
    np.testing.assert_array_equal(out, [0, 1, 2, 3, 400, 401, 402, 403, 800, 801])


def test_execution_horizon():
    base = ChunkedBase(_predict, A, K, execution_horizon=2)
    out = _run(base, np.arange(6)[:, None])[:, 0]
    np.testing.assert_array_equal(out, [0, 1, 200, 201, 400, 401])
    with pytest.raises(ValueError, match="execution_horizon"):
        ChunkedBase(_predict, A, K, execution_horizon=K + 1)


def test_reset_on_any_episode_end_and_per_env_independence():
    base = ChunkedBase(_predict, A, K)
    ids = np.tile(np.arange(8)[:, None], (1, 3))
    dones = np.zeros((8, 3), bool)
    dones[2, 1] = True  # env 1's episode ended (success) before step 2
    dones[5, 2] = True  # env 2's episode ended (timeout) before step 5
    out = _run(base, ids, dones)
    np.testing.assert_array_equal(out[:, 0], [0, 1, 2, 3, 400, 401, 402, 403])
    np.testing.assert_array_equal(out[:, 1], [0, 1, 200, 201, 202, 203, 600, 601])
    np.testing.assert_array_equal(out[:, 2], [0, 1, 2, 3, 400, 500, 501, 502])


def test_temporal_ensemble_matches_brute_force():
    m = 0.3
    base = ChunkedBase(_predict, A, K, temporal_ensemble=m)
    t_len = 7
    ids = np.arange(t_len)[:, None] * 1.0
    dones = np.zeros((t_len, 1), bool)
    dones[4, 0] = True
    out = _run(base, ids.astype(np.int32), dones)[:, 0]
    expect, start = [], 0
    for t in range(t_len):
        if dones[t, 0]:
            start = t
        ages = [i for i in range(K) if t - i >= start]
        w = np.array([np.exp(m * i) for i in ages])
        preds = np.array([100.0 * (t - i) + i for i in ages])
        expect.append((w * preds).sum() / w.sum())
    np.testing.assert_allclose(out, expect, rtol=1e-6)


def test_vmap_over_seeds_and_shape_errors():
    base = ChunkedBase(_predict, A, K)
    q = jax.vmap(lambda _: base.init_state(2))(jnp.arange(3))
    obs = jnp.arange(6, dtype=jnp.float32).reshape(3, 2, 1)
    a, q2 = jax.vmap(base.step)(q, obs)
    assert a.shape == (3, 2, A)
    np.testing.assert_array_equal(np.asarray(a[..., 0]), 100 * np.arange(6).reshape(3, 2))
    bad = ChunkedBase(lambda o: jnp.zeros((o.shape[0], K + 1, A)), A, K)
    with pytest.raises(ValueError, match=r"expected \(2, 4, 2\)"):
        bad.step(bad.init_state(2), jnp.zeros((2, 1)))


def test_query_blocks_give_the_full_batch_result_and_query_only_empty_queues():
    """Refilling in blocks of rows (any block size, jit, scan and vmap over seeds) gives the
    actions of one pass over all envs; the predictor only sees blocks of the block size."""
    e, t_len = 13, 12
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, (t_len, e))
    dones = rng.random((t_len, e)) < 0.2
    shapes = []

    def recording(obs):
        shapes.append(obs.shape[0])
        return _predict(obs)

    full = _run(ChunkedBase(_predict, A, K, query_block=e), ids, dones)
    for block in (1, 3, None):
        shapes.clear()
        base = ChunkedBase(recording, A, K, query_block=block)
        np.testing.assert_array_equal(_run(base, ids, dones), full)
        assert set(shapes) == {base.block_size(e)} and base.block_size(e) < e
    assert ChunkedBase(_predict, A, K).block_size(e) == 8  # 2 x ceil(13 / 4)

    # vmapped over seeds with different episode ends: each seed as if run alone
    base = ChunkedBase(_predict, A, K, query_block=2)
    seeds_dones = np.stack([dones, dones[::-1]])

    @jax.jit
    @jax.vmap
    def run(d):
        def body(q, x):
            ids_t, d_t = x
            a, q = base.step(base.reset(q, d_t), ids_t[:, None].astype(jnp.float32))
            return q, a[:, 0]

        return jax.lax.scan(body, base.init_state(e), (jnp.asarray(ids), d))[1]

    out = np.asarray(run(jnp.asarray(seeds_dones)))
    np.testing.assert_array_equal(out[0], full)
    np.testing.assert_array_equal(
        out[1], _run(ChunkedBase(_predict, A, K, query_block=e), ids, seeds_dones[1])
    )
    with pytest.raises(ValueError, match="query_block"):
        ChunkedBase(_predict, A, K, query_block=0)


def test_one_env_runs_the_predictor_only_when_a_chunk_starts():
    """With E = 1 (a robot) a host predictor is called once per chunk, not every step."""
    from resfit_jax.base.callback import host_callback_base

    calls = []

    def host(obs):
        calls.append(obs.shape)
        return np.asarray(_predict(jnp.asarray(obs)))

    base = host_callback_base(host, 1, A, chunk_size=K)
    calls.clear()  # the constructor's own shape probe
    out = _run(base, np.arange(10)[:, None])[:, 0]
    np.testing.assert_array_equal(out, [0, 1, 2, 3, 400, 401, 402, 403, 800, 801])
    assert len(calls) == 3  # steps 0, 4 and 8
