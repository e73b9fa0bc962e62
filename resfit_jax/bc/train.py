"""BC training: masked L1 on standardized action chunks, AdamW with a global-norm clip.

    trainer = make_trainer(config, obs_dim, action_dim, normalizer)
    state = trainer.init(key)                               # or trainer.init(key, params)
    state, metrics = trainer.train(state, data, num_steps)   # jitted scan of minibatch steps
    chunk = trainer.predict(state.params, obs [B, O])         # raw units [B, K, A]

A pixel base: ``cameras`` (name -> image shape [H, W, C]) and dict observations
{"state": [B, O], camera: uint8 [B, H, W, C]} (``resfit_jax.bc.networks``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from resfit_jax.bc.data import ChunkNormalizer, action_reference, sample_obs
from resfit_jax.bc.networks import BCConfig, make_network


@struct.dataclass
class BCState:
    params: Any
    opt_state: Any
    rng: jax.Array
    step: jax.Array


@dataclasses.dataclass(frozen=True)
class BCTrainer:
    config: BCConfig
    obs_dim: int
    action_dim: int
    normalizer: ChunkNormalizer
    init: Callable
    train: Callable
    predict: Callable
    loss: Callable
    cameras: dict | None = None


def make_predict(config: BCConfig, action_dim: int, normalizer: ChunkNormalizer):
    """``predict(params, obs [B, O]) -> raw chunk [B, K, A]`` (deterministic, no dropout)."""
    net = make_network(config, action_dim)

    def predict(params, obs):
        out = net.apply({"params": params}, normalizer.norm_obs(obs), train=False)
        ref = action_reference(obs, config.action_obs_index, action_dim)
        return normalizer.unnorm_action(out) + ref[:, None]

    return predict


def make_trainer(
    config: BCConfig,
    obs_dim: int,
    action_dim: int,
    normalizer: ChunkNormalizer,
    cameras: dict | None = None,
) -> BCTrainer:
    net = make_network(config, action_dim)
    tx = optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.adamw(config.lr, weight_decay=config.weight_decay),
    )

    def init(key, params=None):
        """A fresh state; ``params`` (e.g. a base's, to fine-tune it) replace the random ones."""
        k_init, k_rng = jax.random.split(key)
        if params is None:
            params = net.init(k_init, sample_obs(obs_dim, cameras), train=False)["params"]
        return BCState(
            params=params, opt_state=tx.init(params), rng=k_rng, step=jnp.zeros((), jnp.int32)
        )

    def loss(params, obs, chunk, mask, key):
        pred = net.apply(
            {"params": params}, normalizer.norm_obs(obs), train=True, rngs={"dropout": key}
        )
        ref = action_reference(obs, config.action_obs_index, action_dim)
        err = jnp.abs(pred - normalizer.norm_action(chunk - ref[:, None])).mean(-1)  # [B, K]
        return (err * mask).sum() / jnp.maximum(mask.sum(), 1.0)

    def train(state: BCState, data: dict, num_steps: int):
        n = data["chunk"].shape[0]

        def one(state, _):
            rng, k_idx, k_drop = jax.random.split(state.rng, 3)
            idx = jax.random.randint(k_idx, (config.batch_size,), 0, n)
            batch = jax.tree.map(lambda x: x[idx], data)
            value, g = jax.value_and_grad(loss)(
                state.params,
                batch["obs"],
                batch["chunk"],
                batch["mask"].astype(jnp.float32),
                k_drop,
            )
            updates, opt_state = tx.update(g, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            return BCState(params, opt_state, rng, state.step + 1), value

        state, losses = jax.lax.scan(one, state, None, length=num_steps)
        return state, {"l1": losses.mean(), "l1_last": losses[-1]}

    return BCTrainer(
        config,
        obs_dim,
        action_dim,
        normalizer,
        init,
        jax.jit(train, static_argnums=2),
        make_predict(config, action_dim, normalizer),
        loss,
        cameras,
    )
