"""Stable import path of the ResFiT learner (``resfit_jax.agents.residual_td3``).

    from resfit_jax.residual_td3 import ResidualTD3Config, make_learner
"""
from resfit_jax.agents.residual_td3 import (CRITIC_LOSSES, PRESETS, LearnerState, ResidualTD3,
                                            ResidualTD3Config, make_learner)

__all__ = ["CRITIC_LOSSES", "PRESETS", "LearnerState", "ResidualTD3", "ResidualTD3Config",
           "make_learner"]
