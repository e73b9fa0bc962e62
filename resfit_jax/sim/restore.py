"""A finished ResFiT or residual-PPO training run, reopened: its trainer rebuilt from
config.json (the method's preset plus recorded overrides, checked against the config it
trained with) and its learner states restored from the latest checkpoint, for replays
(``studies.failure_modes``) and for distillation (``bc.distill``).

    trained = open_trained_run("runs/probes/ee_chunk", state="kept")
    policy = trained.policy(seed_index=0)            # the base + residual of seed 0
    base = trained.policy(seed_index=0, residual=False)
    policy = trained.make_policy(learner_state, normalizer)   # inside vmap over seeds
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax

PyTree = Any


@dataclasses.dataclass
class TrainedRun:
    """``info``: the run's config.json; ``cfg``: its TrainConfig (residual PPO: its
    PPOTrainConfig); ``trainer``: rebuilt on its base and demos; ``learner_state``: [S] per seed
    (None when opened ``base_only``); ``progress``: the checkpoint's progress
    (``state_env_steps``: where the restored state was taken); ``directory``: the run's."""

    info: dict
    cfg: Any
    trainer: Any
    learner_state: PyTree | None
    progress: dict
    directory: str = ""

    @property
    def method(self) -> str:
        """The run's method as ``sim.runs.METHODS`` names it: "resfit" or "ppo"."""
        return REOPENED_METHODS[self.info.get("method", "resfit")]

    @property
    def seeds(self) -> list[int]:
        return list(self.info["seeds"])

    @property
    def summary(self) -> dict:
        """The run's summary.json ({} before the run finished)."""
        path = os.path.join(self.directory, "summary.json")
        if not os.path.exists(path):
            return {}
        with open(path) as f:
            return json.load(f)

    def normalizer(self, seed_index: int = 0):
        """The normalizer of seed ``seed_index``'s learner (the trainer's without a state)."""
        if self.learner_state is None:
            return self.trainer.normalizer
        return jax.tree.map(lambda x: x[seed_index], self.learner_state.normalizer)

    def make_policy(self, learner_state: PyTree | None, normalizer: Any):
        """A ``BasePolicy`` (jittable; build it inside vmap for a batch of seeds): the base +
        the deterministic residual of one seed's ``learner_state``, or the base alone (None)."""
        from resfit_jax.base.residual import ResidualPolicy

        loop = self.trainer.loop
        learner = None if learner_state is None else loop.learner
        offsets = getattr(loop, "offsets", None)  # residual PPO acts every step
        return ResidualPolicy(loop.base, normalizer, learner, learner_state, loop.features, offsets)

    def policy(self, seed_index: int = 0, residual: bool = True):
        """Seed ``seed_index``'s base + residual, or its base alone (``residual=False``)."""
        state = None
        if residual and self.learner_state is not None:
            state = jax.tree.map(lambda x: x[seed_index], self.learner_state)
        return self.make_policy(state, self.normalizer(seed_index))


# config.json's "method" -> sim.runs' method name, for the methods whose runs reopen here (a
# residual on the base: ResFiT and residual PPO)
REOPENED_METHODS = {"resfit": "resfit", "ResidualPPO": "ppo"}


def open_trained_run(run: str, base_only: bool = False, state: str = "kept") -> TrainedRun:
    """Reopen ``run`` (see the module docstring). ``state``: "kept" (each seed's kept state
    under ``select.rule="best"``, else the last) or "last". Raises FileNotFoundError /
    ValueError naming the problem."""
    from resfit_jax import envs
    from resfit_jax.bc.frozen import open_base
    from resfit_jax.data import read_episodes
    from resfit_jax.run.checkpointing import RunCheckpointer
    from resfit_jax.run.configs import apply_overrides, config_differences
    from resfit_jax.sim.progress import PLACEMENT, keeps_best
    from resfit_jax.sim.runs import method_preset, method_trainer

    if state not in ("kept", "last"):
        raise ValueError(f"state must be 'kept' or 'last', got {state!r}.")
    if not os.path.exists(os.path.join(run, "config.json")):
        raise FileNotFoundError(
            f"--run={run} holds no config.json: give the directory of a finished training run "
            "(experiments.train --out, or a setting's directory of studies.ablate)."
        )
    with open(os.path.join(run, "config.json")) as f:
        info = json.load(f)
    method = REOPENED_METHODS.get(info.get("method", "resfit"))
    if method is None:
        raise ValueError(
            f"{run} is a {info.get('method')} run; only ResFiT and residual PPO runs (a "
            "residual on the base) can be reopened here."
        )
    task = envs.make(info["task"])
    scale, overrides = info.get("scale", "cpu"), info.get("overrides", [])
    cfg = apply_overrides(method_preset(method, info["task"], scale), overrides)
    differences = (
        config_differences(info.get("config", {}), cfg, PLACEMENT) if "config" in info else []
    )
    if differences:
        raise ValueError(
            f"{run}: the preset plus its recorded overrides no longer give the config it "
            f"trained with ({'; '.join(differences[:5])}); this replay would not be that run."
        )
    base, _ = open_base(info["base"], int(task.observation_spec.shape[0]), task.action_size)
    inputs = (task, base, read_episodes(info["demos"]))
    trainer, _ = method_trainer(method, info["task"], inputs, info["seeds"], overrides, scale)
    prog: dict = {"env_steps": 0}
    learner_state = None
    if not base_only:
        ckpt = RunCheckpointer(os.path.join(run, "checkpoints"))
        template = {"loop": trainer.init(), "offline": trainer.offline}
        kept = keeps_best(cfg)
        if kept:  # the tree the trainer saves (sim/progress.py)
            template["best"] = template["loop"].learner_state
        restored, prog = ckpt.restore(template)
        ckpt.close()
        learner_state = restored["loop"].learner_state
        if state == "kept" and kept:
            learner_state = restored["best"]
            prog = dict(prog, state_env_steps=prog.get("best_env_steps"))
    return TrainedRun(info, cfg, trainer, learner_state, prog, os.path.abspath(run))
