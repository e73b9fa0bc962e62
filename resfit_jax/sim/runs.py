"""Runs of any method, as the training entry point and the studies use them: their inputs
(task, base, demos), each method's preset and trainer, train-or-resume, and the state of
the run directories they train into.

    task, base, episodes, identity = open_inputs("PickPlace", "runs/bc/PickPlace", None)
    finished(run) / has_checkpoint(run) / run_identity(run)

``base="scripted"`` on PointReach is the biased scripted base with 60 expert demos (pure JAX,
fast: the benchmarks' laptop-sized default).
"""

from __future__ import annotations

import json
import os
from typing import Any


def open_inputs(
    task_name: str, base: str | None, demos: str | None
) -> tuple[Any, Any, list, dict, dict]:
    """(task, base policy, demo episodes, identity, paths): identity holds the content hashes
    that every run on these inputs records (runs on other inputs are refused); paths the
    base and demo directories ("scripted" for the scripted base)."""
    from resfit_jax import envs

    task = envs.make(task_name)
    if base == "scripted":
        if task_name != "PointReach":
            raise ValueError("--base=scripted exists only for PointReach.")
        from resfit_jax.base.policy import FunctionBase
        from resfit_jax.data.demos import collect_episodes, make_rollout
        from resfit_jax.envs.point_reach import biased_base_action

        expert = envs.make_expert("PointReach", task, envs.ExpertStyle())
        episodes, _ = collect_episodes(make_rollout(task, expert.init, expert.act), 60, 30)
        return (
            task,
            FunctionBase(biased_base_action, 2),
            episodes,
            {"base": "scripted"},
            {"base": "scripted", "demos": "scripted"},
        )
    from resfit_jax.bc.frozen import open_base_and_demos
    from resfit_jax.run.checkpointing import content_hash

    policy, info, demo_dir, episodes = open_base_and_demos(
        base or os.path.join("runs", "bc", task_name),
        demos,
        int(task.observation_spec.shape[0]),
        task.action_size,
    )
    return (
        task,
        policy,
        episodes,
        {"base": content_hash(info["path"]), "demos": content_hash(demo_dir)},
        {"base": info["path"], "demos": demo_dir},
    )


def finished(run: str) -> bool:
    """The run's summary says it completed (held-out final evaluation included)."""
    path = os.path.join(run, "summary.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return bool(json.load(f).get("complete", False))


def has_checkpoint(run: str) -> bool:
    from resfit_jax.run.checkpointing import RunCheckpointer

    return RunCheckpointer(os.path.join(run, "checkpoints")).latest_step() is not None


def run_identity(run: str) -> dict | None:
    path = os.path.join(run, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f).get("identity")


def run_action_range(run: str) -> dict | None:
    """The settings that set the range the run's actions (the base's included) are clipped
    to and its observation floor: {"action_margin", "obs_min_std"}, or None before it starts."""
    path = os.path.join(run, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        cfg = json.load(f).get("config", {})
    return {k: cfg.get(k) for k in ("action_margin", "obs_min_std")}


def check_same_action_range(runs: dict[str, str]) -> None:
    """Raise ValueError, naming the override that fixes it, where runs to be compared clip
    actions to different ranges (their base is then not the same policy: on PegInsertion the
    base clipped to the bare demo range loses about 6 points)."""
    ranges = {m: r for m, r in ((m, run_action_range(p)) for m, p in runs.items()) if r}
    if len({json.dumps(r, sort_keys=True) for r in ranges.values()}) <= 1:
        return
    ref_name = "resfit" if "resfit" in ranges else next(iter(ranges))
    ref = ranges[ref_name]
    odd = [m for m, r in ranges.items() if r != ref]
    fix = " ".join(
        f"--override={m}:{k}={v}" for m in odd for k, v in ref.items() if ranges[m][k] != v
    )
    raise ValueError(
        f"The runs clip actions to different ranges ({ranges}): their base is "
        f"not the same policy. Move {', '.join(odd)} aside and re-train with {fix}."
    )


def check_comparable(runs: dict[str, str]) -> None:
    """Raise ValueError where the runs (those started) were trained on other bases or demos,
    or clip actions to other ranges: their episodes could not be paired."""
    ids = {m: i for m, i in ((m, run_identity(p)) for m, p in runs.items()) if i is not None}
    if len({json.dumps(v, sort_keys=True) for v in ids.values()}) > 1:
        raise ValueError(f"The runs were trained on different bases or demos: {ids}.")
    check_same_action_range(runs)


METHODS = ("resfit", "rlpd", "ibrl", "ppo", "fbc")


def method_preset(method: str, task_name: str, scale: str = "cpu") -> Any:
    """The preset config of ``method`` on ``task_name`` at ``scale``: the task's TrainConfig
    with the baseline's recipe (resfit, rlpd, ibrl), its PPOConfig (ppo) or its
    FilteredBCConfig (fbc)."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose from {METHODS}.")
    if method == "fbc":
        from resfit_jax.agents.filtered_bc import filtered_bc_preset

        return filtered_bc_preset(task_name)
    if method == "ppo":
        from resfit_jax.sim.ppo_presets import ppo_preset

        return ppo_preset(task_name, scale)
    from resfit_jax.sim.presets import preset

    return preset(task_name, scale, method)


def method_trainer(
    method: str,
    task_name: str,
    inputs: tuple,
    seeds: list[int],
    overrides: list[str],
    scale: str = "cpu",
    base_dir: str | None = None,
) -> tuple[Any, Any]:
    """(trainer, train function) of ``method`` with ``method_preset`` and ``overrides``, on
    ``inputs`` (task, base, demo episodes, ...; e.g. from ``open_inputs``): "resfit",
    "rlpd", "ibrl" through ``sim.trainer``, "ppo" through ``sim.ppo_trainer``, "fbc" through
    ``agents.filtered_bc``, which needs ``base_dir``, the train_bc checkpoint it fine-tunes."""
    from resfit_jax.run.configs import apply_overrides

    if method == "fbc" and (base_dir is None or base_dir == "scripted"):
        raise ValueError(
            "Filtered BC tunes a train_bc base: pass its checkpoint directory "
            "(the scripted PointReach base has no parameters)."
        )
    cfg = apply_overrides(method_preset(method, task_name, scale), overrides)
    task, base, episodes = inputs[:3]
    if method == "fbc":
        from resfit_jax.agents.filtered_bc import make_filtered_bc, train_filtered_bc

        return make_filtered_bc(task, base_dir, episodes, cfg, seeds), train_filtered_bc
    if method == "ppo":
        from resfit_jax.sim.ppo_trainer import make_ppo_trainer, train_residual_ppo

        return make_ppo_trainer(task, base, episodes, cfg, seeds), train_residual_ppo
    from resfit_jax.sim.trainer import make_trainer, train_residual

    return make_trainer(task, base, episodes, cfg, seeds), train_residual


RUN_METHOD_NAMES = {"fbc": "fbc", "ppo": "ResidualPPO"}


def train_or_resume(
    method: str,
    task_name: str,
    inputs: tuple,
    run: str,
    seeds: list[int],
    overrides: list[str],
    scale: str = "cpu",
    stop_at_env_steps: int | None = None,
    base_dir: str | None = None,
) -> dict:
    """Train ``method`` (``method_trainer``) on ``inputs`` into ``run``, resuming it when it
    has a checkpoint; returns the run's summary."""
    trainer, train = method_trainer(method, task_name, inputs, seeds, overrides, scale, base_dir)
    return train(
        trainer,
        run,
        resume=has_checkpoint(run),
        stop_at_env_steps=stop_at_env_steps,
        task_name=task_name,
        identity=inputs[3],
        extra_info={
            "scale": scale,
            "overrides": list(overrides),
            "method": RUN_METHOD_NAMES.get(method, method),
        },
    )


def has_outcomes(run: str) -> bool:
    """The finished run's summary keeps every held-out episode's outcome."""
    from resfit_jax.sim.report import held_out_outcomes

    with open(os.path.join(run, "summary.json")) as f:
        return held_out_outcomes(json.load(f)) is not None


def rescore(
    method: str,
    task_name: str,
    inputs: tuple,
    run: str,
    seeds: list[int],
    overrides: list[str],
    scale: str = "cpu",
    base_dir: str | None = None,
) -> dict:
    """Re-run a finished run's held-out final evaluation (``sim.trainer.rescore_run``) with
    the trainer it was trained with (same overrides: the resume checks apply)."""
    from resfit_jax.sim.trainer import rescore_run

    trainer, _ = method_trainer(method, task_name, inputs, seeds, overrides, scale, base_dir)
    return rescore_run(trainer, run, task_name=task_name, identity=inputs[3])
