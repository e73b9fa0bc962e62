"""The residual-PPO driver in simulation: the same run directory, evaluation and outputs as
ResFiT's (``sim.trainer``), with PPO's one training phase.

    trainer = make_ppo_trainer(task, base, demos, ppo_preset("PickPlace"), seeds=[0, 1, 2])
    summary = train_residual_ppo(trainer, out="runs/ppo/pp")

Phases: "train" (jitted PPO iterations vmapped over seeds: rollout + update; periodic
evaluation every ``eval_every`` env steps on the same matched starts as ResFiT's, with a
checkpoint each time), then "final_eval" on the held-out starts (shared with ResFiT's
trainer). The demos are used only to fit the normalizer, exactly as ResFiT fits it, so the
base, its action space and the evaluation starts are identical for both methods.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax

from resfit_jax.agents.residual_ppo import FINITE_FIELDS, make_ppo
from resfit_jax.base.features import learner_obs_spec
from resfit_jax.base.policy import BasePolicy
from resfit_jax.data.rlds import Episode
from resfit_jax.envs.core import Env
from resfit_jax.normalization import Normalizer
from resfit_jax.sim.evaluation import Evaluator, make_evaluator
from resfit_jax.sim.inputs import prepare_inputs
from resfit_jax.sim.phases import RunOptions, final_eval_phase, iteration_phase, run_phases
from resfit_jax.sim.ppo_loop import PPOLoop
from resfit_jax.sim.ppo_presets import PPOTrainConfig
from resfit_jax.sim.progress import Run


@dataclasses.dataclass
class PPOTrainer:
    """Residual PPO's compiled iteration and evaluations (a ``phases.PhasedTrainer``)."""

    task: Env
    loop: PPOLoop
    cfg: PPOTrainConfig
    normalizer: Normalizer
    seeds: list[int]
    evaluator: Evaluator
    offline: Any = None
    method: str = "ResidualPPO"
    first_phase: str = "train"
    finite_fields: tuple[str, ...] = FINITE_FIELDS
    starts_at_base: bool = True  # the Gaussian's mean is exactly 0 at init

    def __post_init__(self):
        self.iterate = jax.jit(jax.vmap(self.loop.iteration), donate_argnums=0)

    @property
    def env_steps_per_chunk(self) -> int:
        return self.loop.env_steps_per_iteration

    @property
    def iterations(self) -> int:
        return self.loop.learner.num_iterations

    def init(self):
        learner, normalizer = self.loop.learner, self.normalizer

        def one(key):
            k_loop, k_learn = jax.random.split(key)
            return self.loop.init(k_loop, learner.init(k_learn, normalizer))

        return jax.jit(jax.vmap(one))(self.evaluator.keys())


def make_ppo_trainer(
    task: Env,
    base: BasePolicy,
    episodes: Sequence[Episode],
    cfg: PPOTrainConfig,
    seeds: Sequence[int],
) -> PPOTrainer:
    """Normalizer and base features as ResFiT's ``make_trainer``, then the PPO loop."""
    inp = prepare_inputs(task, base, episodes, cfg, cfg.learner.action_scale)
    rollout = cfg.rollout_length or inp.task.horizon
    spec = learner_obs_spec(inp.task.observation_spec, inp.features, None, inp.task.action_size)
    ppo = make_ppo(cfg.learner, spec, inp.task.action_size, cfg.iterations(inp.task.horizon))
    loop = PPOLoop(inp.task, inp.base, ppo, cfg.num_envs, rollout, inp.features)
    evaluator = make_evaluator(
        inp.task, seeds, cfg.eval_episodes, cfg.num_final_episodes, inp.base, ppo, inp.features
    )
    return PPOTrainer(inp.task, loop, cfg, inp.normalizer, list(seeds), evaluator)


def _ppo_train_phase(run: Run) -> bool:
    """PPO iterations (rollout + update), evaluated every eval_every env steps."""
    return iteration_phase(run, "residual PPO", run.trainer.iterate)


PPO_PHASES = {"train": _ppo_train_phase, "final_eval": final_eval_phase}


def train_residual_ppo(trainer: PPOTrainer, out: str, **options: Any) -> dict:
    """Run (or resume) residual PPO; the same outputs, locking, resume rules and ``options``
    (``phases.RunOptions``) as ``sim.trainer.train_residual``."""
    return run_phases(trainer, PPO_PHASES, out, RunOptions(**options))
