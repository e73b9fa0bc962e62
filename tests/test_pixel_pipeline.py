"""Pixels end to end on PixelPointReach: the task, RLDS with images, a pixel BC base (train,
checkpoint, export) and a residual run through every phase of the trainer."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resfit_jax import envs
from resfit_jax.base.policy import ChunkedBase, load_exported_base
from resfit_jax.bc.data import chunk_dataset, fit_normalizer
from resfit_jax.bc.export import export_base
from resfit_jax.bc.frozen import checkpoint_manager, load_base, open_base, save_base
from resfit_jax.bc.networks import BCConfig
from resfit_jax.bc.train import make_trainer
from resfit_jax.data import check_compatible, read_episodes, write_episodes
from resfit_jax.data.demos import collect_episodes, make_rollout
from resfit_jax.encoders import SliceConv
from resfit_jax.observations import camera_shapes, state_size

CAMS = {"top": (32, 32, 3)}


@pytest.fixture(scope="module")
def task():
    return envs.make("PixelPointReach")


@pytest.fixture(scope="module")
def demos(task):
    expert = envs.make_expert("PixelPointReach", task, envs.ExpertStyle.human(0.02))
    eps, _ = collect_episodes(make_rollout(task, expert.init, expert.act), 24, 24, seed=3)
    return eps


def test_the_goal_is_only_in_the_image(task):
    s = jax.jit(task.reset)(jax.random.PRNGKey(0))
    assert set(s.obs) == {"state", "top"} and s.obs["top"].dtype == jnp.uint8
    np.testing.assert_array_equal(s.obs["state"], s.data["pos"])  # no goal in the state
    assert task.observation_spec["top"].shape == (32, 32, 3)
    img, goal = np.asarray(s.obs["top"]), np.asarray(s.data["goal"])
    row, col = np.unravel_index(img[..., 1].argmax(), img.shape[:2])  # green = goal
    px = 2 * task.extent / task.resolution
    np.testing.assert_allclose(
        [-task.extent + (col + 0.5) * px, task.extent - (row + 0.5) * px], goal, atol=px
    )
    again = jax.jit(task.reset)(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(again.obs["top"], s.obs["top"])  # deterministic


def test_slice_conv_equals_lax_conv():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 13, 11, 4))
    for k, s, pad in [(3, 1, "VALID"), (3, 2, "VALID"), (3, 2, "SAME"), (4, 4, "VALID")]:
        conv = SliceConv(6, k, s, pad)
        p = conv.init(jax.random.PRNGKey(1), x)
        np.testing.assert_allclose(
            conv.apply(p, x), nn.Conv(6, (k, k), s, pad).apply(p, x), atol=1e-5
        )


def test_pixel_rlds_round_trip_and_camera_checks(demos, tmp_path):
    ep = demos[0]
    assert ep.camera_shapes == CAMS and ep.images["top"].shape[0] == ep.observation.shape[0]
    path = write_episodes(str(tmp_path / "d"), demos[:3], metadata={"task": "PixelPointReach"})
    back = read_episodes(path)
    for a, b in zip(demos[:3], back):
        np.testing.assert_array_equal(a.images["top"], b.images["top"])
        np.testing.assert_array_equal(a.observation, b.observation)
    check_compatible(back, 2, 2, "PixelPointReach", CAMS)
    with pytest.raises(ValueError, match="cameras"):
        check_compatible(back, 2, 2, "PixelPointReach", {"top": (64, 64, 3)})
    bad = dataclasses.replace(ep, images={"top": ep.images["top"].astype(np.float32)})
    with pytest.raises(ValueError, match="uint8"):
        bad.validate()


@pytest.fixture(scope="module")
def pixel_base(demos):
    config = BCConfig.cpu(
        chunk_size=5,
        dim=32,
        heads=2,
        ff_dim=64,
        encoder_layers=1,
        state_tokens=1,
        image_channels=8,
        batch_size=32,
        dropout=0.0,
    )
    data = chunk_dataset(demos, config.chunk_size)
    normalizer = fit_normalizer(data, None)
    trainer = make_trainer(config, 2, 2, normalizer, CAMS)
    state = trainer.init(jax.random.PRNGKey(0))
    state, first = trainer.train(state, jax.device_put(data), 1)
    state, m = trainer.train(state, jax.device_put(data), 150)
    return trainer, state, config, normalizer, float(first["l1"]), float(m["l1_last"])


def test_pixel_bc_learns_checkpoints_and_exports(pixel_base, task, tmp_path):
    trainer, state, config, normalizer, first, last = pixel_base
    assert last < 0.6 * first  # the image tokens are used
    manager = checkpoint_manager(str(tmp_path / "ckpt"))
    save_base(
        manager,
        1,
        state.params,
        config,
        normalizer,
        {"task": "PixelPointReach", "obs_dim": 2, "action_dim": 2, "cameras": {"top": [32, 32, 3]}},
        {"success_rate": 0.5},
    )
    base, _ = load_base(str(tmp_path / "ckpt"), 2, 2, cameras=CAMS)
    export_base(
        str(tmp_path / "export"),
        trainer.predict,
        state.params,
        obs_dim=2,
        action_dim=2,
        chunk_size=config.chunk_size,
        normalizer=normalizer,
        cameras=CAMS,
    )
    exported = load_exported_base(str(tmp_path / "export"), 2, 2)
    obs = jax.vmap(task.reset)(jax.random.split(jax.random.PRNGKey(1), 4)).obs
    a1, _ = base.step(base.init_state(4), obs)
    a2, _ = exported.step(exported.init_state(4), obs)
    np.testing.assert_allclose(a1, a2, atol=1e-5)
    # a different image changes the action: the base reads the goal from the pixels
    moved = dict(obs, top=jnp.roll(obs["top"], 8, axis=1))
    a3, _ = base.step(base.init_state(4), moved)
    assert float(jnp.abs(a3 - a1).max()) > 1e-3
    for path in (tmp_path / "ckpt", tmp_path / "export"):
        with pytest.raises(ValueError, match="cameras"):
            open_base(str(path), 2, 2, cameras={"top": (64, 64, 3)})


@pytest.mark.slow
def test_pixel_residual_runs_every_phase(pixel_base, demos, task, tmp_path):
    from resfit_jax.sim.presets import preset
    from resfit_jax.sim.trainer import make_trainer as make_residual_trainer
    from resfit_jax.sim.trainer import train_residual

    trainer, state, config, _, _, _ = pixel_base
    base = ChunkedBase(lambda o: trainer.predict(state.params, o), 2, config.chunk_size)
    cfg = preset("PixelPointReach")
    cfg = cfg.replace(
        learner=dataclasses.replace(
            cfg.learner,
            actor_hidden_dims=(32,),
            critic_hidden_dims=(32,),
            num_critics=2,
            camera_feature_dim=8,
        ),
        replay=dataclasses.replace(cfg.replay, batch_size=16, utd=1, capacity=2_000),
        num_envs=4,
        warmup_env_steps=32,
        critic_warmup_updates=4,
        critic_warmup_chunk=2,
        total_env_steps=64,
        steps_per_chunk=8,
        eval_every=32,
        eval_episodes=4,
    )
    assert state_size(task.observation_spec) == 2 and camera_shapes(task.observation_spec) == CAMS
    res = make_residual_trainer(task, base, demos, cfg, seeds=[0, 1])
    assert res.loop.learner.pixels
    start = res.init().learner_state.encoder_params
    summary = train_residual(res, str(tmp_path / "run"), progress=False)
    assert summary["complete"] and summary["final"]["pooled"]["episodes"] == 8
    ls = summary["loop_state"]
    rs = ls.replay_state  # each frame once, uint8
    assert rs.frames.frames["top"].dtype == jnp.uint8 and rs.data.obs["top"].dtype == jnp.int32
    assert int(rs.size.min()) >= 32 + 64 - 4 * cfg.replay.n_step
    assert np.asarray(ls.learner_state.critic_steps).tolist() == [4 + 8 * 2] * 2
    moved = jax.tree.map(
        lambda a, b: float(jnp.abs(a - b).max()), ls.learner_state.encoder_params, start
    )
    assert max(jax.tree.leaves(moved)) > 0  # the encoders trained
