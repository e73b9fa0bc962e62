"""ResFiT: residual TD3 on a frozen base (config, networks, losses, learner)."""

from resfit_jax.agents.residual_td3.config import CRITIC_LOSSES, GATE_RULES, ResidualTD3Config
from resfit_jax.agents.residual_td3.learner import LearnerState, ResidualTD3, make_learner
from resfit_jax.agents.residual_td3.losses import ResidualTD3Losses, flatten_obs, make_losses
from resfit_jax.agents.residual_td3.networks import ResidualTD3Networks, make_networks

__all__ = [
    "CRITIC_LOSSES",
    "GATE_RULES",
    "LearnerState",
    "ResidualTD3",
    "ResidualTD3Config",
    "ResidualTD3Losses",
    "ResidualTD3Networks",
    "flatten_obs",
    "make_learner",
    "make_losses",
    "make_networks",
]
