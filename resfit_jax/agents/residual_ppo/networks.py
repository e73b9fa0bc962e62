"""Networks of residual PPO (the ResiP recipe): a Gaussian residual and a value function.

- ``GaussianResidual``: (features [B, F], base action [B, A]) -> (mean [B, A], log_std [A]).
  A 2x256 ReLU MLP whose output layer has no bias and zero kernel, so the mean is exactly 0
  at initialisation (base + residual = the base); log_std is one state-independent parameter
  vector (init -1.0), learned or held fixed (``ResidualPPOConfig.learn_log_std``).
- ``ValueNet``: (features [B, F], base action [B, A]) -> V [B]; output layer orthogonal gain
  0.25 with bias 0.25, as in the recipe.

Neither squashes: the residual sample is scaled by ``action_scale`` and the executed action
clip(a_b + scale * u, -1, 1) is clipped by the env step, as in ResiP.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resfit_jax.agents.residual_ppo.config import ResidualPPOConfig
from resfit_jax.networks import MLP


class GaussianResidual(nn.Module):
    action_dim: int
    hidden_dims: Sequence[int] = (256, 256)
    init_log_std: float = -1.0

    @nn.compact
    def __call__(self, features: jax.Array, base_action: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = jnp.concatenate([features, base_action], axis=-1)
        x = MLP(self.hidden_dims, layer_norm=False, init="orthogonal")(x)
        mean = nn.Dense(
            self.action_dim, use_bias=False, kernel_init=nn.initializers.zeros, name="mean"
        )(x)
        log_std = self.param(
            "log_std", nn.initializers.constant(self.init_log_std), (self.action_dim,)
        )
        return mean, log_std


class ValueNet(nn.Module):
    hidden_dims: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, features: jax.Array, base_action: jax.Array) -> jax.Array:
        x = jnp.concatenate([features, base_action], axis=-1)
        x = MLP(self.hidden_dims, layer_norm=False, init="orthogonal")(x)
        v = nn.Dense(
            1,
            kernel_init=nn.initializers.orthogonal(0.25),
            bias_init=nn.initializers.constant(0.25),
            name="value",
        )(x)
        return v[..., 0]


@dataclasses.dataclass(frozen=True)
class ResidualPPONetworks:
    actor: nn.Module
    critic: nn.Module


def make_networks(config: ResidualPPOConfig, action_dim: int) -> ResidualPPONetworks:
    return ResidualPPONetworks(
        actor=GaussianResidual(
            int(action_dim), tuple(config.actor_hidden_dims), config.init_log_std
        ),
        critic=ValueNet(tuple(config.critic_hidden_dims)),
    )
