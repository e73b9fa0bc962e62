"""n-step writer against a brute-force reference; ring buffer and symmetric sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resfit_jax.replay import NStepWriter, ReplayBuffer, ReplayConfig, make_mixer, transition_spec

OBS_DIM, ACT_DIM = 3, 2


def random_streams(rng, num_envs, num_steps, p_term=0.08, p_trunc=0.05):
    """Random multi-stream data: obs[t] -> next_obs[t]; episode ends at random steps."""
    obs = rng.normal(size=(num_steps, num_envs, OBS_DIM)).astype(np.float32)
    next_obs = rng.normal(size=(num_steps, num_envs, OBS_DIM)).astype(np.float32)
    base = rng.uniform(-1, 1, size=(num_steps, num_envs, ACT_DIM)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(num_steps, num_envs, ACT_DIM)).astype(np.float32)
    next_base = rng.uniform(-1, 1, size=(num_steps, num_envs, ACT_DIM)).astype(np.float32)
    rew = rng.uniform(0, 1, size=(num_steps, num_envs)).astype(np.float32)
    u = rng.uniform(size=(num_steps, num_envs))
    term = u < p_term
    trunc = (u >= p_term) & (u < p_term + p_trunc)
    return obs, base, act, rew, next_obs, next_base, term, trunc


def brute_force(data, n, gamma, bootstrap_truncation):
    """All n-step transitions a stream produces, keyed by (env, start step)."""
    obs, base, act, rew, next_obs, next_base, term, trunc = data
    T, E = rew.shape
    out = {}
    for e in range(E):
        # episode boundaries of this stream
        start = 0
        for t in range(T):
            if term[t, e] or trunc[t, e] or t == T - 1:
                end = t  # inclusive last step of the episode (or of the data)
                ended = bool(term[t, e] or trunc[t, e])
                for s in range(start, end + 1):
                    last = s + n - 1
                    if last <= end and not (last == end and ended):
                        # full window, episode continues past it (or ends exactly at it: below)
                        k, ns, nonterm = n, last, 1.0
                    elif ended:
                        k, ns = end - s + 1, end
                        if term[end, e]:
                            nonterm = 0.0
                        else:
                            nonterm = 1.0 if bootstrap_truncation else 0.0
                    else:
                        continue  # window not finished within the data
                    if last <= end and not ended and last > end:
                        continue
                    R = sum(gamma**i * rew[s + i, e] for i in range(k))
                    out[(e, s)] = dict(
                        obs=obs[s, e],
                        base_action=base[s, e],
                        action=act[s, e],
                        reward=R,
                        discount=gamma**k,
                        nonterminal=nonterm,
                        next_obs=next_obs[ns, e],
                        next_base_action=next_base[ns, e],
                    )
                start = t + 1
    return out


@pytest.mark.parametrize("n,bootstrap", [(1, True), (3, True), (3, False), (5, True)])
def test_nstep_matches_brute_force(n, bootstrap):
    rng = np.random.default_rng(n + 10 * bootstrap)
    E, T, gamma = 4, 60, 0.97
    data = random_streams(rng, E, T)
    writer = NStepWriter(n=n, gamma=gamma, bootstrap_truncation=bootstrap)
    state = writer.init(E, jax.ShapeDtypeStruct((OBS_DIM,), jnp.float32), ACT_DIM)
    step = jax.jit(writer.step)
    got = {}
    ep_start = np.zeros(E, int)
    for t in range(T):
        args = [jnp.asarray(x[t]) for x in data]
        state, cands, valid = step(state, *args)
        valid = np.asarray(valid)
        for e in range(E):
            for j in range(n):
                if valid[e, j]:
                    # slot j covers n - j steps ending at t when the episode ended, else n
                    s = t - (n - 1) + j
                    assert (e, s) not in got
                    got[(e, s)] = jax.tree.map(lambda x: np.asarray(x[e, j]), cands)
        done = data[6][t] | data[7][t]
        ep_start = np.where(done, t + 1, ep_start)
    # transitions still inside the window at the end of the data are not emitted yet
    want = brute_force(data, n, gamma, bootstrap)
    pending = {
        (e, s)
        for (e, s) in want
        if s + n - 1 > T - 1 and not any(data[6][t, e] or data[7][t, e] for t in range(s, T))
    }
    for key in pending:
        want.pop(key)
    assert set(got) == set(want)
    for key, w in want.items():
        g = got[key]
        for field, v in w.items():
            np.testing.assert_allclose(
                getattr(g, field), v, rtol=1e-5, atol=1e-6, err_msg=f"{field} at {key}"
            )


def test_nstep_slot_start_matches_episode_start():
    """A window never mixes two episodes: after an end, the next transition starts fresh."""
    writer = NStepWriter(n=3, gamma=0.9)
    state = writer.init(1, jax.ShapeDtypeStruct((1,), jnp.float32), 1)
    z = jnp.zeros((1, 1))
    emitted = []
    for t, (term, trunc) in enumerate([(0, 0), (1, 0), (0, 0), (0, 0), (0, 0), (0, 0)]):
        state, c, v = writer.step(
            state,
            jnp.full((1, 1), float(t)),
            z,
            z,
            jnp.ones((1,)),
            jnp.full((1, 1), t + 1.0),
            z,
            jnp.array([bool(term)]),
            jnp.array([bool(trunc)]),
        )
        emitted += [
            (float(c.obs[0, j, 0]), float(c.next_obs[0, j, 0]), float(c.reward[0, j]))
            for j in range(3)
            if v[0, j]
        ]
    # episode 1 = steps 0, 1 (terminated); episode 2 = steps 2.. (3-step windows)
    assert emitted == [
        (0.0, 2.0, pytest.approx(1.9)),
        (1.0, 2.0, 1.0),
        (2.0, 5.0, pytest.approx(2.71)),
        (3.0, 6.0, pytest.approx(2.71)),
    ]


def _items(m, value):
    spec = transition_spec(jax.ShapeDtypeStruct((OBS_DIM,), jnp.float32), ACT_DIM)
    return jax.tree.map(lambda s: jnp.full((m,) + s.shape, value, s.dtype), spec)


def test_ring_buffer_masked_insert_wraps():
    buf = ReplayBuffer(capacity=5)
    spec = transition_spec(jax.ShapeDtypeStruct((OBS_DIM,), jnp.float32), ACT_DIM)
    state = buf.init(spec)
    items = _items(4, 0.0).replace(reward=jnp.arange(4.0))
    state = buf.add(state, items, jnp.array([True, False, True, True]))
    assert int(state.size) == 3 and int(state.insert_index) == 3
    np.testing.assert_array_equal(state.data.reward[:3], [0.0, 2.0, 3.0])
    state = buf.add(state, items.replace(reward=jnp.arange(10.0, 14.0)))
    assert int(state.size) == 5 and int(state.insert_index) == 2
    np.testing.assert_array_equal(state.data.reward, [12.0, 13.0, 3.0, 10.0, 11.0])


def test_uint8_fields_keep_their_dtype():
    spec = transition_spec(
        {
            "pixels": jax.ShapeDtypeStruct((4, 4, 3), jnp.uint8),
            "state": jax.ShapeDtypeStruct((2,), jnp.float32),
        },
        ACT_DIM,
    )
    buf = ReplayBuffer(8)
    state = buf.init(spec)
    assert state.data.obs["pixels"].dtype == jnp.uint8
    items = jax.tree.map(lambda s: jnp.ones((2,) + s.shape, s.dtype) * 7, spec)
    state = buf.add(state, items)
    sample = buf.sample(state, jax.random.key(0), (3, 2))
    assert sample.obs["pixels"].dtype == jnp.uint8 and sample.obs["pixels"].shape == (3, 2, 4, 4, 3)
    assert int(sample.obs["pixels"].max()) == 7


def test_add_rejects_too_many_candidates():
    buf = ReplayBuffer(3)
    state = buf.init(transition_spec(jax.ShapeDtypeStruct((OBS_DIM,), jnp.float32), ACT_DIM))
    with pytest.raises(ValueError, match="exceed capacity"):
        buf.add(state, _items(4, 1.0))


def test_mixer_sampling_shapes_and_sources():
    buf_on, buf_off = ReplayBuffer(16), ReplayBuffer(16)
    spec = transition_spec(jax.ShapeDtypeStruct((OBS_DIM,), jnp.float32), ACT_DIM)
    on = buf_on.add(buf_on.init(spec), _items(10, 1.0))
    off = buf_off.add(buf_off.init(spec), _items(10, -1.0))
    mixer = make_mixer(buf_on, buf_off, 256, 0.5, steps=4)
    a, b = jax.jit(mixer.sample)(jax.random.key(0), on, off)
    assert a.reward.shape == (4, 128) and b.obs.shape == (4, 128, OBS_DIM)
    assert bool(mixer.can_sample(on, off))
    assert bool(jnp.all(a.reward == 1.0)) and bool(jnp.all(b.reward == -1.0))
    # samples cover only the filled part of the buffer
    idx_on = jax.random.randint(jax.random.key(1), (1000,), 0, 10)
    assert int(idx_on.max()) == 9
    a, b = make_mixer(buf_on, None, 64, 0.5, steps=2).sample(jax.random.key(0), on, None)
    assert a.reward.shape == (2, 64) and b is None
    # the replay config builds the same mixer: B_off = round(B * fraction), B_on = the rest
    cfg = ReplayConfig(utd=3, batch_size=10, offline_fraction=0.3, capacity=16)
    m = cfg.mixer(buf_off)
    assert (m.steps, m.online_batch, m.offline_batch) == (3, 7, 3)
    assert cfg.mixer(None).offline_batch == 0 and cfg.mixer(buf_off, steps=1).steps == 1
    with pytest.raises(ValueError, match="pass the offline"):
        m.sample(jax.random.key(0), on, None)
    with pytest.raises(ValueError, match="offline_fraction must be in"):
        ReplayConfig(offline_fraction=1.0)
    w = cfg.writer()
    assert (w.n, w.gamma, w.bootstrap_truncation) == (cfg.n_step, cfg.gamma, True)
    assert cfg.demo_writer().n == cfg.n_step
    assert ReplayConfig(n_step=10, demo_n_step=3).demo_writer().n == 3
