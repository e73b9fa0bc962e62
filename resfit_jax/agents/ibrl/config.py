"""IBRL's hyperparameters (``IBRLConfig``): residual TD3's fields with IBRL's defaults, plus
how the critic picks between the base's and the RL actor's proposals."""

from __future__ import annotations

import dataclasses

from resfit_jax.agents.residual_td3.config import ResidualTD3Config

RULES = ("greedy", "soft")


@dataclasses.dataclass(frozen=True)
class IBRLConfig(ResidualTD3Config):
    """Residual TD3's fields with IBRL's defaults, plus the selection ``rule`` and ``beta``.
    ``action_scale`` is the range of the actor's own action (1.0: the full range)."""

    num_critics: int = 5
    action_scale: float = 1.0
    actor_zero_init: bool = False
    actor_lr: float = 1e-4
    tau: float = 0.01
    exploration_std: float = 0.1
    rule: str = "soft"
    beta: float = 10.0

    def __post_init__(self):
        super().__post_init__()
        errors = []
        if self.rule not in RULES:
            errors.append(f"rule must be one of {RULES} (got {self.rule!r})")
        if not 0.0 <= self.beta < float("inf"):
            errors.append(f"beta must be >= 0 (got {self.beta})")
        if self.advantage_head:
            errors.append("advantage_head is residual TD3's option; IBRL's critic has none")
        if self.actor_pessimism > 0:
            errors.append("actor_pessimism is residual TD3's option; IBRL's actor has none")
        if self.gate_tau > float("-inf"):
            errors.append(
                "IBRL picks between the base and the actor; the value gate "
                "(gate_tau) is residual TD3's option"
            )
        if self.residual_penalty > 0:
            errors.append("residual_penalty is residual TD3's option (IBRL has no residual)")
        if errors:
            raise ValueError("IBRLConfig: " + "; ".join(errors) + ".")
