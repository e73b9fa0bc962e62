"""Residual PPO's configuration in simulation: ``PPOTrainConfig`` and one preset per task.

    cfg = ppo_preset("PickPlace", "cpu")          # 256 envs, 10M env steps
    cfg = apply_overrides(cfg, ["learner.update_epochs=20", "num_envs=512"])

The learner follows the ResiP recipe (``ResidualPPOConfig``: 2x256 MLPs, fixed log-std -1,
gamma 0.999, GAE 0.95, one full-batch minibatch, 50 epochs with an approx-KL stop at 0.1,
AdamW 3e-4 / 5e-3 with a cosine, grad clip 1, time-outs done). Two things follow our tasks
rather than the recipe, so both methods share a base and an action space: the residual scale
is the task's ResFiT bound (0.05 on the arm tasks, 0.1 on PointReach), and the demo-fitted
normalization (action range, observation floor) is ResFiT's.
A rollout is one episode horizon of every env (the recipe's iteration); envs continue
across iterations. Scales: "cpu" (256 envs, the 2-core machine) and "accelerator" (4096
envs, 50M env steps on PickPlace; one GPU).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from resfit_jax.agents.residual_ppo import ResidualPPOConfig
from resfit_jax.run.validation import number_errors
from resfit_jax.sim.config import BaseExecution, ResidualOptions

PPO_SCALES = ("cpu", "accelerator")


@dataclasses.dataclass(frozen=True)
class PPOTrainConfig:
    """Residual PPO schedule. Env-step counts are totals over all parallel envs (per seed)."""

    learner: ResidualPPOConfig = ResidualPPOConfig()
    num_envs: int = 256
    rollout_length: int | None = None  # vector steps per iteration (None: the task horizon)
    total_env_steps: int = 10_000_000
    eval_every: int = 500_000  # env steps between evaluations (at iteration ends)
    eval_episodes: int = 100
    final_episodes: int | None = None
    # the same inputs as ResFiT's TrainConfig (sim.config); of the residual's options, PPO
    # takes the base's chunk phase and plan as inputs
    num_demos: int | None = None
    action_margin: float = 0.0
    obs_min_std: float = 2e-4
    base: BaseExecution = BaseExecution()
    residual: ResidualOptions = ResidualOptions()

    def __post_init__(self):
        errors = number_errors(
            self,
            at_least_one=("num_envs", "total_env_steps", "eval_every", "eval_episodes"),
            non_negative=("action_margin",),
        )
        if self.rollout_length is not None and self.rollout_length < 1:
            errors.append(f"rollout_length must be >= 1 or None (got {self.rollout_length})")
        if not 0.0 < self.obs_min_std < float("inf"):
            errors.append(f"obs_min_std must be > 0 (got {self.obs_min_std})")
        if self.final_episodes is not None and self.final_episodes < 1:
            errors.append(f"final_episodes must be >= 1 or None (got {self.final_episodes})")
        if self.num_demos is not None and self.num_demos < 1:
            errors.append(f"num_demos must be >= 1 or None (got {self.num_demos})")
        if self.base.temporal_ensemble is not None and self.residual.base_phase:
            errors.append("residual.base_phase has no meaning with base.temporal_ensemble")
        inputs_only = ResidualOptions(
            base_phase=self.residual.base_phase, base_plan=self.residual.base_plan
        )
        if self.residual != inputs_only:
            errors.append(
                "residual PPO takes residual.base_phase and residual.base_plan; the "
                "other residual options are ResFiT's"
            )
        if errors:
            raise ValueError("PPOTrainConfig: " + "; ".join(errors) + ".")

    @property
    def num_final_episodes(self) -> int:
        return self.eval_episodes if self.final_episodes is None else self.final_episodes

    def iterations(self, horizon: int) -> int:
        """PPO iterations of the run: total_env_steps in whole rollouts (at least one)."""
        return max(1, self.total_env_steps // (self.num_envs * (self.rollout_length or horizon)))

    def replace(self, **kw) -> PPOTrainConfig:
        return dataclasses.replace(self, **kw)


def _ppo(
    action_scale: float, num_envs: int, total_env_steps: int, eval_every: int
) -> PPOTrainConfig:
    return PPOTrainConfig(
        learner=ResidualPPOConfig(action_scale=action_scale),
        num_envs=num_envs,
        total_env_steps=total_env_steps,
        eval_every=eval_every,
    )


def point_reach(scale: str = "cpu") -> PPOTrainConfig:
    """PointReach: 2M env steps on the CPU (ResFiT's preset: 20k)."""
    if scale == "accelerator":
        return _ppo(0.1, 4096, 20_000_000, 1_000_000)
    return _ppo(0.1, 256, 2_000_000, 128_000)


def pick_place(scale: str = "cpu") -> PPOTrainConfig:
    """PickPlace: 10M env steps at 256 envs on the CPU; 50M at 4096 envs on an accelerator."""
    if scale == "accelerator":
        return _ppo(0.05, 4096, 50_000_000, 2_000_000)
    return _ppo(0.05, 256, 10_000_000, 500_000)


def peg_insertion(scale: str = "cpu") -> PPOTrainConfig:
    cfg = pick_place(scale)
    return cfg.replace(action_margin=0.3)  # as ResFiT's preset (sim.presets.peg_insertion)


def bimanual_handover(scale: str = "cpu") -> PPOTrainConfig:
    return pick_place(scale)


PPO_PRESETS: dict[str, Callable[[str], PPOTrainConfig]] = {
    "PointReach": point_reach,
    "PickPlace": pick_place,
    "PegInsertion": peg_insertion,
    "BimanualHandover": bimanual_handover,
}
# the delta end-effector variants (PickPlaceEE, ...) use their joint task's preset, as ResFiT's
PPO_PRESETS.update(
    {f"{name}EE": PPO_PRESETS[name] for name in ("PickPlace", "PegInsertion", "BimanualHandover")}
)


def ppo_preset(task: str, scale: str = "cpu", **overrides) -> PPOTrainConfig:
    if scale not in PPO_SCALES:
        raise ValueError(f"Unknown scale {scale!r}; choose one of {PPO_SCALES}.")
    if task not in PPO_PRESETS:
        raise ValueError(f"No residual-PPO preset for task {task!r}; known: {sorted(PPO_PRESETS)}.")
    cfg = PPO_PRESETS[task](scale)
    return dataclasses.replace(cfg, **overrides) if overrides else cfg
