"""Wrappers on the MJX tasks: auto-reset semantics, domain randomisation, task options
(a file of its own so the test runner can run it next to test_mjx_tasks.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resfit_jax import envs
from resfit_jax.envs import AutoReset, DomainRandomization, RandomizationConfig


def _home(task):
    return task.home_action


@pytest.mark.slow
def test_auto_reset_semantics_on_mjx():
    """Truncation at the horizon: final_obs is the true last observation (continuous with the
    previous step), the new episode is re-randomised, counters reset, success False."""
    task = envs.make("PickPlace", episode_length=4)
    env = AutoReset(task)
    reset = jax.jit(jax.vmap(env.reset))
    step = jax.jit(jax.vmap(env.step))
    s = reset(jax.random.split(jax.random.PRNGKey(0), 3))
    a = jnp.broadcast_to(_home(task), (3, 7))
    prev = None
    for _ in range(4):
        prev = s
        s = step(s, a)
    assert step._cache_size() == 1
    info = jax.device_get(s.info)
    assert info["truncated"].all() and not info["success"].any() and np.asarray(s.done).all()
    assert (info["steps"] == 0).all()
    final, last = np.asarray(info["final_obs"]), np.asarray(prev.obs)
    # The arm holds still: the true last obs is close to the one before it ...
    np.testing.assert_allclose(final[:, 16:19], last[:, 16:19], atol=2e-3)
    # ... while the post-reset obs is a new episode (cube and tote re-drawn).
    new = np.asarray(s.obs)
    assert np.all(np.linalg.norm(new[:, 16:18] - final[:, 16:18], axis=-1) > 1e-3)
    assert np.all(np.abs(new[:, 26:28] - final[:, 26:28]).max(-1) > 1e-4)


@pytest.mark.slow
def test_domain_randomization_batches_models():
    task = envs.make("PickPlace")
    cfg = RandomizationConfig(friction_scale=(0.5, 1.5), mass_scale=(0.5, 2.0))
    env = DomainRandomization(AutoReset(task), num_envs=4, key=jax.random.PRNGKey(0), config=cfg)
    fr = np.asarray(env.models.pair_friction)
    base = np.asarray(task.mjx_model.pair_friction)
    assert fr.shape == (4,) + base.shape
    scale = fr[:, :, 0] / base[None, :, 0]
    assert np.all((scale >= 0.5) & (scale <= 1.5)) and np.ptp(scale[:, 0]) > 0.05
    np.testing.assert_array_equal(fr[:, :, 2:], np.broadcast_to(base[:, 2:], fr[:, :, 2:].shape))
    mass = np.asarray(env.models.body_mass)[:, task.cube_body]
    assert np.ptp(mass) > 0.0 and np.all(mass >= 0.5 * 0.08 - 1e-6)
    # Unrandomised fields keep no batch axis.
    assert np.asarray(env.models.body_pos).ndim == 2
    a = jnp.broadcast_to(_home(task), (4, 7))
    s = jax.jit(lambda k: env.step(env.reset(k), a))(jax.random.PRNGKey(1))
    assert s.obs.shape == (4, 28) and np.all(np.isfinite(np.asarray(s.obs)))
    with pytest.raises(ValueError, match="action has shape"):
        env.step(s, jnp.zeros((3, 7)))


def test_peg_clearance_sets_hole_size_and_success_radius():
    """The hole is peg width + clearance; success needs the peg centred within that hole."""
    from resfit_jax.envs.peg_insertion import PEG_HALF

    tight = envs.make("PegInsertion", clearance=0.003)
    assert tight.hole_half == pytest.approx(PEG_HALF[0] + 0.0015)
    assert envs.make("PegInsertion").hole_half == pytest.approx(PEG_HALF[0] + 0.004)
    with pytest.raises(ValueError, match="clearance"):
        envs.make("PegInsertion", clearance=0.0)
