"""The critic's calibration (studies.calibration): the recorded decisions are the ones the
policy acted on, a masked window leaves exactly that window to the base, returns-to-go and
the table against hand-computed numbers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resfit_jax.agents.residual_td3 import make_learner
from resfit_jax.base.residual import ResidualPolicy
from resfit_jax.sim import calibration as cal
from resfit_jax.sim.config import ResidualOptions
from resfit_jax.sim.evaluation import episode_keys, record_episodes
from resfit_jax.sim.trainer import make_trainer
from studies.calibration import calibration_table
from tests.test_decisions import CFG as DECISIONS_CFG
from tests.test_decisions import TASK, G, chunk_base, demos  # noqa: F401

K, N = 4, 16
CFG = DECISIONS_CFG.replace(  # semi-MDP decisions every K steps, one transition per decision
    residual=ResidualOptions(decision_steps=K),
    replay=dataclasses.replace(DECISIONS_CFG.replay, n_step=1),
)


@pytest.fixture(scope="module")
def setup(demos):  # noqa: F811 (the fixture imported from test_decisions)
    """A semi-MDP residual (k = 4) on the chunked PointReach base, its actor nudged off zero
    so that its corrections change episodes; pi's recorded episodes and decisions."""
    tr = make_trainer(TASK, chunk_base(), demos, CFG, seeds=[0])
    loop = tr.loop
    learner = make_learner(  # the same learner, outside shard_map
        loop.learner.config, loop.learner.obs_spec, loop.learner.action_dim
    )
    lstate = learner.init(jax.random.PRNGKey(1), tr.normalizer)
    lstate = lstate.replace(actor_params=jax.tree.map(lambda p: p + 0.3, lstate.actor_params))
    policy = ResidualPolicy(loop.base, tr.normalizer, learner, lstate, loop.features, loop.offsets)
    keys = episode_keys(jax.random.PRNGKey(7), N)
    pi = jax.device_get(jax.jit(lambda k: cal.record_decisions(TASK, policy, k, K, G))(keys))
    plain = jax.device_get(jax.jit(lambda k: record_episodes(TASK, policy, k))(keys))
    return policy, learner, lstate, keys, pi, plain


def test_only_semi_mdp_offset_runs_are_measured(setup):
    policy = setup[0]
    assert cal.check_semi_mdp(policy) == K
    with pytest.raises(ValueError, match="semi-MDP"):
        cal.check_semi_mdp(ResidualPolicy(policy.base, policy.normalizer))


def test_the_recorded_decisions_are_the_ones_pi_acted_on(setup):
    policy, learner, lstate, _, pi, plain = setup
    np.testing.assert_array_equal(pi["success"], plain["success"])  # recording changes nothing
    np.testing.assert_array_equal(pi["length"], plain["length"])
    assert pi["obs"].shape[:2] == (cal.num_decisions(TASK, K), N)
    nz = policy.normalizer
    executed = np.asarray(nz.normalize_action(plain["action"]))  # [T, N, A]
    pred = jax.device_get(
        jax.jit(lambda o, b: cal.predicted_advantage(learner, lstate, o, b))(
            pi["obs"], pi["base_action"]
        )
    )
    checked = 0
    for d in range(pi["obs"].shape[0]):
        alive = pi["length"] > d * K
        # the actor's correction at the recorded inputs is what pi executed at step d * k
        _, aux = learner.act(
            lstate, pi["obs"][d], pi["base_action"][d], jnp.zeros((2,), jnp.uint32), True
        )
        np.testing.assert_allclose(
            np.asarray(aux["action"])[alive], executed[d * K][alive], atol=1e-5
        )
        # and the advantage is the heads' Q there minus Q at the base's own action
        q = learner.q_values(lstate, pi["obs"][d], aux["action"], pi["base_action"][d])
        q_b = learner.q_values(lstate, pi["obs"][d], pi["base_action"][d], pi["base_action"][d])
        np.testing.assert_allclose(pred["advantage"][:, d], np.asarray(q - q_b), atol=1e-5)
        checked += int(alive.sum())
    assert checked > N and np.abs(pred["size"]).max() > 1e-3


def test_a_masked_window_is_the_base_there_and_pi_before(setup):
    policy, _, _, keys, pi, plain = setup
    nz = policy.normalizer
    bare = ResidualPolicy(policy.base, nz)
    step = jax.jit(bare.step)
    changed = 0
    for d in (0, 2):
        masked = jax.device_get(
            jax.jit(lambda k: record_episodes(TASK, cal.WindowMasked(policy, d * K, K), k))(keys)
        )
        out = jax.device_get(
            jax.jit(lambda k: cal.run_without_window(TASK, policy, k, K, d, G))(keys)
        )
        np.testing.assert_array_equal(out["success"], masked["success"])
        a_pi, a_m = np.asarray(plain["action"]), np.asarray(masked["action"])
        np.testing.assert_array_equal(a_m[: d * K], a_pi[: d * K])  # identical before d
        bs = bare.init_state(N)  # the base along the masked episodes
        for t in range(d * K + K):
            a_b, bs = step(bs, masked["obs"][t])
            if t >= d * K:
                live = masked["alive"][t]
                np.testing.assert_allclose(a_m[t][live], np.asarray(a_b)[live], atol=1e-5)
        changed += int(np.abs(a_m - a_pi).max() > 1e-4)
        # the return from the decision differs only where the episode took another course
        same = np.all(np.isclose(a_m, a_pi), axis=(0, 2))
        t = d * K
        np.testing.assert_allclose(out["return_to_go"][t][same], pi["return_to_go"][t][same])
    assert changed == 2
    # a window past every episode's end reproduces pi
    late = jax.device_get(
        jax.jit(lambda k: cal.run_without_window(TASK, policy, k, K, 1000, G))(keys)
    )
    np.testing.assert_array_equal(late["success"], pi["success"])


def test_the_return_to_go_is_the_discounted_success(setup):
    pi = setup[4]
    want = np.where(pi["success"], G ** (pi["length"] - 1.0), 0.0)
    np.testing.assert_allclose(pi["return_to_go"][0], want, rtol=1e-5)
    t = 3  # later steps: G^(L - 1 - t) while alive, 0 after the end
    want = np.where(pi["success"] & (pi["length"] > t), G ** (pi["length"] - 1.0 - t), 0.0)
    np.testing.assert_allclose(pi["return_to_go"][t], want, rtol=1e-5)


def test_the_table_by_hand():
    """Three episodes, two decisions of k = 2: episode 2 ends before decision 1; the
    correction at decision 0 wins episode 0 and loses episode 1."""
    rtg = lambda rows: np.array(rows, np.float32)  # [T, N]
    pi = {
        "success": np.array([True, False, True]),
        "length": np.array([4, 4, 2]),
        "return_to_go": rtg([[0.7, 0, 0.9], [0.8, 0, 1], [0.9, 0, 0], [1, 0, 0]]),
    }
    mask0 = {  # window 0 to the base: episode 0 fails, episode 1 succeeds
        "success": np.array([False, True, True]),
        "length": np.array([4, 4, 2]),
        "return_to_go": rtg([[0, 0.7, 0.9], [0, 0.8, 1], [0, 0.9, 0], [0, 1, 0]]),
    }
    mask1 = dict(pi)  # window 1 changes nothing
    pred = {
        "advantage": np.array([[[0.1, 0.3, 0.0], [0.0, 0.0, 0.0]], [[0.3, 0.1, 0.0], [0.2, 0, 0]]]),
        "q": np.array([[0.5, 0.4, 0.8], [0.9, 0.1, 0.0]]),
        "q_base": np.zeros((2, 3)),
        "size": np.full((2, 3), 0.01),
    }
    res = calibration_table(pred, pi, [mask0, mask1], every=2)
    d0, d1 = res["decisions"]
    assert (d0["alive"], d1["alive"]) == (3, 2)
    np.testing.assert_allclose(d0["predicted"], np.mean([0.2, 0.2, 0.0]))
    np.testing.assert_allclose(d0["measured"], np.mean([0.7, -0.7, 0.0]), atol=1e-6)
    assert (d0["won"], d0["lost"]) == (1, 1) and (d1["won"], d1["lost"]) == (0, 0)
    np.testing.assert_allclose(d1["predicted"], np.mean([0.1, 0.0]))
    np.testing.assert_allclose(d1["measured"], 0.0)
    np.testing.assert_allclose(d1["return"], np.mean([0.9, 0.0]))
    p = res["pooled"]
    assert p["pairs"] == 5 and (p["won"], p["lost"]) == (1, 1) and p["p_value"] == 1.0
    np.testing.assert_allclose(p["q"], np.mean([0.5, 0.4, 0.8, 0.9, 0.1]))
    assert p["sign_agreement"] == 0.5  # +0.2 / +0.7 agree, +0.2 / -0.7 do not
    assert sum(t["pairs"] for t in res["thirds"]) == 5
