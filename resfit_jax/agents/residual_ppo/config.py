"""Residual PPO's hyperparameters (``ResidualPPOConfig``): the ResiP recipe's defaults."""

from __future__ import annotations

import dataclasses

from resfit_jax.run.validation import number_errors


@dataclasses.dataclass(frozen=True)
class ResidualPPOConfig:
    """Hyperparameters; defaults are the ResiP recipe's except
    ``action_scale``, which the presets set to the task's ResFiT residual bound so both
    methods correct the base by the same amount."""

    actor_hidden_dims: tuple[int, ...] = (256, 256)
    critic_hidden_dims: tuple[int, ...] = (256, 256)
    action_scale: float = 0.1
    init_log_std: float = -1.0
    learn_log_std: bool = False  # fixed with a diffusion base, learned (-1.5) with an MLP
    # optimisation: AdamW per network after a global-norm clip; cosine over the iterations
    actor_lr: float = 3e-4
    critic_lr: float = 5e-3
    weight_decay: float = 1e-6
    adam_eps: float = 1e-5
    max_grad_norm: float = 1.0
    cosine_decay: bool = True
    actor_warmup_iterations: int = 5
    # returns and the update
    gamma: float = 0.999
    gae_lambda: float = 0.95
    bootstrap_truncation: bool = False  # False: a time-out is done (the recipe)
    clip_eps: float = 0.2
    target_kl: float | None = 0.1  # None: no early stop
    update_epochs: int = 50
    num_minibatches: int = 1
    vf_coef: float = 1.0
    ent_coef: float = 0.0
    normalize_advantages: bool = True

    def __post_init__(self):
        errors = number_errors(
            self,
            positive=(
                "action_scale",
                "actor_lr",
                "critic_lr",
                "adam_eps",
                "max_grad_norm",
                "clip_eps",
            ),
            non_negative=("weight_decay", "actor_warmup_iterations", "vf_coef", "ent_coef"),
            at_least_one=("update_epochs", "num_minibatches"),
            unit=("gamma", "gae_lambda"),
        )
        if self.target_kl is not None and not self.target_kl > 0:
            errors.append(f"target_kl must be > 0 or None (got {self.target_kl})")
        if any(int(d) < 1 for d in tuple(self.actor_hidden_dims) + tuple(self.critic_hidden_dims)):
            errors.append("hidden dims must be >= 1")
        if errors:
            raise ValueError("ResidualPPOConfig: " + "; ".join(errors) + ".")
