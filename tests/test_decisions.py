"""The semi-MDP residual: the decision-window writer against hand-computed episodes and the
n-step writer, demo windows, the held decision online and in evaluation, k = 1 as the
per-step learner bit for bit, and the config's checks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resfit_jax import envs
from resfit_jax.agents.residual_td3 import ResidualTD3Config
from resfit_jax.base.features import Offsets
from resfit_jax.base.policy import ChunkedBase
from resfit_jax.base.residual import ResidualPolicy
from resfit_jax.data.demos import collect_episodes, make_rollout
from resfit_jax.envs.point_reach import biased_base_action
from resfit_jax.normalization import ActionScaler, Normalizer, StateStandardizer
from resfit_jax.replay import DecisionWriter, EpisodeDecisionWriter, NStepWriter, ReplayConfig
from resfit_jax.replay.decision_demos import demo_windows
from resfit_jax.sim.config import ResidualOptions, TrainConfig
from resfit_jax.sim.trainer import make_trainer, train_residual

G = 0.9
TASK = envs.PointReach(episode_length=20)
H = 4  # the test base's chunk


def chunk_base(horizon: int = H) -> ChunkedBase:
    """The biased PointReach controller, its action repeated over a chunk of ``horizon``."""
    return ChunkedBase(
        lambda o: jnp.repeat(biased_base_action(o[..., :4])[:, None], horizon, axis=1), 2, horizon
    )


def _stream(writer, steps, flags=None):
    """Feed per-step dicts to a writer; returns the valid emitted transitions per step."""
    e = steps[0]["reward"].shape[0]
    state = writer.init(e, jax.ShapeDtypeStruct((1,), jnp.float32), 1)
    out = []
    for i, s in enumerate(steps):
        kw = {} if flags is None else flags[i]
        state, cands, valid = writer.step(state, *[jnp.asarray(s[k]) for k in ARGS], **kw)
        valid = np.asarray(valid)
        out.append(
            [jax.tree.map(lambda x: np.asarray(x)[idx], cands) for idx in zip(*np.where(valid))]
        )
    return out


ARGS = ("obs", "ab", "a", "reward", "next_obs", "nab", "term", "trunc")


def _step(t, e, reward, term, trunc):
    obs = np.full((e, 1), float(t), np.float32)
    return {
        "obs": obs,
        "ab": obs * 0.1,
        "a": obs * 0.2,
        "reward": np.asarray(reward, np.float32),
        "next_obs": obs + 1.0,
        "nab": (obs + 1.0) * 0.1,
        "term": np.asarray(term, bool),
        "trunc": np.asarray(trunc, bool),
    }


@pytest.mark.parametrize("n", [1, 3])
def test_every_step_a_decision_is_the_nstep_writer(n):
    rng = np.random.default_rng(0)
    e, t_len = 3, 40
    steps = []
    for t in range(t_len):
        end = rng.random(e) < 0.12
        term = end & (rng.random(e) < 0.5)
        steps.append(_step(t, e, rng.normal(size=e), term, end & ~term))
    ours = _stream(DecisionWriter(n, G), steps)
    ref = _stream(NStepWriter(n, G), steps)
    assert sum(map(len, ref)) > 30
    for a, b in zip(ours, ref):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y)):
                if n == 1:
                    np.testing.assert_array_equal(u, v)
                else:
                    np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bootstrap", [True, False])
def test_a_window_cut_by_success_or_time_limit_by_hand(bootstrap):
    """k = 4; env 0 succeeds at its 6th step (reward 1 there), env 1 hits its time limit
    after 6 steps (reward 0.5 at step 2): windows [0, 4) and [4, 6), the second with k' = 2."""
    k, e = 4, 2
    steps = [
        _step(
            t, e, [1.0 if t == 5 else 0.0, 0.5 if t == 2 else 0.0], [t == 5, False], [False, t == 5]
        )
        for t in range(6)
    ]
    flags = [
        {"opens": jnp.full((e,), t % k == 0), "closes": jnp.full((e,), (t + 1) % k == 0)}
        for t in range(6)
    ]
    out = _stream(DecisionWriter(1, G, bootstrap), steps, flags)
    assert [len(o) for o in out] == [0, 0, 0, 2, 0, 2]
    first, second = out[3], out[5]
    for x in first:  # env 0, then env 1
        assert x.obs[0] == 0.0 and x.next_obs[0] == 4.0 and x.action[0] == 0.0
        assert x.discount == pytest.approx(G**4) and x.nonterminal == 1.0
    assert first[0].reward == 0.0 and first[1].reward == pytest.approx(0.5 * G**2)
    s0, s1 = second
    assert s0.obs[0] == 4.0 and s0.next_obs[0] == 6.0 and s0.base_action[0] == pytest.approx(0.4)
    assert s0.reward == pytest.approx(G) and s0.discount == pytest.approx(G**2)
    assert s0.nonterminal == 0.0  # success inside the window: terminal
    assert s1.reward == 0.0 and s1.discount == pytest.approx(G**2)
    assert s1.nonterminal == (1.0 if bootstrap else 0.0)  # the time limit
    # two decisions per return: at the end both windows come out, the first spanning 6 steps
    out2 = _stream(DecisionWriter(2, G, bootstrap), steps, flags)
    assert [len(o) for o in out2] == [0, 0, 0, 0, 0, 4]
    got = {(i // 2, int(x.obs[0])): x for i, x in enumerate(out2[5])}  # (env, first step)
    assert all(x.next_obs[0] == 6.0 for x in got.values())
    w = got[(0, 0)]  # env 0, from step 0: 0 + G^4 * (G * 1)
    assert w.reward == pytest.approx(G**5) and w.discount == pytest.approx(G**6)
    w = got[(1, 0)]  # env 1, from step 0: 0.5 G^2 + G^4 * 0
    assert w.reward == pytest.approx(0.5 * G**2) and w.discount == pytest.approx(G**6)
    assert got[(0, 4)].reward == pytest.approx(G) and got[(0, 4)].discount == pytest.approx(G**2)


@pytest.mark.parametrize("bootstrap", [True, False])
def test_the_monte_carlo_bound_by_hand(bootstrap):
    """k = 2; env 0 succeeds at its 5th step, env 1 hits its time limit there: env 0's three
    decisions come out at the end with their return-to-go G^4, G^2, 1; env 1's with -inf."""
    k, e = 2, 2
    steps = [
        _step(t, e, [1.0 if t == 4 else 0.0, 0.0], [t == 4, False], [False, t == 4])
        for t in range(5)
    ]
    flags = [
        {"opens": jnp.full((e,), t % k == 0), "closes": jnp.full((e,), (t + 1) % k == 0)}
        for t in range(5)
    ]
    out = _stream(EpisodeDecisionWriter(4, G, bootstrap), steps, flags)
    assert [len(o) for o in out] == [0, 0, 0, 0, 6]
    env0, env1 = out[4][:3], out[4][3:]
    np.testing.assert_allclose([x.mc_return for x in env0], [G**4, G**2, 1.0], rtol=1e-6)
    np.testing.assert_allclose([x.reward for x in env0], [0.0, 0.0, 1.0])
    np.testing.assert_allclose([x.discount for x in env0], [G**2, G**2, G], rtol=1e-6)
    assert [x.nonterminal for x in env0] == [1.0, 1.0, 0.0]
    assert [float(x.obs[0]) for x in env0] == [0.0, 2.0, 4.0]
    assert [float(x.next_obs[0]) for x in env0] == [2.0, 4.0, 5.0]
    assert all(x.mc_return == -np.inf for x in env1)
    assert [x.nonterminal for x in env1] == [1.0, 1.0, 1.0 if bootstrap else 0.0]
    # the same transitions as the plain decision writer's, only later and with the bound
    plain = [x for o in _stream(DecisionWriter(1, G, bootstrap), steps, flags) for x in o]
    key = lambda x: (float(x.obs[0]), float(x.reward), float(x.nonterminal), float(x.next_obs[0]))
    assert sorted(map(key, plain)) == sorted(map(key, env0 + env1))


def test_an_episode_longer_than_the_writer_flushes_without_a_bound():
    e = 1
    steps = [_step(t, e, [0.0], [False], [False]) for t in range(3)]
    out = _stream(EpisodeDecisionWriter(2, G), steps)  # every step a decision
    assert [len(o) for o in out] == [0, 2, 0]
    assert all(x.mc_return == -np.inf for x in out[1])


def test_demo_windows_relabel_by_hand():
    """One 5-step demo, k = 2, a chunk base whose plan is [c, c + 0.1] around the frame's
    value c: windows [0,2), [2,4), [4,5); the held offset is the mean of demo - plan."""
    a_dim = 1
    base = ChunkedBase(
        lambda o: o[:, None, :1] + jnp.asarray([0.0, 0.1, 0.2, 0.3])[None, :, None], a_dim, 4
    )
    nz = Normalizer(
        obs=StateStandardizer(jnp.zeros((1,)), jnp.ones((1,))),
        action=ActionScaler(jnp.zeros((a_dim,)), jnp.ones((a_dim,))),  # identity
    )
    frames = np.asarray([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], np.float32)[None, :, None]  # [1, 6, 1]
    demo_a = np.asarray([0.05, 0.15, 0.2, 0.4, 0.9], np.float32)[None, :, None]
    padded = {
        "observation": jnp.asarray(frames),
        "action": jnp.asarray(demo_a),
        "reward": jnp.asarray([[0, 0, 0, 0, 1.0]]),
        "terminal": jnp.asarray([[False, False, False, False, True]]),
        "length": jnp.asarray([5]),
    }
    tr, valid = demo_windows(padded, base, nz, None, 2, G, True, "offset", bound=0.2)
    tr = jax.tree.map(lambda x: np.asarray(x[0]), tr)
    assert np.asarray(valid).tolist() == [[True] * 5]
    c = frames[0, :5, 0]
    np.testing.assert_allclose(tr.base_action[:, 0], c, atol=1e-6)
    # window t: demo a_t, a_t+1 against plan c_t, c_t + 0.1
    want = [
        np.mean(demo_a[0, t : t + 2, 0] - (c[t] + np.asarray([0.0, 0.1])[: 5 - t]))
        for t in range(5)
    ]
    np.testing.assert_allclose(tr.action[:, 0], c + np.clip(want, -0.2, 0.2), atol=1e-6)
    np.testing.assert_allclose(tr.reward, [0, 0, 0, G, 1.0], atol=1e-6)
    np.testing.assert_allclose(tr.discount, [G**2] * 4 + [G], atol=1e-6)
    np.testing.assert_array_equal(tr.nonterminal, [1, 1, 1, 0, 0])
    np.testing.assert_allclose(tr.next_obs[:, 0], [0.2, 0.3, 0.4, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(tr.next_base_action[:, 0], [0.2, 0.3, 0.4, 0.5, 0.5], atol=1e-6)
    base_tr, _ = demo_windows(padded, base, nz, None, 2, G, True, "base")
    np.testing.assert_allclose(np.asarray(base_tr.action[0, :, 0]), c, atol=1e-6)
    assert base_tr.mc_return is None
    mc_tr, _ = demo_windows(padded, base, nz, None, 2, G, True, mc_bound=True)
    np.testing.assert_allclose(mc_tr.mc_return[0], [G**4, G**3, G**2, G, 1.0], rtol=1e-6)
    failed = dict(padded, terminal=jnp.zeros_like(padded["terminal"]))
    mc_tr, _ = demo_windows(padded | failed, base, nz, None, 2, G, True, mc_bound=True)
    assert np.all(np.asarray(mc_tr.mc_return) == -np.inf)


def test_offset_slope_windows_by_hand():
    """The held coefficients (o, s) execute o + s * (2j / (k - 1) - 1) at window step j; the
    base in decision coordinates is (a_b, 0); only a semi-MDP window may have a slope."""
    off = Offsets.decisions(3, slope=True)
    assert off.decision_size(2) == 4 and Offsets.decisions(3).decision_size(2) == 2
    coef = jnp.asarray([[0.1, -0.2, 0.05, 0.3]])
    q = lambda index: chunk_base(6).init_state(1).replace(index=jnp.asarray([index]))
    for index, ramp in [(1, -1.0), (2, 0.0), (3, 1.0), (4, -1.0)]:  # popped steps 0, 1, 2, 3
        np.testing.assert_allclose(
            off.window_residual(coef, q(index)), [[0.1 + 0.05 * ramp, -0.2 + 0.3 * ramp]]
        )
    np.testing.assert_array_equal(off.decides(q(4)), [True])
    np.testing.assert_allclose(off.decision_base(jnp.asarray([[0.5, -0.5]])), [[0.5, -0.5, 0, 0]])
    with pytest.raises(ValueError, match="semi-MDP window shape"):
        Offsets(2.0, hold=True, slope=True)
    with pytest.raises(ValueError, match="set decision_steps > 1"):
        ResidualOptions(window="offset_slope")
    with pytest.raises(ValueError, match="window must be one of"):
        ResidualOptions(decision_steps=4, window="ramp")


def test_demo_windows_fit_offset_and_slope_by_least_squares():
    """k = 4: demo - plan on a line is fitted exactly (o its mean, s half its change);
    a window cut to one step by the episode's end gets s = 0; bounds clip both."""
    a_dim = 1
    base = ChunkedBase(lambda o: jnp.zeros((o.shape[0], 4, a_dim)), a_dim, 4)  # plan 0
    nz = Normalizer(
        obs=StateStandardizer(jnp.zeros((1,)), jnp.ones((1,))),
        action=ActionScaler(jnp.zeros((a_dim,)), jnp.ones((a_dim,))),
    )
    demo_a = np.asarray([0.0, 0.03, 0.06, 0.09, 0.5], np.float32)  # a line, then a jump
    padded = {
        "observation": jnp.zeros((1, 6, 1)),
        "action": jnp.asarray(demo_a)[None, :, None],
        "reward": jnp.asarray([[0, 0, 0, 0, 1.0]]),
        "terminal": jnp.asarray([[False, False, False, False, True]]),
        "length": jnp.asarray([5]),
    }
    tr, _ = demo_windows(padded, base, nz, None, 4, G, True, "offset", 0.2, slope=True)
    act, ab = np.asarray(tr.action[0]), np.asarray(tr.base_action[0])
    assert act.shape == (5, 2) and ab.shape == (5, 2)
    np.testing.assert_allclose(ab, 0.0)
    np.testing.assert_allclose(act[0], [0.045, 0.045], atol=1e-6)  # mean, half the change
    c = 2.0 * np.arange(4) / 3 - 1
    for t in range(1, 4):  # cut windows: the least-squares line through their steps
        d = demo_a[t:5]
        A = np.stack([np.ones(len(d)), c[: len(d)]], axis=1)
        o, s = np.linalg.lstsq(A, d, rcond=None)[0]
        np.testing.assert_allclose(act[t], np.clip([o, s], -0.2, 0.2), atol=1e-5)
    np.testing.assert_allclose(act[4], [0.2, 0.0], atol=1e-6)  # one step: offset only, clipped
    np.testing.assert_allclose(np.asarray(tr.next_base_action[0]), 0.0)
    base_tr, _ = demo_windows(padded, base, nz, None, 4, G, True, "base", slope=True)
    np.testing.assert_allclose(np.asarray(base_tr.action[0]), 0.0)


# ------------------------------------------------------------------------- in training
LEARNER = ResidualTD3Config(
    actor_hidden_dims=(32, 32), critic_hidden_dims=(32, 32), num_critics=4, actor_lr=1e-4
)
CFG = TrainConfig(
    learner=LEARNER,
    replay=ReplayConfig(batch_size=32, utd=2, capacity=2048, gamma=G),
    num_envs=4,
    warmup_env_steps=64,
    critic_warmup_updates=20,
    critic_warmup_chunk=10,
    total_env_steps=128,
    steps_per_chunk=8,
    eval_every=64,
    eval_episodes=8,
)


@pytest.fixture(scope="module")
def demos():
    expert = envs.make_expert("PointReach", TASK, envs.ExpertStyle())
    eps, _ = collect_episodes(make_rollout(TASK, expert.init, expert.act), 8, 12)
    return eps


@pytest.mark.parametrize("n_step", [1, 3])
def test_k1_decisions_are_the_per_step_learner_bit_for_bit(demos, n_step):
    """The semi-MDP machinery (decision flags, the decision writer, the held-offset path)
    with a decision every step trains exactly the per-step learner."""
    cfg = CFG.replace(replay=dataclasses.replace(CFG.replay, n_step=n_step))
    from resfit_jax.agents.residual_td3 import make_learner  # the same, outside shard_map

    tr = make_trainer(TASK, chunk_base(), demos, cfg, seeds=[0])
    per_step = dataclasses.replace(
        tr.loop, learner=make_learner(cfg.learner, tr.loop.learner.obs_spec, 2)
    )
    semi = dataclasses.replace(per_step, offsets=Offsets.decisions(1))
    assert semi.semi_mdp and isinstance(semi.writer, DecisionWriter)
    assert semi.learner_obs_spec == per_step.learner_obs_spec

    def run(loop):
        ls = loop.init(
            jax.random.PRNGKey(3), loop.learner.init(jax.random.PRNGKey(4), tr.normalizer)
        )
        ls, _ = jax.jit(lambda s: loop.warmup(s, 16))(ls)
        ls, _ = jax.jit(lambda s, o: loop.critic_warmup(s, o, 5))(ls, tr.offline)
        ls, _ = jax.jit(lambda s, o: loop.train(s, o, 16))(ls, tr.offline)
        return ls

    a, b = run(per_step), run(semi)
    assert int(a.replay_state.size) == int(b.replay_state.size) > 0
    raw = lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    for x, y in zip(jax.tree.leaves(a.learner_state), jax.tree.leaves(b.learner_state)):
        np.testing.assert_array_equal(np.asarray(raw(x)), np.asarray(raw(y)))
    for x, y in zip(jax.tree.leaves(a.replay_state), jax.tree.leaves(b.replay_state)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _against_the_base(tr, ls, steps: int):
    """Roll the first seed's learner (actor nudged off zero) through ``ResidualPolicy`` next
    to the bare base from the same starts, 2 envs: (executed - base action, executed action,
    both normalized [steps, E, A]; done [steps, E])."""
    from resfit_jax.agents.residual_td3 import make_learner  # the same, outside shard_map

    loop, nz = tr.loop, tr.normalizer
    lrn = make_learner(
        loop.learner.config,
        loop.learner.obs_spec,
        loop.learner.action_dim,
        env_action_dim=loop.learner.env_action_dim,
    )
    lstate = jax.tree.map(lambda x: x[0], ls.learner_state)
    lstate = lstate.replace(actor_params=jax.tree.map(lambda p: p + 0.05, lstate.actor_params))
    policy = ResidualPolicy(loop.base, nz, lrn, lstate, loop.features, loop.offsets)
    bare = ResidualPolicy(loop.base, nz)
    env = envs.core.auto_reset_envs(TASK, 2)
    es, ps, bs = env.reset(jax.random.PRNGKey(0)), policy.init_state(2), bare.init_state(2)
    step_both = jax.jit(lambda ps, bs, o: (policy.step(ps, o), bare.step(bs, o)))
    diffs, actions, dones = [], [], []
    for _ in range(steps):
        (a, ps), (b, bs) = step_both(ps, bs, es.obs)
        actions.append(np.asarray(nz.normalize_action(a)))
        diffs.append(actions[-1] - np.asarray(nz.normalize_action(b)))
        es = env.step(es, a)
        dones.append(np.asarray(es.done))
    return np.stack(diffs), np.stack(actions), np.stack(dones)


@pytest.mark.parametrize("k, mc", [(4, False), (2, False), (4, True)])
def test_a_semi_mdp_run_decides_every_k_steps(demos, k, mc, tmp_path):
    """decision_steps k: the learner sees the observation, the base's plan for the k steps
    (and its chunk phase when k < the chunk), the replay holds one transition per decision
    (discount G^k except where an episode ends inside), the demo buffer one window per demo
    step, and the deterministic policy holds its correction for k steps; a run completes."""
    cfg = CFG.replace(
        residual=ResidualOptions(decision_steps=k, mc_bound=mc),
        replay=dataclasses.replace(CFG.replay, n_step=1),  # n_step counts decisions here
    )
    tr = make_trainer(TASK, chunk_base(), demos, cfg, seeds=[0])
    phase = int(k < H)
    assert tr.loop.learner.obs_dim == 4 + phase + (k - 1) * 2
    assert not tr.loop.learner.config.residual_mask
    assert int(tr.offline.size) == sum(ep.num_actions for ep in demos)
    ls, stats = tr.warmup(tr.init())
    size = int(ls.replay_state.size[0])
    d = jax.tree.map(lambda x: np.asarray(x[0, :size]), ls.replay_state.data)
    env_steps = cfg.env_steps_per_chunk  # one warm-up chunk
    if mc:  # stored when their episode ends: the finished episodes' decisions
        assert 0 < size <= env_steps // k + int(stats["episodes"][0])
        bound = d.mc_return
        assert np.all((bound == -np.inf) | ((bound >= 0) & (bound <= 1)))
        assert np.isfinite(bound).sum() > 0  # some successes
        off = jax.tree.map(lambda x: np.asarray(x[: int(tr.offline.size)]), tr.offline.data)
        assert np.isfinite(off.mc_return).mean() > 0.5  # the expert's demos succeed
    else:
        assert env_steps // k <= size <= env_steps // k + int(stats["episodes"][0])
    full = np.isclose(d.discount, G**k)
    assert full.mean() > 0.8
    assert np.all(d.nonterminal[~full] == 0.0) or cfg.replay.bootstrap_truncation
    # the plan in the observation: the base's next k - 1 actions (a repeated chunk here)
    plan = d.obs[:, 4 + phase :].reshape(size, k - 1, 2)
    np.testing.assert_allclose(plan[:, 0], d.base_action, atol=1e-5)
    # the deterministic policy decides at k-step boundaries and holds in between
    diffs, _, dones = _against_the_base(tr, ls, 12)  # [12, E, A], [12, E]
    checked = 0
    for e in range(2):
        for start in range(0, 12, k):
            if dones[:start, e].any():
                break  # a new episode restarts the decision clock
            window = diffs[start : start + k, e]
            np.testing.assert_allclose(window, np.repeat(window[:1], len(window), 0), atol=1e-5)
            checked += 1
    assert checked >= 2 and np.abs(diffs).max() > 1e-3
    summary = train_residual(tr, str(tmp_path), progress=False, task_name="PointReach")
    assert summary["complete"] and summary["final"]["pooled"]["episodes"] == cfg.eval_episodes


@pytest.mark.parametrize("chunk_recipe", [False, True])
def test_offset_slope_windows_in_training_and_evaluation(demos, chunk_recipe, tmp_path):
    """window="offset_slope": replay and demo windows hold 2A-entry decisions against the
    base (a_b, 0); the deterministic policy executes a straight line over each window
    (a ramp that changes within it); a run completes, also with the chunk recipe's options
    (Monte-Carlo bound, advantage head, pessimistic actor)."""
    k = 4
    cfg = CFG.replace(
        residual=ResidualOptions(decision_steps=k, window="offset_slope", mc_bound=chunk_recipe),
        replay=dataclasses.replace(CFG.replay, n_step=1),
    )
    if chunk_recipe:
        cfg = cfg.replace(
            learner=dataclasses.replace(cfg.learner, advantage_head=True, actor_pessimism=1.0)
        )
    tr = make_trainer(TASK, chunk_base(), demos, cfg, seeds=[0])
    loop = tr.loop
    assert loop.slope and loop.decision_size == 4 and loop.learner.action_dim == 4
    ls, _ = tr.warmup(tr.init())
    size = int(ls.replay_state.size[0])
    d = jax.tree.map(lambda x: np.asarray(x[0, :size]), ls.replay_state.data)
    assert d.action.shape == (size, 4) and size > 0  # mc_bound: only finished episodes
    assert chunk_recipe or size >= cfg.env_steps_per_chunk // k
    np.testing.assert_array_equal(d.base_action[:, 2:], 0.0)
    assert 0 < np.abs(d.action[:, 2:]).max() <= cfg.warmup_noise + 1e-6  # noise on the slope
    off = jax.tree.map(lambda x: np.asarray(x[: int(tr.offline.size)]), tr.offline.data)
    assert off.action.shape[-1] == 4 and np.abs(off.action[:, 2:]).max() > 0
    diffs, actions, _ = _against_the_base(tr, ls, 8)  # [8, E, A]: two windows, no ends
    clipped = np.abs(actions) > 1 - 1e-5
    lines = 0
    for start in (0, k):
        w, free = diffs[start : start + k], ~clipped[start : start + k].any(axis=0)  # [E, A]
        np.testing.assert_allclose(np.diff(w, n=2, axis=0)[:, free], 0.0, atol=1e-5)  # a line
        assert np.abs(w[-1] - w[0])[free].min() > 1e-3  # that changes over the window
        lines += int(free.sum())
    assert lines >= 4
    summary = train_residual(tr, str(tmp_path), progress=False, task_name="PointReach")
    assert summary["complete"]


def test_the_config_names_what_is_wrong(demos):
    with pytest.raises(ValueError, match="must divide the base's execution horizon"):
        make_trainer(
            TASK, chunk_base(), demos, CFG.replace(residual=ResidualOptions(decision_steps=3)), [0]
        )
    with pytest.raises(ValueError, match="turn hold and offset_bound off"):
        ResidualOptions(decision_steps=4, hold=True)
    with pytest.raises(ValueError, match="demo_relabel"):
        ResidualOptions(decision_steps=4, demo_relabel="mean")
    with pytest.raises(ValueError, match="decision_steps"):
        CFG.replace(method="rlpd", residual=ResidualOptions(decision_steps=4))
    with pytest.raises(ValueError, match="mc_bound is an option of the semi-MDP"):
        ResidualOptions(mc_bound=True)
    with pytest.raises(ValueError, match="set replay.n_step=1"):
        CFG.replace(residual=ResidualOptions(decision_steps=4, mc_bound=True))


def _small_learner(**overrides):
    """A 5-dim-observation, 2-dim-action learner with identity normalization, initialised."""
    from resfit_jax.agents.residual_td3 import make_learner

    lrn = make_learner(
        dataclasses.replace(LEARNER, **overrides), jax.ShapeDtypeStruct((5,), jnp.float32), 2
    )
    nz = Normalizer(
        obs=StateStandardizer(jnp.zeros((5,)), jnp.ones((5,))),
        action=ActionScaler(jnp.zeros((2,)), jnp.ones((2,))),
    )
    return lrn, nz, lrn.init(jax.random.PRNGKey(0), nz)


def test_the_action_gap_is_what_the_critic_says_the_residual_changes():
    """The actor step's ``action_gap``: mean_b |mean_k Q_k(s, a_b + r) - mean_k Q_k(s, a_b)|,
    0 while the residual is 0 (the zero-initialised actor)."""
    from resfit_jax.replay import Transition

    lrn, nz, state = _small_learner()
    ks = jax.random.split(jax.random.PRNGKey(1), 3)
    obs, a_b = jax.random.normal(ks[0], (16, 5)), jax.random.uniform(ks[1], (16, 2), minval=-0.5)
    batch = Transition(obs, a_b, a_b, jnp.zeros(16), jnp.ones(16), jnp.ones(16), obs, a_b)
    _, aux = lrn.losses.actor_loss(state.actor_params, state.critic_params, nz, batch)
    assert float(aux["gap"]) == 0.0
    moved = jax.tree.map(lambda p: p + 0.1, state.actor_params)
    _, aux = lrn.losses.actor_loss(moved, state.critic_params, nz, batch)
    critic, actor = lrn.networks.critic, lrn.networks.actor
    r = actor.apply(moved, obs, a_b)
    q = lambda a: critic.apply(state.critic_params, obs, a).mean(axis=0)
    want = jnp.abs(q(jnp.clip(a_b + r, -1, 1)) - q(a_b)).mean()
    assert float(aux["gap"]) == pytest.approx(float(want), rel=1e-5) and float(want) > 0
    heads = critic.apply(state.critic_params, obs, jnp.clip(a_b + r, -1, 1)) - critic.apply(
        state.critic_params, obs, a_b
    )
    assert float(aux["gap_head_std"]) == pytest.approx(float(heads.std(axis=0).mean()), rel=1e-5)


def test_the_td_target_never_falls_below_the_monte_carlo_bound():
    from resfit_jax.replay import Transition

    lrn, nz, state = _small_learner()
    obs = jax.random.normal(jax.random.PRNGKey(1), (8, 5))
    a = jnp.zeros((8, 2))
    plain = Transition(obs, a, a, jnp.full(8, 0.1), jnp.full(8, G), jnp.ones(8), obs, a)
    y = np.asarray(lrn.td_target(state, plain, jax.random.PRNGKey(2), 0.0))
    mc = jnp.asarray([-np.inf, 5.0] * 4)
    y_mc = np.asarray(lrn.td_target(state, plain.replace(mc_return=mc), jax.random.PRNGKey(2), 0.0))
    np.testing.assert_array_equal(y_mc, np.maximum(y, np.asarray(mc)))


def test_the_advantage_head_is_exactly_v_at_the_base_action():
    """Q(s, a) = V(s, a_b) + A(s, a) - A(s, a_b): at r = 0 every head is V exactly; a
    correction moves Q through A only; the learner updates with it."""
    from resfit_jax.networks import AdvantageCritic, EnsembleCritic
    from resfit_jax.replay import Transition

    lrn, nz, state = _small_learner(advantage_head=True)
    assert isinstance(lrn.critic, AdvantageCritic)
    ks = jax.random.split(jax.random.PRNGKey(1), 3)
    obs = jax.random.normal(ks[0], (16, 5))
    a_b = jax.random.uniform(ks[1], (16, 2), minval=-0.5, maxval=0.5)
    value = EnsembleCritic(LEARNER.num_critics, LEARNER.critic_hidden_dims)
    v = value.apply({"params": {"heads": state.critic_params["params"]["value"]}}, obs, a_b)
    q0 = lrn.q_values(state, obs, a_b, a_b)
    np.testing.assert_array_equal(np.asarray(q0), np.asarray(v))
    q1 = lrn.q_values(state, obs, a_b + 0.1, a_b)
    assert np.abs(np.asarray(q1 - q0)).min() > 0
    with pytest.raises(ValueError, match="needs the base action"):
        lrn.q_values(state, obs, a_b)
    batch = Transition(obs, a_b, a_b + 0.05, jnp.ones(16), jnp.full(16, G), jnp.ones(16), obs, a_b)
    rows = jax.tree.map(lambda x: jnp.stack([x, x]), batch)  # [UTD=2, B]
    new, metrics = jax.jit(lrn.update)(state, rows, None)
    assert np.isfinite(float(metrics["critic_loss"])) and int(new.critic_steps) == 2


def test_a_pessimistic_actor_discounts_what_the_heads_disagree_on():
    """actor_pessimism = c: the actor's loss is the mean-Q loss plus c * mean_b std_k of the
    heads' advantage of r (c * 1e-4, the sqrt's epsilon, at r = 0)."""
    from resfit_jax.replay import Transition

    lrn, nz, state = _small_learner()
    sceptic, _, _ = _small_learner(actor_pessimism=2.0)
    ks = jax.random.split(jax.random.PRNGKey(1), 3)
    obs, a_b = jax.random.normal(ks[0], (16, 5)), jax.random.uniform(ks[1], (16, 2), minval=-0.5)
    batch = Transition(obs, a_b, a_b, jnp.zeros(16), jnp.ones(16), jnp.ones(16), obs, a_b)
    moved = jax.tree.map(lambda p: p + 0.1, state.actor_params)
    plain, aux = lrn.losses.actor_loss(moved, state.critic_params, nz, batch)
    loss, _ = sceptic.losses.actor_loss(moved, state.critic_params, nz, batch)
    critic, actor = lrn.networks.critic, lrn.networks.actor
    r = actor.apply(moved, obs, a_b)
    heads = critic.apply(state.critic_params, obs, jnp.clip(a_b + r, -1, 1)) - critic.apply(
        state.critic_params, obs, a_b
    )
    want = 2.0 * jnp.sqrt(heads.var(axis=0) + 1e-8).mean()
    assert float(loss - plain) == pytest.approx(float(want), rel=1e-4) and float(want) > 1e-3
    zero, _ = sceptic.losses.actor_loss(state.actor_params, state.critic_params, nz, batch)
    zero_plain, _ = lrn.losses.actor_loss(state.actor_params, state.critic_params, nz, batch)
    assert float(zero - zero_plain) == pytest.approx(2.0 * 1e-4, rel=1e-3)
    with pytest.raises(ValueError, match="actor_pessimism must be >= 0"):
        _small_learner(actor_pessimism=-1.0)


def test_the_chunk_recipe_is_the_semi_mdp_residual_with_a_chunk_critic():
    from resfit_jax.sim.presets import preset, with_recipe

    per_step = preset("PickPlace", "cpu")
    assert with_recipe(per_step, "per_step") == per_step
    chunk = with_recipe(per_step, "chunk")
    r = chunk.residual
    assert (r.decision_steps, r.hold, r.base_phase, r.base_plan, r.mc_bound) == (
        20,
        False,
        False,
        0,
        True,
    )
    assert chunk.replay.n_step == 1 and chunk.learner.advantage_head
    assert chunk.learner.actor_pessimism == 1.0
    assert chunk.learner.actor_lr == per_step.learner.actor_lr  # the rest is the preset's
    with pytest.raises(ValueError, match="Unknown recipe 'fast'"):
        with_recipe(per_step, "fast")


@pytest.mark.parametrize("k", [1, 4])
def test_residual_dims_correct_only_their_entries(demos, k):
    """learner.residual_dims=(1,): the demos' relabelled corrections, the warm-up noise, the
    exploration and the trained actor all leave entry 0 at the base's action, per step and
    per decision window; entry 1 is corrected."""
    from resfit_jax.agents.residual_td3 import make_learner  # the same, outside shard_map

    cfg = CFG.replace(
        learner=dataclasses.replace(LEARNER, residual_dims=(1,)),
        residual=ResidualOptions(decision_steps=k),
        replay=dataclasses.replace(CFG.replay, n_step=1),
    )
    tr = make_trainer(TASK, chunk_base(), demos, cfg, seeds=[0])
    lrn = make_learner(cfg.learner, tr.loop.learner.obs_spec, 2)
    loop = dataclasses.replace(tr.loop, learner=lrn)
    off = jax.tree.map(lambda x: np.asarray(x[: int(tr.offline.size)]), tr.offline.data)
    np.testing.assert_allclose(off.action[:, 0], np.clip(off.base_action[:, 0], -1, 1), atol=1e-5)
    assert np.abs(off.action[:, 1] - off.base_action[:, 1]).max() > 1e-2
    ls = loop.init(jax.random.PRNGKey(3), lrn.init(jax.random.PRNGKey(4), tr.normalizer))
    ls, _ = jax.jit(lambda s: loop.warmup(s, 16))(ls)
    ls, _ = jax.jit(lambda s, o: loop.critic_warmup(s, o, 5))(ls, tr.offline)
    ls, _ = jax.jit(lambda s, o: loop.train(s, o, 32))(ls, tr.offline)
    size = int(ls.replay_state.size)
    d = jax.tree.map(lambda x: np.asarray(x[:size]), ls.replay_state.data)
    assert size > 0
    np.testing.assert_array_equal(d.action[:, 0], np.clip(d.base_action[:, 0], -1, 1))
    assert np.abs(d.action[:, 1] - d.base_action[:, 1]).max() > 1e-3
    obs = jax.tree.map(lambda x: x[:8], d.obs)
    nudged = ls.learner_state.replace(
        actor_params=jax.tree.map(lambda p: p + 0.05, ls.learner_state.actor_params)
    )
    for det in (True, False):
        r, aux = lrn.act(nudged, obs, d.base_action[:8], jax.random.PRNGKey(0), det)
        np.testing.assert_array_equal(np.asarray(r[:, 0]), 0.0)
        np.testing.assert_array_equal(np.asarray(aux["residual_mean"][:, 0]), 0.0)
        assert np.abs(np.asarray(r[:, 1])).min() > 0
    with pytest.raises(ValueError, match="outside the action's 2 entries"):
        make_learner(dataclasses.replace(LEARNER, residual_dims=(2,)), 5, 2)
    with pytest.raises(ValueError, match="residual_dims must be distinct"):
        dataclasses.replace(LEARNER, residual_dims=(1, 1))


def test_the_robot_runner_keeps_residual_dims_in_every_mode():
    """The robot loop's PolicyRunner: warm-up noise and exploration correct entry 1 only."""
    from resfit_jax.agents.residual_td3 import make_learner
    from resfit_jax.robot.learner import PolicyRunner

    lrn = make_learner(dataclasses.replace(LEARNER, residual_dims=(1,)), 4, 2)
    state = lrn.init(jax.random.PRNGKey(0))
    state = state.replace(actor_params=jax.tree.map(lambda p: p + 0.05, state.actor_params))
    base = ChunkedBase(lambda o: jnp.zeros((o.shape[0], H, 2)), 2, H)
    runner = PolicyRunner(base, lrn, lambda: state, jax.random.PRNGKey(1), warmup_noise=0.2)
    obs = np.array([0.1, -0.2, 0.3, 0.0], np.float32)
    for mode in ("warmup", "train", "eval"):
        runner.mode = mode
        runner.begin()
        r, _ = runner.act(obs, runner.base_action(obs))
        assert r[0] == 0.0 and abs(r[1]) > 0, (mode, r)
