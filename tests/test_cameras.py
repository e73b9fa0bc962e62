"""Camera observations of the MJX tasks (MuJoCo Warp renderer on CPU): shapes, dtypes and
determinism, the proprio-only state, images that follow the scene, the true last frame of
an ended episode, and rendering inside a jitted scan."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resfit_jax import envs
from resfit_jax.envs.cameras import CameraRenderer, default_cameras, pixel_env

pytestmark = pytest.mark.slow  # MuJoCo Warp renders on the CPU: minutes of compile per module

E, RES = 2, 32


@pytest.fixture(scope="module")
def task():
    return envs.make("PickPlace", episode_length=3)


@pytest.fixture(scope="module")
def env(task):
    return pixel_env(task, E, RES, keep_scene=True)


@pytest.fixture(scope="module")
def render(task):
    return jax.jit(CameraRenderer(task.mj_model, E, ("workspace", "wrist"), RES))


@pytest.fixture(scope="module")
def rollout(env, task):
    """Reset and three steps in a jitted scan (the episode ends on the third)."""
    moving = jnp.tile(task.home_action + jnp.array([0.3, 0.2, 0, 0, 0, 0, 0]), (E, 1))

    def run():
        def body(s, _):
            s = env.step(s, moving)
            return s, s

        s0 = env.reset(jax.random.PRNGKey(3))
        return s0, jax.lax.scan(body, s0, None, length=3)[1]

    return jax.jit(run)()


def test_pixel_observations_have_the_spec_and_hold_proprio_only(env, task, rollout):
    s0, _ = rollout
    assert env.cameras == default_cameras(task.mj_model) == ("workspace", "wrist")
    spec = env.observation_spec
    assert set(spec) == {"state", "workspace", "wrist"}
    assert set(s0.obs) == set(spec) | {"scene"}  # keep_scene: the rendered poses too
    for k, sp in spec.items():
        assert s0.obs[k].shape == (E,) + sp.shape and s0.obs[k].dtype == sp.dtype
    assert spec["workspace"].shape == (RES, RES, 3) and spec["workspace"].dtype == jnp.uint8
    assert spec["state"].shape == (task.PROPRIO_SIZE,)
    assert task.observation_spec.shape[0] > task.PROPRIO_SIZE  # object poses left out
    # two envs with different cube poses look different; the table is lit (not black)
    ws = np.asarray(s0.obs["workspace"])
    assert not np.array_equal(ws[0], ws[1]) and ws.mean() > 40


def test_rendering_is_deterministic_and_follows_the_scene(task, rollout, render):
    s0, steps = rollout
    again = render(s0.obs["scene"])
    for c in ("workspace", "wrist"):
        np.testing.assert_array_equal(again[c], s0.obs[c])
    # the state is the state task's observation up to its proprio block
    full = jax.jit(jax.vmap(task._observe))(s0.data["mjx"], s0.data["task"])
    np.testing.assert_array_equal(s0.obs["state"], full[:, : task.PROPRIO_SIZE])
    # the arm moved: the wrist view changed
    assert not np.array_equal(np.asarray(steps.obs["wrist"][0]), np.asarray(s0.obs["wrist"]))


def test_an_ended_episode_keeps_its_true_last_frame(rollout, render):
    _, steps = rollout
    done = np.asarray(steps.done)
    assert not done[:2].any() and done[2].all()  # the time limit ends all at step 3
    last = jax.tree.map(lambda x: x[2], steps.info["final_obs"]["scene"])
    fresh = jax.tree.map(lambda x: x[2], steps.obs["scene"])
    want_final, want_new = render(last), render(fresh)
    for c in ("workspace", "wrist"):
        np.testing.assert_array_equal(steps.info["final_obs"][c][2], want_final[c])
        np.testing.assert_array_equal(steps.obs[c][2], want_new[c])
        # before the end, the final frame is the observation itself
        np.testing.assert_array_equal(steps.info["final_obs"][c][1], steps.obs[c][1])
    assert not np.array_equal(want_final["workspace"], want_new["workspace"])  # a new cube


def test_renderer_refuses_bad_requests(task):
    with pytest.raises(ValueError, match="not in the model"):
        CameraRenderer(task.mj_model, 2, ("nope",), RES)
    with pytest.raises(ValueError, match="resolution"):
        CameraRenderer(task.mj_model, 2, ("workspace",), 50)


def test_rendering_under_vmap_over_seeds_equals_separate_calls(rollout, render):
    """A batching rule folds the mapped axis into the worlds: vmap over 2 "seeds" of 2 envs
    renders 4 worlds in one call, image for image the same as rendering each seed alone."""
    s0, steps = rollout
    scene = jax.tree.map(
        lambda a, b: jnp.stack([a, b]),
        s0.obs["scene"],
        jax.tree.map(lambda x: x[1], steps.obs["scene"]),
    )  # [2, E, ...]
    both = jax.jit(jax.vmap(render))(scene)
    for c in ("workspace", "wrist"):
        assert both[c].shape == (2, E, RES, RES, 3)
        for seed in range(2):
            alone = render(jax.tree.map(lambda x: x[seed], scene))
            np.testing.assert_array_equal(both[c][seed], alone[c])


def test_the_per_env_pixel_task_renders_what_the_batch_form_renders(task, rollout):
    """``PixelTask`` is a plain task (vmap it, as episode runners do): each env renders one
    world and vmap folds them into one call; its batch form (what the training loops get
    from ``auto_reset_envs``) gives the same first frames from the same key."""
    from resfit_jax.envs.cameras import PixelObservations, PixelTask
    from resfit_jax.envs.core import EpisodeWrapper, auto_reset_envs

    pixel = PixelTask(task, RES, ("workspace", "wrist"))
    assert pixel.observation_spec["wrist"].shape == (RES, RES, 3)
    batch = auto_reset_envs(pixel, E)
    assert isinstance(batch, PixelObservations) and batch.renderer is pixel.renderer
    keys = jax.random.split(jax.random.PRNGKey(3), E)
    per_env = jax.jit(jax.vmap(EpisodeWrapper(pixel).reset))(keys).obs
    together = jax.jit(batch.reset)(jax.random.PRNGKey(3)).obs
    s0, _ = rollout
    for c in ("workspace", "wrist"):
        np.testing.assert_array_equal(per_env[c], together[c])
        np.testing.assert_array_equal(per_env[c], s0.obs[c])
    np.testing.assert_array_equal(per_env["state"], together["state"])


@pytest.mark.slow
def test_pixel_demos_of_an_mjx_task_carry_the_cameras():
    """The registered camera variant collects demos with its scripted expert (which reads
    the env state), and the episodes hold one uint8 frame per step per camera."""
    from resfit_jax.data.demos import collect_episodes, make_rollout

    task = envs.make("PixelPickPlace", resolution=RES, episode_length=4)
    expert = envs.make_expert("PixelPickPlace", task)
    eps, stats = collect_episodes(
        make_rollout(task, expert.init, expert.act), 2, 2, successful_only=False
    )
    assert stats.attempted == 2
    for ep in eps:
        assert ep.camera_shapes == {"workspace": (RES, RES, 3), "wrist": (RES, RES, 3)}
        assert ep.images["wrist"].shape[0] == ep.observation.shape[0] == ep.num_actions + 1
        assert ep.observation.shape[1] == 16  # proprio only
        assert len({ep.images["workspace"][t].tobytes() for t in range(ep.num_actions + 1)}) > 1
