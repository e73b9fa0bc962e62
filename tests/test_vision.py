"""Pixel learner: DrQ shifts stay within the pad, the camera encoders learn from the critic
loss only, the conv and ViT encoders run under jit, and a critic learns a value that only
the image reveals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resfit_jax.agents.residual_td3 import ResidualTD3Config, make_learner
from resfit_jax.encoders import ObservationEncoder, random_shift, state_dim
from resfit_jax.normalization import Normalizer
from resfit_jax.replay import Transition

H = 24
SPEC = {
    "front": jax.ShapeDtypeStruct((H, H, 3), jnp.uint8),
    "state": jax.ShapeDtypeStruct((5,), jnp.float32),
}
CFG = ResidualTD3Config(
    actor_hidden_dims=(32, 32),
    critic_hidden_dims=(32, 32),
    num_critics=4,
    camera_feature_dim=16,
    actor_lr=1e-3,
    critic_lr=1e-3,
    check_finite=False,
)


def side_images(key, n, size=H):
    """uint8 [n, size, size, 3] with a white 5x5 square in the left or right third, and
    side [n] (0 left, 1 right)."""
    k_side, k_y, k_x = jax.random.split(key, 3)
    side = jax.random.bernoulli(k_side, 0.5, (n,)).astype(jnp.int32)
    y = jax.random.randint(k_y, (n,), 2, size - 7)
    x0 = jax.random.randint(k_x, (n,), 1, size // 3 - 5)
    x = jnp.where(side == 1, size - 6 - x0, x0)
    yy, xx = jnp.arange(size)[None, :, None], jnp.arange(size)[None, None, :]
    on = (
        (yy >= y[:, None, None])
        & (yy < y[:, None, None] + 5)
        & (xx >= x[:, None, None])
        & (xx < x[:, None, None] + 5)
    )
    img = jnp.where(on[..., None], 255, 20).astype(jnp.uint8)
    return jnp.broadcast_to(img, (n, size, size, 3)), side


def batch_of(key, n, action=None):
    """One-step transitions: reward 1 where sign(action) matches the square's side."""
    k_img, k_act, k_next = jax.random.split(key, 3)
    img, side = side_images(k_img, n)
    if action is None:
        action = jax.random.choice(k_act, jnp.array([-0.5, 0.5]), (n, 1))
    reward = (jnp.sign(action[:, 0]) == 2 * side - 1).astype(jnp.float32)
    obs = {"front": img, "state": jnp.zeros((n, 5))}
    next_img, _ = side_images(k_next, n)
    z = jnp.zeros((n, 1))
    return Transition(
        obs=obs,
        base_action=z,
        action=action,
        reward=reward,
        discount=jnp.zeros((n,)),
        nonterminal=jnp.ones((n,)),
        next_obs={"front": next_img, "state": jnp.zeros((n, 5))},
        next_base_action=z,
    ), side


def test_random_shift_crops_the_edge_padded_image_within_the_pad():
    imgs = jax.random.randint(jax.random.PRNGKey(0), (6, 12, 12, 3), 0, 256).astype(jnp.uint8)
    out = random_shift(jax.random.PRNGKey(1), imgs, pad=2)
    assert out.shape == imgs.shape and out.dtype == jnp.uint8
    padded = np.pad(np.asarray(imgs), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    shifts = set()
    for i in range(6):
        found = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if np.array_equal(padded[i, dy : dy + 12, dx : dx + 12], np.asarray(out[i]))
        ]
        assert found, f"image {i} is no crop of its padded copy within the pad"
        shifts.add(found[0])
    assert len(shifts) > 1  # the offsets differ between images
    np.testing.assert_array_equal(random_shift(jax.random.PRNGKey(1), imgs, 0), imgs)


def test_observation_encoder_layout_and_state_only_identity():
    enc = ObservationEncoder(SPEC, "conv", 16)
    assert enc.cameras == 1 and enc.state_dim == state_dim(SPEC) == 5
    assert enc.feature_dim == 16 + 5
    params = enc.init(jax.random.PRNGKey(0))
    nz = Normalizer.identity(5, 1)
    obs = {"front": jnp.zeros((2, 3, H, H, 3), jnp.uint8), "state": jnp.ones((2, 3, 5))}
    feats = enc(params, nz, obs)
    assert feats.shape == (2, 3, 21)
    np.testing.assert_allclose(feats[..., 16:], 1.0)  # state fields last, standardized
    state_only = ObservationEncoder({"state": SPEC["state"]})
    assert state_only.init(jax.random.PRNGKey(0)) == {}
    np.testing.assert_array_equal(state_only({}, nz, {"state": obs["state"]}), obs["state"])


def _learner(method: str):
    if method == "ibrl":
        import dataclasses

        from resfit_jax.agents.ibrl import IBRLConfig, make_ibrl

        fields = {
            f.name: getattr(CFG, f.name)
            for f in dataclasses.fields(CFG)
            if f.name not in ("action_scale", "actor_zero_init")
        }
        return make_ibrl(IBRLConfig(**fields), SPEC, 1)
    return make_learner(CFG, SPEC, 1)


@pytest.mark.parametrize("method", ["resfit", pytest.param("ibrl", marks=pytest.mark.slow)])
def test_encoder_learns_from_the_critic_loss_only(method):
    """ResFiT and IBRL: the critic loss trains the camera encoder, the actor loss gives it
    no gradient, an update moves it and an actor step alone does not."""
    learner = _learner(method)
    state = learner.init(jax.random.PRNGKey(0))
    assert jax.tree.leaves(state.encoder_params)
    batch, _ = batch_of(jax.random.PRNGKey(1), 16)
    L = learner.losses
    g_critic = jax.jit(
        jax.grad(
            lambda ep: L.critic_loss(
                state.critic_params,
                state.target_actor_params,
                state.target_critic_params,
                state.normalizer,
                batch,
                jax.random.PRNGKey(2),
                0.1,
                ep,
            )[0]
        )
    )(state.encoder_params)
    g_actor = jax.jit(
        jax.grad(
            lambda ep: L.actor_loss(
                state.actor_params, state.critic_params, state.normalizer, batch, None, ep
            )[0]
        )
    )(state.encoder_params)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_critic)) > 0
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(g_actor))
    # an update moves the encoder; the actor step alone leaves it where it was
    rows = jax.tree.map(lambda x: x[None], batch)
    new, metrics = jax.jit(learner.update)(state, rows, None)
    assert np.isfinite(float(metrics["critic_loss"]))
    moved = jax.tree.map(
        lambda a, b: float(jnp.abs(a - b).max()), state.encoder_params, new.encoder_params
    )
    assert max(jax.tree.leaves(moved)) > 0
    after_actor, _ = jax.jit(learner._actor_step)(new, batch)
    jax.tree.map(np.testing.assert_array_equal, new.encoder_params, after_actor.encoder_params)


@pytest.mark.parametrize("encoder", ["conv", pytest.param("vit", marks=pytest.mark.slow)])
def test_pixel_learner_acts_and_updates_under_jit(encoder):
    spec = {
        "front": jax.ShapeDtypeStruct((32, 32, 3), jnp.uint8),
        "wrist": jax.ShapeDtypeStruct((32, 32, 3), jnp.uint8),
        "state": jax.ShapeDtypeStruct((5,), jnp.float32),
    }
    learner = make_learner(CFG.__class__(**{**CFG.__dict__, "encoder": encoder}), spec, 1)
    state = learner.init(jax.random.PRNGKey(0))
    assert len(state.encoder_params["params"]) == 2  # one encoder per camera
    obs = {
        "front": jnp.zeros((4, 32, 32, 3), jnp.uint8),
        "wrist": jnp.full((4, 32, 32, 3), 200, jnp.uint8),
        "state": jnp.zeros((4, 5)),
    }
    r, aux = jax.jit(learner.act)(state, obs, jnp.zeros((4, 1)), jax.random.PRNGKey(1))
    assert r.shape == (4, 1) and np.all(np.asarray(aux["residual_mean"]) == 0.0)  # zero init
    z = jnp.zeros((2, 4, 1))
    rows = Transition(
        obs=jax.tree.map(lambda x: jnp.stack([x, x]), obs),
        base_action=z,
        action=z,
        reward=jnp.ones((2, 4)),
        discount=jnp.full((2, 4), 0.99),
        nonterminal=jnp.ones((2, 4)),
        next_obs=jax.tree.map(lambda x: jnp.stack([x, x]), obs),
        next_base_action=z,
    )
    new, metrics = jax.jit(learner.update)(state, rows, rows)
    assert int(new.critic_steps) == 2 and np.isfinite(float(metrics["critic_loss"]))


def test_a_critic_learns_a_value_only_the_image_reveals():
    learner = make_learner(CFG, SPEC, 1)
    state = learner.init(jax.random.PRNGKey(0))

    @jax.jit
    def train(state):  # 100 critic steps, each on a fresh batch of 32
        rows, _ = jax.vmap(lambda k: batch_of(k, 32))(jax.random.split(jax.random.PRNGKey(1), 100))
        return learner.critic_warmup(state, rows, None)[0]

    state = train(state)
    test, side = jax.jit(lambda: batch_of(jax.random.PRNGKey(7), 200))()
    q = jax.jit(learner.q_values)
    right = q(state, test.obs, jnp.full((200, 1), 0.5)).mean(axis=0)
    left = q(state, test.obs, jnp.full((200, 1), -0.5)).mean(axis=0)
    correct = np.where(np.asarray(side) == 1, right - left, left - right)
    assert np.mean(correct > 0) >= 0.9 and np.mean(correct) > 0.3, np.mean(correct)


def test_bad_pixel_specs_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        make_learner(CFG, {"front": jax.ShapeDtypeStruct((8, 8, 3), jnp.float32)}, 1)


def test_uint8_frames_round_trip_through_the_n_step_writer_and_replay_exactly():
    """Each env step's frame is a distinct uint8 image; every stored transition holds the
    frame of its start and the frame k steps later, bit for bit, in uint8."""
    from resfit_jax.replay import NStepWriter, ReplayBuffer, transition_spec

    e, n, steps = 2, 3, 7
    spec = {
        "front": jax.ShapeDtypeStruct((8, 8, 3), jnp.uint8),
        "state": jax.ShapeDtypeStruct((1,), jnp.float32),
    }
    frames = jax.random.randint(jax.random.PRNGKey(0), (steps + 1, e, 8, 8, 3), 0, 256).astype(
        jnp.uint8
    )
    obs_at = lambda t: {"front": frames[t], "state": jnp.full((e, 1), float(t))}
    writer, buf = NStepWriter(n=n), ReplayBuffer(64)
    ws, rs = writer.init(e, spec, 1), buf.init(transition_spec(spec, 1))
    assert rs.data.obs["front"].dtype == jnp.uint8
    z, f = jnp.zeros((e, 1)), jnp.zeros((e,), bool)
    for t in range(steps):
        ws, cands, valid = writer.step(ws, obs_at(t), z, z, jnp.zeros((e,)), obs_at(t + 1), z, f, f)
        rs = buf.add(rs, cands, valid)
    size = int(rs.size)
    assert size == e * (steps - n + 1)
    for i in range(size):
        t0 = int(rs.data.obs["state"][i, 0])
        t1 = int(rs.data.next_obs["state"][i, 0])
        assert t1 == t0 + n
        env = [j for j in range(e) if np.array_equal(frames[t0, j], rs.data.obs["front"][i])]
        assert env and np.array_equal(rs.data.next_obs["front"][i], frames[t1, env[0]])
    # frames stored as float would be silently truncated: refused
    bad = jax.tree.map(lambda x: x, cands)
    bad = bad.replace(
        obs={"front": cands.obs["front"].astype(jnp.float32) / 255.0, "state": cands.obs["state"]}
    )
    with pytest.raises(ValueError, match="uint8"):
        buf.add(rs, bad, valid)
