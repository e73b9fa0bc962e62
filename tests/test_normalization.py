import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resfit_jax.normalization import ActionScaler, StateStandardizer


def test_action_scaler_widens_range_and_floors_half_range():
    acts = np.array([[-2.0, 0.5, 3.0], [2.0, 0.52, 3.0], [0.0, 0.51, 3.0]])
    sc = ActionScaler.fit(acts, action_scale=0.1, min_half_range=0.05)
    np.testing.assert_allclose(sc.center, [0.0, 0.51, 3.0], rtol=1e-6)
    # dim 0: half 2 * 1.1; dim 1: half 0.01 floored to 0.05, * 1.1; dim 2: constant -> floor
    np.testing.assert_allclose(sc.half_range, [2.2, 0.055, 0.055], rtol=1e-6)
    z = sc.normalize(jnp.asarray(acts))
    # demo actions sit inside +-1/(1+s) on the dimension the data spans
    np.testing.assert_allclose(jnp.abs(z[:, 0]).max(), 1 / 1.1, rtol=1e-6)
    assert float(jnp.abs(z).max()) <= 1 / 1.1 + 1e-6


def test_action_scaler_roundtrip_and_pytree():
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(100, 4)) * [1, 10, 0.1, 3]
    sc = ActionScaler.fit(acts, action_scale=0.2)
    x = jnp.asarray(acts, jnp.float32)
    np.testing.assert_allclose(sc.unnormalize(sc.normalize(x)), x, rtol=1e-5, atol=1e-5)
    z = jnp.asarray(rng.uniform(-1, 1, size=(7, 4)), jnp.float32)
    np.testing.assert_allclose(sc.normalize(sc.unnormalize(z)), z, rtol=1e-5, atol=1e-6)
    # a pytree: passes through jit and vmap
    out = jax.jit(lambda s, a: s.normalize(a))(sc, x)
    np.testing.assert_allclose(out, sc.normalize(x))
    assert len(jax.tree.leaves(sc)) == 2


def test_state_standardizer_floors_std_and_inverts():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(5, 2, size=(500, 1)), np.full((500, 1), 3.0)], axis=1)
    st = StateStandardizer.fit(x, min_std=0.1)
    np.testing.assert_allclose(st.std[1], 0.1)
    z = st.normalize(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(z[:, 0].mean(), 0.0, atol=1e-4)
    np.testing.assert_allclose(z[:, 0].std(), 1.0, atol=1e-3)
    np.testing.assert_allclose(z[:, 1], 0.0, atol=1e-6)
    np.testing.assert_allclose(st.unnormalize(z), x, rtol=1e-5, atol=1e-4)


def test_fit_rejects_bad_data():
    with pytest.raises(ValueError, match="NaN"):
        ActionScaler.fit(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="non-empty"):
        StateStandardizer.fit(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="low < high"):
        ActionScaler.from_bounds([1.0], [0.0])


def test_action_scaler_margin_keeps_actions_beyond_the_demos_unclipped():
    """margin widens the fitted range before the residual widening: an action 10-20% past the
    demo max maps inside [-1, 1] with margin 0.3 and outside without it."""
    demo = np.array([[0.0, -1.0], [1.0, 1.0]])
    plain = ActionScaler.fit(demo, action_scale=0.05)
    wide = ActionScaler.fit(demo, action_scale=0.05, margin=0.3)
    np.testing.assert_allclose(
        np.asarray(wide.half_range), np.asarray(plain.half_range) * 1.3, rtol=1e-6
    )
    beyond = np.array([1.1, 1.2])
    assert np.all(np.abs(np.asarray(plain.normalize(beyond))) > 1)
    assert np.all(np.abs(np.asarray(wide.normalize(beyond))) < 1)
    with pytest.raises(ValueError, match="margin"):
        ActionScaler.fit(demo, margin=-0.1)


def test_paired_statistics_on_a_hand_made_outcome_table():
    """10 pairs: 6 both succeed, 1 both fail, 2 fixed (base fails, policy succeeds), 1 broken."""
    from resfit_jax.run.stats import mcnemar_exact, paired_outcomes

    base = [1, 1, 1, 1, 1, 1, 0, 0, 0, 1]
    pol = [1, 1, 1, 1, 1, 1, 0, 1, 1, 0]
    r = paired_outcomes(base, pol)
    assert (r["fixed"], r["broken"], r["episodes"]) == (2, 1, 10)
    assert r["gain"] == 0.2 and r["churn"] == 0.1
    assert r["base_success_rate"] == 0.7 and r["success_rate"] == 0.8
    # exact two-sided McNemar: 2 * P(Binom(3, 1/2) <= 1) = 2 * 4/8 = 1
    assert r["p_value"] == 1.0
    assert r["diff_ci_low"] < 0.1 < r["diff_ci_high"]
    # 10 fixed, 0 broken: 2 * 0.5^10
    assert abs(mcnemar_exact(10, 0) - 2 / 1024) < 1e-12
    # 22 fixed, 11 broken (the PickPlace run): 2 * P(Binom(33, 1/2) <= 11)
    from math import comb

    assert abs(mcnemar_exact(22, 11) - 2 * sum(comb(33, i) for i in range(12)) / 2**33) < 1e-12
    with pytest.raises(ValueError, match="compare the same episodes"):
        paired_outcomes([1, 0], [1])
