"""Networks of residual TD3: the residual actor and the K-head ensemble critic.

Both modules live in ``resfit_jax.networks`` (shared blocks); this module picks and sizes
them from a ``ResidualTD3Config``.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn

from resfit_jax.agents.residual_td3.config import ResidualTD3Config
from resfit_jax.networks import AdvantageCritic, EnsembleCritic, ResidualActor


@dataclasses.dataclass(frozen=True)
class ResidualTD3Networks:
    """actor: (features [B, F], base action [B, A]) -> residual [B, A];
    critic: (features [B, F], combined action [B, A], base action [B, A]) -> Q [K, B]
    (``EnsembleCritic``, or ``AdvantageCritic`` with ``advantage_head``)."""

    actor: nn.Module
    critic: nn.Module


def make_networks(config: ResidualTD3Config, action_dim: int) -> ResidualTD3Networks:
    return ResidualTD3Networks(
        actor=ResidualActor(
            action_dim=int(action_dim),
            hidden_dims=tuple(config.actor_hidden_dims),
            action_scale=config.action_scale,
            layer_norm=config.layer_norm,
            zero_init_output=config.actor_zero_init,
        ),
        critic=(AdvantageCritic if config.advantage_head else EnsembleCritic)(
            num_heads=config.num_critics,
            hidden_dims=tuple(config.critic_hidden_dims),
            layer_norm=config.layer_norm,
        ),
    )
