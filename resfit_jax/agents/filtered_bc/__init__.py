"""Filtered BC (the ResFiT paper's baseline): rounds of base rollouts, the successes kept (cut
at the first success) and the base fine-tuned on demos + successes with its chunked L1 loss;
every env step of the rollouts counts against the budget. It tunes the base itself, so it has
no residual learner: ``trainer`` runs its rounds through the simulated trainer's phases.
"""

from resfit_jax.agents.filtered_bc.config import FilteredBCConfig, filtered_bc_preset
from resfit_jax.agents.filtered_bc.trainer import (
    FilteredBCTrainer,
    make_filtered_bc,
    train_filtered_bc,
)

__all__ = [
    "FilteredBCConfig",
    "FilteredBCTrainer",
    "filtered_bc_preset",
    "make_filtered_bc",
    "train_filtered_bc",
]
