"""IBRL baseline: the base and an RL actor propose, the critic picks (config, losses,
learner)."""

from resfit_jax.agents.ibrl.config import RULES, IBRLConfig
from resfit_jax.agents.ibrl.learner import IBRL, make_ibrl
from resfit_jax.agents.ibrl.losses import IBRLLosses, choose, make_ibrl_losses

__all__ = ["IBRL", "IBRLConfig", "IBRLLosses", "RULES", "choose", "make_ibrl", "make_ibrl_losses"]
