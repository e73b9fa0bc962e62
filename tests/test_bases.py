"""BC bases: chunk policies overfit a few demos, the export artifact reproduces the model's
actions without model code, host-callback bases run inside jitted vmapped rollouts, and the
archival checkpoint round-trips."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resfit_jax.base.callback import host_callback_base
from resfit_jax.base.policy import ChunkedBase, load_exported_base
from resfit_jax.bc.data import action_reference, chunk_dataset, fit_normalizer
from resfit_jax.bc.export import export_base
from resfit_jax.bc.frozen import checkpoint_manager, load_base, open_base, save_base
from resfit_jax.bc.networks import BCConfig
from resfit_jax.bc.train import make_trainer
from resfit_jax.data import Episode
from resfit_jax.envs import PointReach
from resfit_jax.envs.point_reach import expert_action
from resfit_jax.sim.evaluation import evaluate_policy

OBS, ACT, K = 6, 3, 4
TINY = dict(
    dim=32,
    heads=2,
    ff_dim=64,
    encoder_layers=1,
    decoder_layers=1,
    state_tokens=2,
    dropout=0.0,
    mlp_hidden=(64, 64),
    lr=3e-3,
    batch_size=64,
    chunk_size=K,
)


def _demos(n=5, t=12, seed=0):
    """Episodes whose actions are a smooth nonlinear function of a drifting state."""
    rng = np.random.default_rng(seed)
    eps = []
    for i in range(n):
        x = rng.normal(size=OBS)
        obs, acts = [x], []
        for _ in range(t):
            a = np.tanh(x[:ACT] * 1.5 + 0.3 * x[ACT:])
            acts.append(a)
            x = x + 0.1 * np.concatenate([a, -a])
            obs.append(x)
        eps.append(Episode.from_rollout(np.array(obs), np.array(acts), True, episode_id=i))
    return eps


@pytest.fixture(scope="module")
def trained():
    eps = _demos()
    out = {}
    for policy in ("mlp", "act", "mlp_relative"):
        rel = (0, 1, -1) if policy == "mlp_relative" else None
        cfg = BCConfig(policy=policy.split("_")[0], steps=1500, action_obs_index=rel, **TINY)
        data = chunk_dataset(eps, K)
        norm = fit_normalizer(data, rel)
        tr = make_trainer(cfg, OBS, ACT, norm)
        st, m = tr.train(tr.init(jax.random.PRNGKey(0)), jax.device_put(data), cfg.steps)
        out[policy] = (cfg, tr, st, data, norm)
    return out


@pytest.mark.parametrize("policy", ["mlp", "act", "mlp_relative"])
def test_bc_overfits_five_demos(trained, policy):
    cfg, tr, st, data, _ = trained[policy]
    pred = np.asarray(tr.predict(st.params, jnp.asarray(data["obs"])))
    mask = data["mask"][..., None]
    err = np.abs(pred - data["chunk"]) * mask
    mean_err = err.sum() / (mask.sum() * ACT)
    # demo actions are O(1); the fit reproduces them to a few hundredths
    assert mean_err < 0.05, f"{policy}: mean |error| {mean_err:.4f}"
    first = np.abs(pred[:, 0] - data["chunk"][:, 0]).mean()
    assert first < 0.05


def test_relative_actions_are_measured_from_the_observation():
    obs = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    np.testing.assert_array_equal(
        np.asarray(action_reference(obs, (2, -1, 0), 3)), [[3.0, 0.0, 1.0], [6.0, 0.0, 4.0]]
    )
    with pytest.raises(ValueError, match="2 entries for 3 actions"):
        action_reference(obs, (0, 1), 3)
    # predict() outputs absolute actions: shifting the referenced obs dims shifts them too
    cfg = BCConfig(policy="mlp", action_obs_index=(0, 1, -1), **TINY)
    from resfit_jax.bc.data import ChunkNormalizer
    from resfit_jax.bc.train import make_predict

    norm = ChunkNormalizer(jnp.zeros(OBS), jnp.ones(OBS), jnp.zeros(ACT), jnp.ones(ACT))
    from resfit_jax.bc.networks import make_network

    params = make_network(cfg, ACT).init(jax.random.PRNGKey(0), jnp.zeros((1, OBS)))["params"]
    params = jax.tree.map(jnp.zeros_like, params)  # network outputs 0 -> chunk = ref
    x = jax.random.normal(jax.random.PRNGKey(1), (3, OBS))
    out = np.asarray(make_predict(cfg, ACT, norm)(params, x))
    np.testing.assert_allclose(out[:, :, 0], np.repeat(np.asarray(x[:, :1]), K, 1), rtol=1e-6)
    np.testing.assert_allclose(out[:, :, 2], 0.0, atol=1e-6)


def test_chunk_dataset_pads_and_masks():
    ep = Episode.from_rollout(
        np.arange(4, dtype=float)[:, None] * np.ones((4, 2)),
        np.arange(3, dtype=float)[:, None] * np.ones((3, 1)),
        True,
    )
    d = chunk_dataset([ep], 4)
    np.testing.assert_array_equal(d["chunk"][:, :, 0], [[0, 1, 2, 2], [1, 2, 2, 2], [2, 2, 2, 2]])
    np.testing.assert_array_equal(d["mask"], [[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]])


def test_export_round_trip_identical_actions(trained, tmp_path):
    cfg, tr, st, data, norm = trained["act"]
    path = export_base(
        str(tmp_path / "export"),
        tr.predict,
        st.params,
        obs_dim=OBS,
        action_dim=ACT,
        chunk_size=K,
        normalizer=norm,
        task="Synthetic",
    )
    loaded = load_exported_base(path, obs_dim=OBS, action_dim=ACT)
    native = ChunkedBase(lambda o: tr.predict(st.params, o), ACT, K)
    obs = jnp.asarray(data["obs"][:10].reshape(2, 5, OBS).swapaxes(0, 1))  # [T=5, E=2, O]

    def rollout(base):
        def body(q, o):
            a, q = base.step(q, o)
            return q, a

        return jax.jit(lambda obs: jax.lax.scan(body, base.init_state(2), obs)[1])(obs)

    np.testing.assert_allclose(
        np.asarray(rollout(loaded)), np.asarray(rollout(native)), rtol=1e-5, atol=1e-6
    )
    # the artifact takes any batch size (symbolic batch dimension)
    assert loaded.predict(jnp.zeros((7, OBS))).shape == (7, K, ACT)
    # open_base finds the export from its directory or its parent run directory
    for where in (path, str(tmp_path)):
        opened, info = open_base(where, OBS, ACT)
        assert info["format"] == "export"
        np.testing.assert_allclose(
            np.asarray(opened.predict(obs[0])), np.asarray(loaded.predict(obs[0])), rtol=1e-6
        )
    with pytest.raises(FileNotFoundError, match="No base at"):
        open_base(str(tmp_path / "nothing"), OBS, ACT)
    with pytest.raises(
        ValueError, match="observations of size 6, but the task's observation size is 28"
    ):
        load_exported_base(path, obs_dim=28, action_dim=ACT)
    with pytest.raises(ValueError, match="actions of size 3, but the task's action size is 7"):
        load_exported_base(path, obs_dim=OBS, action_dim=7)
    with open(os.path.join(path, "base.jaxexport"), "r+b") as f:
        f.write(b"garbage!")
    with pytest.raises(ValueError, match="cannot deserialize"):
        load_exported_base(path)


def test_archival_checkpoint_round_trip(trained, tmp_path):
    cfg, tr, st, data, norm = trained["mlp"]
    manager = checkpoint_manager(str(tmp_path / "ckpt"))
    meta = {"task": "Synthetic", "obs_dim": OBS, "action_dim": ACT}
    save_base(manager, 1, st.params, cfg, norm, meta, {"success_rate": 0.5})
    zeros = jax.tree.map(jnp.zeros_like, st.params)
    save_base(manager, 2, zeros, cfg, norm, meta, {"success_rate": 0.1})  # worse: not kept
    base, info = load_base(str(tmp_path / "ckpt"), obs_dim=OBS, action_dim=ACT)
    assert info["best_step"] == 1
    obs = jnp.asarray(data["obs"][:3])
    np.testing.assert_allclose(
        np.asarray(base.predict(obs)), np.asarray(tr.predict(st.params, obs)), rtol=1e-6
    )
    with pytest.raises(ValueError, match="has obs_dim 6, but the task has 28"):
        load_base(str(tmp_path / "ckpt"), obs_dim=28)
    opened, info = open_base(str(tmp_path / "ckpt"), OBS, ACT)
    assert info["format"] == "checkpoint" and info["task"] == "Synthetic"
    np.testing.assert_allclose(np.asarray(opened.predict(obs)), np.asarray(base.predict(obs)))


def _numpy_expert(obs: np.ndarray) -> np.ndarray:
    """PointReach's expert in numpy (a stand-in for an ONNX / PyTorch model)."""
    return np.clip(2.0 * (obs[:, 2:4] - obs[:, :2]), -1.0, 1.0).astype(np.float32)


def test_host_callback_base_in_jitted_vmapped_rollout():
    task = PointReach()
    host = host_callback_base(_numpy_expert, obs_dim=4, action_dim=2)
    native = ChunkedBase(lambda o: expert_action(o)[:, None], 2, 1)
    key = jax.random.PRNGKey(0)
    r_host = evaluate_policy(task, host, 32, key, num_envs=16)
    r_native = evaluate_policy(task, native, 32, key, num_envs=16)
    assert r_host["success_rate"] == 1.0
    np.testing.assert_array_equal(r_host["steps"], r_native["steps"])
    # chunked host model under vmap over seeds: one batched host call per step
    chunked = host_callback_base(
        lambda o: np.repeat(_numpy_expert(o)[:, None], 3, 1), obs_dim=4, action_dim=2, chunk_size=3
    )
    q = jax.vmap(lambda _: chunked.init_state(5))(jnp.arange(2))
    obs = jax.random.normal(key, (2, 5, 4))
    a, _ = jax.jit(jax.vmap(chunked.step))(q, obs)
    np.testing.assert_allclose(np.asarray(a), np.asarray(expert_action(obs)), rtol=1e-6)


def test_host_callback_shape_and_dtype_errors():
    with pytest.raises(ValueError, match=r"returned shape \(2, 3\).*expected \(2, 2\)"):
        host_callback_base(lambda o: np.zeros((o.shape[0], 3), np.float32), 4, 2)
    with pytest.raises(ValueError, match="dtype int64"):
        host_callback_base(lambda o: np.zeros((o.shape[0], 2), np.int64), 4, 2)
    base = host_callback_base(_numpy_expert, 4, 2)
    with pytest.raises(ValueError, match="observation size 5, expected 4"):
        base.step(base.init_state(1), jnp.zeros((1, 5)))
