"""Filtered BC's schedule (``FilteredBCConfig``) and its task preset (``filtered_bc_preset``:
ResFiT's budget and evaluation on the same task)."""

from __future__ import annotations

import dataclasses

from resfit_jax.run.validation import number_errors


@dataclasses.dataclass(frozen=True)
class FilteredBCConfig:
    """Filtered BC schedule. Env-step counts are totals over all parallel envs."""

    num_envs: int = 64  # episodes per round
    total_env_steps: int = 100_000  # budget (rounds charge num_envs x horizon each)
    lr: float = 5e-5
    batch_size: int = 1024
    steps_per_round: int = 100  # fine-tuning steps after each round's rollouts
    demo_fraction: float = 0.5  # share of every batch drawn from the demos
    capacity: int = 100_000  # kept success samples (the oldest are dropped)
    eval_every: int = 10_240
    eval_episodes: int = 100
    final_episodes: int | None = None  # held-out final evaluation (None: eval_episodes)
    num_demos: int | None = None
    action_margin: float = 0.0  # the action range of the evaluations' clipping
    obs_min_std: float = 2e-4

    def __post_init__(self):
        errors = number_errors(
            self,
            positive=("lr",),
            unit=("demo_fraction",),
            at_least_one=(
                "num_envs",
                "total_env_steps",
                "batch_size",
                "steps_per_round",
                "capacity",
                "eval_every",
                "eval_episodes",
            ),
        )
        if self.final_episodes is not None and self.final_episodes < 1:
            errors.append(f"final_episodes must be >= 1 or None (got {self.final_episodes})")
        if errors:
            raise ValueError("FilteredBCConfig: " + "; ".join(errors) + ".")

    @property
    def num_final_episodes(self) -> int:
        return self.eval_episodes if self.final_episodes is None else self.final_episodes


def filtered_bc_preset(task: str, **overrides) -> FilteredBCConfig:
    """The task's ResFiT CPU budget (main loop + warm-up collection), evaluation, and the
    action range and observation floor its base runs under (``action_margin``: PegInsertion
    widens the demos' range by 30%; clipping the base to the bare range costs it successes)."""
    from resfit_jax.sim.presets import preset

    r = preset(task, "cpu")
    return FilteredBCConfig(
        **{
            "total_env_steps": r.total_env_steps + r.warmup_env_steps,
            "eval_every": r.eval_every,
            "eval_episodes": r.eval_episodes,
            "final_episodes": r.final_episodes,
            "action_margin": r.action_margin,
            "obs_min_std": r.obs_min_std,
            **overrides,
        }
    )
