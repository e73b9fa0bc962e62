"""Residual TD3 learner: TD target, scan vs loop, zero init, vmap over seeds, errors."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resfit_jax.agents.residual_td3 import ResidualTD3Config, make_learner
from resfit_jax.networks import QHead, ResidualActor
from resfit_jax.replay import Transition
from resfit_jax.run.checkpointing import to_storable  # typed keys -> their data, to compare

OBS, ACT, UTD, B = 5, 3, 3, 8
CFG = ResidualTD3Config(
    actor_hidden_dims=(32, 32),
    critic_hidden_dims=(32, 32),
    num_critics=4,
    num_min_critics=2,
    actor_lr=1e-3,
    critic_lr=1e-3,
)


def make_batch(key, steps=UTD, batch=B, obs_dim=OBS, act_dim=ACT):
    ks = jax.random.split(key, 8)
    u = lambda k, shape: jax.random.uniform(k, shape, minval=-1, maxval=1)
    return Transition(
        obs=jax.random.normal(ks[0], (steps, batch, obs_dim)),
        base_action=u(ks[1], (steps, batch, act_dim)) * 0.9,
        action=u(ks[2], (steps, batch, act_dim)),
        reward=(jax.random.uniform(ks[3], (steps, batch)) < 0.3).astype(jnp.float32),
        discount=jnp.full((steps, batch), 0.99**3),
        nonterminal=(jax.random.uniform(ks[4], (steps, batch)) < 0.8).astype(jnp.float32),
        next_obs=jax.random.normal(ks[5], (steps, batch, obs_dim)),
        next_base_action=u(ks[6], (steps, batch, act_dim)) * 0.9,
    )


@pytest.fixture(scope="module")
def learner():
    return make_learner(CFG, OBS, ACT)


@pytest.fixture(scope="module")
def batches():
    return make_batch(jax.random.key(1)), make_batch(jax.random.key(2))


@pytest.fixture(scope="module")
def trained(learner, batches):
    """A state after a few updates (non-zero actor, targets differ from online nets)."""
    state = learner.init(jax.random.key(0))
    update = jax.jit(learner.update)
    for _ in range(5):
        state, _ = update(state, *batches)
    return state


def test_residual_is_exactly_zero_at_init(learner):
    state = learner.init(jax.random.key(3))
    obs = jax.random.normal(jax.random.key(4), (16, OBS))
    a_b = jax.random.uniform(jax.random.key(5), (16, ACT), minval=-1, maxval=1)
    r, aux = learner.act(state, obs, a_b, jax.random.key(6), deterministic=True)
    assert bool(jnp.all(r == 0.0))
    np.testing.assert_array_equal(aux["action"], a_b)
    # stochastic acting adds only exploration noise of the configured size
    r, _ = learner.act(state, obs, a_b, jax.random.key(6))
    assert 0.02 < float(jnp.std(r)) < 0.08


def test_residual_is_bounded_by_action_scale(learner, trained):
    obs = 100.0 * jax.random.normal(jax.random.key(4), (64, OBS))
    a_b = jax.random.uniform(jax.random.key(5), (64, ACT), minval=-1, maxval=1)
    r, _ = learner.act(trained, obs, a_b, None, deterministic=True)
    assert float(jnp.abs(r).max()) <= CFG.action_scale + 1e-7
    assert float(jnp.abs(r).max()) > 0.0


def test_td_target_matches_reference(learner, trained, batches):
    """y = R + discount * nonterminal * min_{heads in subset} Q'_k(s', clip(a_b' + mu'(s', a_b')))
    with a random subset of heads."""
    batch = jax.tree.map(lambda x: x[0], batches[0])
    key = jax.random.key(11)
    y = learner.td_target(trained, batch, key, noise_std=0.0)
    # reference: heads evaluated one by one with their own params, subset from the same key
    actor = ResidualActor(ACT, CFG.actor_hidden_dims, CFG.action_scale)
    r_next = actor.apply(trained.target_actor_params, batch.next_obs, batch.next_base_action)
    a_next = np.clip(np.asarray(batch.next_base_action) + np.asarray(r_next), -1, 1)
    head = QHead(CFG.critic_hidden_dims)
    k_subset, _ = jax.random.split(key)
    subset = np.asarray(
        jax.random.choice(k_subset, CFG.num_critics, (CFG.num_min_critics,), replace=False)
    )
    qs = []
    for k in subset:
        params = {
            "params": jax.tree.map(lambda p: p[k], trained.target_critic_params["params"]["heads"])
        }
        qs.append(np.asarray(head.apply(params, batch.next_obs, a_next)))
    ref = np.asarray(batch.reward) + np.asarray(batch.discount) * np.asarray(
        batch.nonterminal
    ) * np.min(np.stack(qs), axis=0)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    # terminal transitions are exactly the reward
    term = np.asarray(batch.nonterminal) == 0
    np.testing.assert_allclose(np.asarray(y)[term], np.asarray(batch.reward)[term])
    # smoothing noise moves the target; its clip bounds how far
    y_noisy = learner.td_target(trained, batch, key, noise_std=0.05)
    assert not np.allclose(y, y_noisy)


def test_scanned_update_equals_python_loop(learner, trained, batches):
    online, offline = batches
    s_scan, m_scan = jax.jit(learner.update)(trained, online, offline)
    # the same computation unrolled by hand with the same keys
    batch = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=1), online, offline)
    rng, k_scan = jax.random.split(trained.rng)
    keys = jax.random.split(k_scan, UTD)
    s = trained
    losses = []
    for i in range(UTD):
        s, m = learner._critic_step(
            s, jax.tree.map(lambda x: x[i], batch), keys[i], CFG.exploration_std
        )
        losses.append(m["critic_loss"])
    s, am = learner._actor_step(s, jax.tree.map(lambda x: x[-1], batch))
    s = s.replace(rng=rng)
    chex.assert_trees_all_close(to_storable(s_scan), to_storable(s), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m_scan["critic_loss"], np.mean(losses), rtol=1e-5)
    np.testing.assert_allclose(m_scan["actor_loss"], am["actor_loss"], rtol=1e-5)
    assert int(s_scan.critic_steps) == int(trained.critic_steps) + UTD
    assert int(s_scan.actor_steps) == int(trained.actor_steps) + 1


def test_update_changes_networks_and_targets_move_by_tau(learner, batches):
    state = learner.init(jax.random.key(0))
    new, metrics = jax.jit(learner.update)(state, *batches)
    assert float(metrics["critic_grad_norm"]) > 0 and float(metrics["actor_grad_norm"]) > 0
    # after one actor step the residual is no longer identically zero
    leaf = lambda p: p["params"]["output"]["kernel"]
    assert float(jnp.abs(leaf(new.actor_params)).max()) > 0
    # Polyak: target = tau * online + (1 - tau) * old target (old target == old online here)
    tau = CFG.tau
    expect = jax.tree.map(
        lambda n, o: tau * n + (1 - tau) * o, new.actor_params, state.actor_params
    )
    chex.assert_trees_all_close(new.target_actor_params, expect, rtol=1e-5, atol=1e-7)


def test_fresh_state_can_be_donated(learner, batches):
    """No aliased buffers in a fresh state: donating it to a jitted update works."""
    state = learner.init(jax.random.key(0))
    new, _ = jax.jit(learner.update, donate_argnums=0)(state, *batches)
    assert int(new.critic_steps) == UTD


def test_release_loss_variant_differs(batches):
    rel = make_learner(dataclasses.replace(CFG, critic_loss="release"), OBS, ACT)
    mse = make_learner(CFG, OBS, ACT)
    s = mse.init(jax.random.key(0))
    _, m1 = mse.update(s, *batches)
    _, m2 = rel.update(s, *batches)
    assert not np.isclose(float(m1["critic_loss"]), float(m2["critic_loss"]))


def test_vmap_over_seeds_equals_separate_runs(learner, batches):
    keys = jax.random.split(jax.random.key(42), 3)
    update = jax.jit(learner.update)
    vupdate = jax.jit(jax.vmap(learner.update, in_axes=(0, None, None)))
    states = jax.vmap(learner.init)(keys)
    for _ in range(2):
        states, vm = vupdate(states, *batches)
    for i in range(3):
        s = learner.init(keys[i])
        for _ in range(2):
            s, m = update(s, *batches)
        # float32 reassociation in batched matmuls: ~1e-6; mixed-up seeds would differ by ~1e-1
        chex.assert_trees_all_close(
            to_storable(jax.tree.map(lambda x: x[i], states)), to_storable(s), rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(vm["critic_loss"][i], m["critic_loss"], rtol=1e-4)
    # different seeds really differ
    assert not np.allclose(
        states.critic_params["params"]["heads"]["Dense_0"]["kernel"][0],
        states.critic_params["params"]["heads"]["Dense_0"]["kernel"][1],
    )


def test_critic_warmup_leaves_actor_untouched(learner, trained, batches):
    new, metrics = jax.jit(learner.critic_warmup)(trained, *batches)
    chex.assert_trees_all_equal(new.actor_params, trained.actor_params)
    chex.assert_trees_all_equal(new.target_actor_params, trained.target_actor_params)
    assert int(new.critic_steps) == int(trained.critic_steps) + UTD
    assert "critic_loss" in metrics


def test_no_offline_batch_is_allowed(learner, trained, batches):
    new, _ = learner.update(trained, batches[0], None)
    assert int(new.critic_steps) == int(trained.critic_steps) + UTD


def test_wrong_shapes_raise_clear_errors(learner, trained, batches):
    online, offline = batches
    with pytest.raises(
        ValueError, match=r"observation has shape \(3, 8, 6\), expected \(3, 8, 5\)"
    ):
        learner.update(trained, make_batch(jax.random.key(0), obs_dim=OBS + 1), offline)
    with pytest.raises(ValueError, match="does not match the learner's action_dim 3"):
        learner.update(trained, make_batch(jax.random.key(0), act_dim=ACT + 1), offline)
    with pytest.raises(ValueError, match="same leading"):
        learner.update(trained, online, make_batch(jax.random.key(0), steps=UTD + 1))
    with pytest.raises(ValueError, match=r"\[steps, batch, ...\]"):
        learner.update(trained, jax.tree.map(lambda x: x[0], online), None)
    with pytest.raises(ValueError, match="action_dim"):
        learner.act(trained, jnp.zeros((4, OBS)), jnp.zeros((4, ACT + 2)), None)
    with (
        pytest.raises(ValueError, match="obs_normalizer has dimension"),
        pytest.warns(DeprecationWarning, match="pass a normalization.Normalizer"),
    ):
        from resfit_jax.normalization import StateStandardizer

        make_learner(CFG, OBS, ACT, StateStandardizer.identity(OBS + 2))
    from resfit_jax.normalization import Normalizer

    with pytest.raises(ValueError, match="observation size 7 does not match"):
        learner.init(jax.random.key(0), Normalizer.identity(OBS + 2, ACT))
    with pytest.raises(ValueError, match="action size 4 does not match action_dim 3"):
        learner.init(jax.random.key(0), Normalizer.identity(OBS, ACT + 1))
    with pytest.raises(ValueError, match="num_min_critics"):
        ResidualTD3Config(num_critics=2, num_min_critics=3)
    with pytest.raises(ValueError, match="float vectors"):
        make_learner(CFG, {"grid": jax.ShapeDtypeStruct((8, 8), jnp.float32)}, ACT)


@pytest.mark.parametrize("jit", [False, True])
def test_nan_batch_raises_clear_error(learner, trained, batches, jit):
    online, offline = batches
    bad = online.replace(reward=online.reward.at[1, 2].set(jnp.nan))
    update = jax.jit(learner.update) if jit else learner.update
    with pytest.raises(Exception, match=r"non-finite values \(NaN/inf\) in batch.reward"):
        jax.block_until_ready(update(trained, bad, offline))
    bad_obs = offline.replace(next_obs=offline.next_obs.at[0, 0, 0].set(jnp.inf))
    with pytest.raises(Exception, match=r"batch.next_obs"):
        jax.block_until_ready(update(trained, online, bad_obs))


def test_dict_observations_and_normalizer():
    from resfit_jax.normalization import Normalizer, StateStandardizer

    spec = {
        "a": jax.ShapeDtypeStruct((2,), jnp.float32),
        "b": jax.ShapeDtypeStruct((3,), jnp.float32),
    }
    norm = Normalizer(
        obs=StateStandardizer(mean=jnp.arange(5.0), std=jnp.full((5,), 2.0)),
        action=Normalizer.identity(5, ACT).action,
    )
    lrn = make_learner(CFG, spec, ACT)
    state = lrn.init(jax.random.key(0), norm)
    obs = {"a": jnp.ones((4, 2)), "b": jnp.zeros((4, 3))}
    feats = lrn.features(state, obs)
    np.testing.assert_allclose(feats[0], (np.array([1, 1, 0, 0, 0]) - np.arange(5.0)) / 2.0)
    # the statistics are part of the state (and so of every checkpoint)
    np.testing.assert_array_equal(state.normalizer.obs.mean, np.arange(5.0))
    r, _ = lrn.act(state, obs, jnp.zeros((4, ACT)), jax.random.key(1))
    assert r.shape == (4, ACT)
    with pytest.raises(ValueError, match="structure does not match"):
        lrn.act(state, {"a": jnp.ones((4, 2))}, jnp.zeros((4, ACT)), None)


def test_residual_penalty_adds_to_the_actor_loss_and_pulls_the_residual_to_zero(trained, batches):
    """actor_loss = -mean Q + penalty * mean((r / scale)^2); a dominant penalty shrinks r."""
    plain = make_learner(CFG, OBS, ACT)
    heavy = make_learner(dataclasses.replace(CFG, residual_penalty=100.0), OBS, ACT)
    online, offline = batches
    _, m0 = plain.update(trained, online, offline)
    _, m1 = heavy.update(trained, online, offline)
    # same critic steps, same actor batch: only the penalty term differs
    last = jax.tree.map(lambda a, b: jnp.concatenate([a[-1], b[-1]]), online, offline)
    r = heavy.actor.apply(trained.actor_params, heavy.features(trained, last.obs), last.base_action)
    penalty = float(jnp.mean(jnp.square(r / CFG.action_scale)))
    assert penalty > 0
    np.testing.assert_allclose(
        float(m1["actor_loss"]) - float(m0["actor_loss"]), 100.0 * penalty, rtol=1e-4
    )
    np.testing.assert_allclose(float(m0["actor_loss"]), -float(m0["actor_q"]), rtol=1e-6)

    update = jax.jit(heavy.update)
    state, sizes = trained, []
    for _ in range(30):
        state, m = update(state, online, offline)
        sizes.append(float(m["residual_abs_mean"]))
    assert sizes[-1] < 0.5 * sizes[0]
    with pytest.raises(ValueError, match="residual_penalty"):
        dataclasses.replace(CFG, residual_penalty=-1.0)


def test_public_losses_are_the_update_s_losses(learner, trained, batches):
    """losses.critic_loss / actor_loss (first argument: the differentiated params) give the
    losses the update reports, and their gradients move the params the update moves."""
    online, offline = batches
    row = jax.tree.map(lambda a, b: jnp.concatenate([a[0], b[0]]), online, offline)
    key = jax.random.key(11)
    loss, aux = learner.losses.critic_loss(
        trained.critic_params,
        trained.target_actor_params,
        trained.target_critic_params,
        trained.normalizer,
        row,
        key,
        0.0,
    )
    state, m = learner._critic_step(trained, row, key, 0.0)
    np.testing.assert_allclose(float(loss), float(m["critic_loss"]), rtol=1e-6)
    np.testing.assert_allclose(aux["target"], learner.td_target(trained, row, key, 0.0), rtol=1e-6)
    a_loss, a_aux = learner.losses.actor_loss(
        trained.actor_params, state.critic_params, state.normalizer, row
    )
    _, am = learner._actor_step(state, row)
    np.testing.assert_allclose(float(a_loss), float(am["actor_loss"]), rtol=1e-6)
    grads = jax.grad(
        lambda p: learner.losses.actor_loss(p, state.critic_params, state.normalizer, row)[0]
    )(trained.actor_params)
    assert float(optax_norm(grads)) > 0


def optax_norm(tree):
    import optax

    return optax.tree.norm(tree)


def test_without_the_per_update_callback_the_mask_names_the_field(batches):
    """check_finite=False: no host callback in the update; its nonfinite_mask metric carries
    the same information, and raise_if_nonfinite (what the loops call once per chunk) raises
    a FloatingPointError naming the field."""
    from resfit_jax.agents.checks import raise_if_nonfinite

    quiet = make_learner(dataclasses.replace(CFG, check_finite=False), OBS, ACT)
    online, offline = batches
    state = quiet.init(jax.random.key(0))
    _, ok = jax.jit(quiet.update)(state, online, offline)
    assert int(ok["nonfinite_mask"]) == 0
    raise_if_nonfinite(ok["nonfinite_mask"], "chunk")  # no error
    bad = offline.replace(next_base_action=offline.next_base_action.at[0, 1, 0].set(jnp.nan))
    _, m = jax.jit(quiet.update)(state, online, bad)
    with pytest.raises(FloatingPointError, match=r"in batch.next_base_action\."):
        raise_if_nonfinite(m["nonfinite_mask"], "chunk")


def test_an_open_gate_equals_ungated_training_bit_for_bit(learner, trained, batches):
    """gate_tau = -inf is the paper's ResFiT (no gate code runs); a gate that is always open
    (tau = -1e30) goes through every gate computation and still changes nothing."""
    online, offline = batches
    open_gate = make_learner(dataclasses.replace(CFG, gate_tau=-1e30), OBS, ACT)
    a, ma = jax.jit(learner.update)(trained, online, offline)
    b, mb = jax.jit(open_gate.update)(trained, online, offline)
    jax.tree.map(np.testing.assert_array_equal, to_storable(a), to_storable(b))
    assert ma["critic_loss"] == mb["critic_loss"]
    obs = jax.random.normal(jax.random.key(4), (16, OBS))
    a_b = jax.random.uniform(jax.random.key(5), (16, ACT), minval=-0.9, maxval=0.9)
    r1, _ = learner.act(trained, obs, a_b, jax.random.key(6))
    r2, aux = open_gate.act(trained, obs, a_b, jax.random.key(6))
    np.testing.assert_array_equal(r1, r2)
    assert bool(jnp.all(aux["gate"] == 1.0))


@pytest.mark.parametrize("rule", ["min", "lcb", "agree"])
def test_gated_td_target_matches_a_hand_written_reference(trained, batches, rule):
    cfg = dataclasses.replace(CFG, gate_tau=0.01, gate_rule=rule, gate_k=0.5)
    lrn = make_learner(cfg, OBS, ACT)
    online, _ = batches
    batch = jax.tree.map(lambda x: x[0], online)
    key = jax.random.key(9)
    y = lrn.td_target(trained, batch, key, noise_std=0.0)
    # by hand: same head subset, gate on the target critic, then the min over the subset
    k_subset, _ = jax.random.split(key)
    heads = jax.random.choice(k_subset, cfg.num_critics, (cfg.num_min_critics,), replace=False)
    feats = lrn.features(trained, batch.next_obs)
    r = lrn.actor.apply(trained.target_actor_params, feats, batch.next_base_action)
    q_all = lambda a: lrn.critic.apply(trained.target_critic_params, feats, a)
    pess = (lambda q: q[heads].min(0)) if rule == "min" else (lambda q: q.mean(0) - 0.5 * q.std(0))
    with_r = jnp.clip(batch.next_base_action + r, -1, 1)
    if rule == "agree":
        adv = (q_all(with_r) - q_all(batch.next_base_action)).min(0)
    else:
        adv = pess(q_all(with_r)) - pess(q_all(batch.next_base_action))
    g = (adv > 0.01).astype(jnp.float32)
    a_next = jnp.clip(batch.next_base_action + g[:, None] * r, -1, 1)
    subset = jax.tree.map(lambda p: p[heads], trained.target_critic_params)
    q_next = lrn.critic.apply(subset, feats, a_next).min(0)
    np.testing.assert_allclose(
        y, batch.reward + batch.discount * batch.nonterminal * q_next, rtol=1e-5, atol=1e-6
    )
    # acting: the executed residual is g * r with the online critic's gate
    _, aux = lrn.act(trained, batch.obs, batch.base_action, None, deterministic=True)
    assert set(np.unique(np.asarray(aux["gate"]))) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="gate_rule"):
        dataclasses.replace(CFG, gate_rule="max")


def test_actor_on_online_states_only(trained, batches):
    """actor_demo_weight = 0: the actor loss is -mean Q over the online rows of the last
    batch row alone (demo states do not move the actor)."""
    lrn = make_learner(dataclasses.replace(CFG, actor_demo_weight=0.0), OBS, ACT)
    online, offline = batches
    state, m = lrn.update(trained, online, offline)
    on_last = jax.tree.map(lambda x: x[-1], online)
    # the critic steps are the ungated ones; recompute the actor loss at the actor step's input
    ref, _ = make_learner(CFG, OBS, ACT).update(trained, online, offline)
    loss, _ = lrn.losses.actor_loss(
        trained.actor_params, ref.critic_params, trained.normalizer, on_last
    )
    np.testing.assert_allclose(float(m["actor_loss"]), float(loss), rtol=1e-5)
    with pytest.raises(ValueError, match="actor_demo_weight"):
        dataclasses.replace(CFG, actor_demo_weight=2.0)
