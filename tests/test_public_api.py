"""The package top is the stable public surface: every exported name resolves, and the
README's "own JAX code" loop runs as written with those names only (a learner on a base,
the n-step writer into the ring buffer, the mixer with demos, jitted updates)."""

import re

import jax
import jax.numpy as jnp
import numpy as np

import resfit_jax
from resfit_jax.data.rlds import Episode


def test_every_public_name_resolves_and_import_is_lazy():
    for name in resfit_jax.__all__:
        assert getattr(resfit_jax, name) is not None, name
    assert set(resfit_jax.__all__) <= set(dir(resfit_jax))
    try:
        resfit_jax.no_such_name  # noqa: B018
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def _demo_episodes(n: int, length: int, obs_dim: int, act_dim: int) -> list[Episode]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        obs = rng.normal(size=(length + 1, obs_dim)).astype(np.float32)
        act = rng.uniform(-0.8, 0.8, size=(length, act_dim)).astype(np.float32)
        out.append(Episode.from_rollout(obs, act, success=True))
    return out


def test_the_readme_own_code_snippet_runs_with_the_public_names():
    readme = open("README.md").read()
    block = re.search(
        r"## Using the learner in your own JAX code\n.*?```python\n(.*?)```", readme, re.S
    )
    assert block, "README lost its 'own JAX code' snippet"
    for name in ("make_learner", "ReplayConfig", "replay_updates", "fit_normalizer"):
        assert name in block.group(1)
    from resfit_jax import (
        FunctionBase,
        ReplayConfig,
        ResidualTD3Config,
        fit_normalizer,
        make_learner,
        offline_buffer,
        replay_updates,
        transition_spec,
    )

    obs_dim, act_dim, envs = 6, 2, 4
    demos = _demo_episodes(3, 10, obs_dim, act_dim)
    base = FunctionBase(lambda obs: jnp.tanh(obs[..., :act_dim]), act_dim)
    replay = ReplayConfig(n_step=3, utd=2, batch_size=16, offline_fraction=0.5, capacity=256)
    learner = make_learner(
        ResidualTD3Config.small(
            actor_hidden_dims=(32, 32), critic_hidden_dims=(32, 32), num_critics=2
        ),
        obs_spec=obs_dim,
        action_dim=act_dim,
    )
    normalizer = fit_normalizer(demos, action_scale=0.1)
    state = learner.init(jax.random.key(0), normalizer)
    demo_buffer, demo_state = offline_buffer(demos, base, normalizer, replay.demo_writer())
    writer, buffer, mixer = replay.writer(), replay.buffer(), replay.mixer(demo_buffer)
    obs_spec = jax.ShapeDtypeStruct((obs_dim,), jnp.float32)
    windows = writer.init(envs, obs_spec, act_dim)
    online = buffer.init(transition_spec(obs_spec, act_dim))
    base_state = base.init_state(envs)  # FunctionBase: stateless apart from a step count

    @jax.jit
    def collect(state, windows, online, obs, key):
        base_action = normalizer.normalize_action(base.step(base_state, obs)[0])
        r, aux = learner.act(state, obs, base_action, key)
        next_obs = obs + 0.1 * aux["action"].sum(-1, keepdims=True)
        reward = (next_obs[:, 0] > 1.0).astype(jnp.float32)
        next_base = normalizer.normalize_action(base.step(base_state, next_obs)[0])
        windows, items, valid = writer.step(
            windows,
            obs,
            base_action,
            aux["action"],
            reward,
            next_obs,
            next_base,
            reward > 0,
            jnp.zeros(envs, bool),
        )
        return windows, buffer.add(online, items, valid), next_obs

    obs = jax.random.normal(jax.random.key(1), (envs, obs_dim))
    for t in range(12):
        windows, online, obs = collect(state, windows, online, obs, jax.random.key(10 + t))
    assert int(online.size) > 0
    before = state.critic_params
    update = jax.jit(lambda s, k: replay_updates(learner, s, mixer, online, demo_state, k, 2))
    state, metrics = update(state, jax.random.key(2))
    assert np.isfinite(float(metrics["critic_loss"]))
    assert int(state.critic_steps) == 2 * replay.utd
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, state.critic_params)
    assert any(jax.tree.leaves(changed))
