"""Residual PPO (ResiP): an on-policy Gaussian residual on a frozen base (the baseline that
ResFiT's sample efficiency is measured against)."""

from resfit_jax.agents.residual_ppo.config import ResidualPPOConfig
from resfit_jax.agents.residual_ppo.learner import (
    FINITE_FIELDS,
    PPOState,
    ResidualPPO,
    Rollout,
    make_ppo,
)
from resfit_jax.agents.residual_ppo.losses import (
    PPOBatch,
    gae,
    gaussian_entropy,
    gaussian_log_prob,
    make_losses,
)
from resfit_jax.agents.residual_ppo.networks import ResidualPPONetworks, make_networks

__all__ = [
    "FINITE_FIELDS",
    "PPOBatch",
    "PPOState",
    "ResidualPPO",
    "ResidualPPOConfig",
    "ResidualPPONetworks",
    "Rollout",
    "gae",
    "gaussian_entropy",
    "gaussian_log_prob",
    "make_losses",
    "make_networks",
    "make_ppo",
]
