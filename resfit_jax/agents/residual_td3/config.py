"""Residual TD3's hyperparameters (``ResidualTD3Config``): defaults are the paper's."""

from __future__ import annotations

import dataclasses

from resfit_jax.encoders import ENCODERS
from resfit_jax.run.validation import number_errors

CRITIC_LOSSES = ("mse", "release")
GATE_RULES = ("min", "lcb", "agree")


@dataclasses.dataclass(frozen=True)
class ResidualTD3Config:
    """Learner hyperparameters. Defaults are the paper's (single-arm tasks).

    ``critic_loss``: "mse" = mean over heads of each head's MSE to the shared target
    (standard); "release" = the reference code's mean_b((mean_k |Q_k - y|)^2).
    Returns and batches (n-step, gamma, truncation, UTD, batch size, demo fraction) are in
    ``replay.ReplayConfig``.
    """

    # networks
    actor_hidden_dims: tuple[int, ...] = (1024, 1024)
    critic_hidden_dims: tuple[int, ...] = (1024, 1024)
    num_critics: int = 10
    num_min_critics: int = 2
    layer_norm: bool = True
    # Q(s, a) = V(s, a_b) + A(s, a) - A(s, a_b): the part of the critic that ranks
    # corrections fits only their effect, and Q at the base action is V exactly
    advantage_head: bool = False
    action_scale: float = 0.1
    # the actor's output layer starts at zero (residual = 0 at init; False: default init,
    # as the no-base RLPD baseline uses)
    actor_zero_init: bool = True
    # actor loss += residual_penalty * mean((r / action_scale)^2): holds the residual at 0
    # where the critic's action gradient is weak (0 = the paper's objective)
    residual_penalty: float = 0.0
    # the actor maximises mean_k Q_k - actor_pessimism * std_k(Q_k(s, a_b + r) - Q_k(s, a_b)):
    # a correction counts only as far as the heads agree on its effect (0 = the paper's
    # mean over heads)
    actor_pessimism: float = 0.0
    # optimisation (AdamW, global-norm clip per module group)
    actor_lr: float = 1e-6
    critic_lr: float = 1e-4
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    tau: float = 0.005
    # exploration and target-policy smoothing (normalized action units)
    exploration_std: float = 0.05
    target_noise: bool = True
    target_noise_clip: float = 0.3
    critic_loss: str = "mse"
    # weight of demo states in the actor loss (1 = the paper's symmetric batch, 0 = actor
    # updates on online states only)
    actor_demo_weight: float = 1.0
    # value gate: execute a_b + g * r, g = 1 where a pessimistic Q says the residual beats the
    # base by more than gate_tau (-inf: no gate, the paper's ResFiT); rule "min" = min over a
    # random subset of num_min_critics heads, "lcb" = mean - gate_k * std over all heads,
    # "agree" = every head's paired advantage Q_k(a_b + r) - Q_k(a_b) > gate_tau (the actor
    # maximises Q, so a gate on the same critic's values without pairing is nearly always open)
    gate_tau: float = float("-inf")
    gate_rule: str = "min"
    gate_k: float = 1.0
    # the last entry of the observation's state vector (raw, 0 or 1) says where the residual
    # acts; the residual is multiplied by it in acting and in the TD target, and the actor
    # learns on the states where it is 1 (the sim loop's hold mode, ``residual_hold``)
    residual_mask: bool = False
    # the entries of the env's action the residual corrects (() = all): elsewhere the actor's
    # output, its exploration, the warm-up noise, the target policy's noise and the demos'
    # relabelled corrections are 0, so the base acts alone there (e.g. one arm of two)
    residual_dims: tuple[int, ...] = ()
    # raise a clear error inside every update when a batch or a loss is not finite (a host
    # callback: a device-to-host sync per update). Loops check every chunk in any case.
    check_finite: bool = True
    # pixel observations (camera fields uint8 [H, W, C] in the obs spec; ``encoders``): one
    # "conv" (DrQ-v2) or "vit" encoder per camera with camera_feature_dim outputs, trained by
    # the critic loss; DrQ random shift of augment_pad pixels on obs and next obs in updates
    encoder: str = "conv"
    camera_feature_dim: int = 64
    augment_pad: int = 4

    def __post_init__(self):
        errors = number_errors(
            self,
            allow_neg_inf=("gate_tau",),
            positive=("actor_lr", "critic_lr", "max_grad_norm"),
            non_negative=(
                "weight_decay",
                "exploration_std",
                "target_noise_clip",
                "gate_k",
                "actor_pessimism",
            ),
        )
        if self.num_critics < 1:
            errors.append(f"num_critics must be >= 1 (got {self.num_critics})")
        if not 1 <= self.num_min_critics <= self.num_critics:
            errors.append(
                f"num_min_critics must be in [1, num_critics={self.num_critics}] "
                f"(got {self.num_min_critics})"
            )
        if self.critic_loss not in CRITIC_LOSSES:
            errors.append(f"critic_loss must be one of {CRITIC_LOSSES} (got {self.critic_loss!r})")
        if not 0.0 <= self.actor_demo_weight <= 1.0:
            errors.append(f"actor_demo_weight must be in [0, 1] (got {self.actor_demo_weight})")
        if self.gate_rule not in GATE_RULES:
            errors.append(f"gate_rule must be one of {GATE_RULES} (got {self.gate_rule!r})")
        if self.gate_tau != self.gate_tau or self.gate_tau == float("inf"):
            errors.append(
                f"gate_tau must be a number < inf, or -inf for no gate (got {self.gate_tau})"
            )
        if not 0.0 < self.action_scale <= 1.0:
            errors.append(f"action_scale must be in (0, 1] (got {self.action_scale})")
        if self.residual_penalty < 0.0:
            errors.append(f"residual_penalty must be >= 0 (got {self.residual_penalty})")
        if not 0.0 < self.tau <= 1.0:
            errors.append(f"tau must be in (0, 1] (got {self.tau})")
        if any(int(d) < 1 for d in tuple(self.actor_hidden_dims) + tuple(self.critic_hidden_dims)):
            errors.append("hidden dims must be >= 1")
        if self.encoder not in ENCODERS:
            errors.append(f"encoder must be one of {ENCODERS} (got {self.encoder!r})")
        if self.camera_feature_dim < 1 or self.augment_pad < 0:
            errors.append(
                f"camera_feature_dim must be >= 1 and augment_pad >= 0 (got "
                f"{self.camera_feature_dim}, {self.augment_pad})"
            )
        dims = tuple(self.residual_dims)
        if any(int(d) != d or d < 0 for d in dims) or len(set(dims)) != len(dims):
            errors.append(
                f"residual_dims must be distinct action entries >= 0, or () for all (got {dims})"
            )
        if errors:
            raise ValueError("ResidualTD3Config: " + "; ".join(errors) + ".")

    @classmethod
    def small(cls, **overrides) -> ResidualTD3Config:
        """2x256 actor and critic with actor lr 1e-4 (the paper's 1e-6 barely moves a residual
        in a CPU-sized budget), the rest the paper's: a size for tests and for one's own code
        on a laptop. Not a task preset: ``sim.presets.preset(task)`` holds each task's tuned
        settings, this learner's included."""
        base = dict(actor_hidden_dims=(256, 256), critic_hidden_dims=(256, 256), actor_lr=1e-4)
        base.update(overrides)
        return cls(**base)
