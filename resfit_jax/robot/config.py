"""``RobotTrainConfig``: the settings of a robot run (``robot.trainer``)."""

from __future__ import annotations

import dataclasses

from resfit_jax.agents.residual_td3 import ResidualTD3Config
from resfit_jax.replay import ReplayConfig
from resfit_jax.replay.decision_demos import DEMO_RELABELS
from resfit_jax.robot.loop import LoopConfig
from resfit_jax.run.validation import number_errors


@dataclasses.dataclass(frozen=True)
class RobotTrainConfig:
    """A robot run's settings: learner, replay, loop timing, learner mode (``mode``,
    ``sync_every``, ``updates_per_step`` per stored transition: a control step, or a
    decision with ``decision_steps`` > 1; async ``max_update_ratio`` per control step),
    phases (``warmup_episodes`` with ``warmup_noise``, ``critic_warmup_updates``), when to
    learn (``min_replay`` stored transitions) and save (``checkpoint_every`` episodes), and
    the semi-MDP residual (``decision_steps`` k > 1, ``mc_bound``, ``demo_relabel``:
    ``robot.inputs``)."""

    learner: ResidualTD3Config = dataclasses.field(default_factory=ResidualTD3Config.small)
    replay: ReplayConfig = dataclasses.field(default_factory=lambda: ReplayConfig(capacity=100_000))
    loop: LoopConfig = dataclasses.field(default_factory=LoopConfig)
    mode: str = "sync"  # "sync" | "async"
    sync_every: str = "episode"  # "step" | "episode" (sync mode)
    updates_per_step: int = 1  # learner updates per stored transition (sync mode)
    max_update_ratio: float | None = None  # async: cap on updates per collected env step
    warmup_episodes: int = 2
    warmup_noise: float = 0.0
    critic_warmup_updates: int = 500
    min_replay: int = 64
    failure_is_terminal: bool = True
    checkpoint_every: int = 1
    seed: int = 0
    decision_steps: int = 1  # semi-MDP: the residual decides every k steps (k | chunk)
    mc_bound: bool = False  # semi-MDP: Monte-Carlo lower bound on the critic's target
    demo_relabel: str = "offset"  # semi-MDP demo windows: "offset" or "base"

    def __post_init__(self):
        errors = number_errors(
            self,
            non_negative=("warmup_noise", "critic_warmup_updates"),
            at_least_one=("min_replay",),
            positive=("max_update_ratio",),
        )
        if errors:
            raise ValueError("RobotTrainConfig: " + "; ".join(errors) + ".")
        if self.mode not in ("sync", "async"):
            raise ValueError(f"RobotTrainConfig.mode must be 'sync' or 'async', got {self.mode!r}.")
        if self.sync_every not in ("step", "episode"):
            raise ValueError(
                f"RobotTrainConfig.sync_every must be 'step' or 'episode', got {self.sync_every!r}."
            )
        if self.decision_steps < 1:
            raise ValueError(
                f"RobotTrainConfig.decision_steps must be >= 1, got {self.decision_steps}."
            )
        if self.mc_bound and (self.decision_steps < 2 or self.replay.n_step != 1):
            raise ValueError(
                "RobotTrainConfig.mc_bound needs semi-MDP decisions (decision_steps > 1) "
                "and one decision per return (replay.n_step=1)."
            )
        if self.demo_relabel not in DEMO_RELABELS:
            raise ValueError(
                f"RobotTrainConfig.demo_relabel must be one of {DEMO_RELABELS}, "
                f"got {self.demo_relabel!r}."
            )
        if self.updates_per_step < 0 or self.warmup_episodes < 0 or self.checkpoint_every < 1:
            raise ValueError(
                "RobotTrainConfig: updates_per_step and warmup_episodes must be "
                ">= 0 and checkpoint_every >= 1."
            )
