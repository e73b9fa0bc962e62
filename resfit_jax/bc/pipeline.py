"""The BC pipeline as one library call: RLDS demos -> trained chunk policy -> frozen base.

    summary = train_bc("PickPlace", "runs/bc/PickPlace")   # makes demos when demos is None

Every ``eval_every`` steps the policy runs ``eval_episodes`` full MJX episodes (chunk queue,
open loop); the best checkpoint by success is kept (orbax, <out>/checkpoint) with its config
and normalisation, the archival format of the base. Metrics go to TensorBoard (<out>/tb) and
JSONL (<out>/metrics.jsonl). At the end the best base is re-evaluated on ``final_episodes``
fresh episodes and exported as a jax.export artifact (<out>/export).
experiments/train_bc.py is the absl-flag front end; experiments/quickstart.py calls it too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

# Gradient steps of the CPU preset per task where the preset's default is too few: the
# PegInsertion base needs longer training to track the hole (3000 steps: 20%, 8000: 42%).
CPU_TASK_STEPS = {"PegInsertion": 8000, "PegInsertionEE": 8000, "PixelPointReach": 2000}
# Chunk sizes per task where the default (20) is longer than the task's episodes (about 10
# steps on PixelPointReach).
TASK_CHUNK_SIZE = {"PixelPointReach": 5}


RUN_FILES = ("metrics.jsonl", "summary.json", "checkpoint", "export", "tb")


def set_aside_previous_run(out: str) -> str | None:
    """Move an earlier (finished or interrupted) BC run's files in ``out`` to
    <out>/previous/<time>/, so a new run's metrics, best checkpoint and summary are its own
    and nothing collected is lost. Returns that folder, or None when ``out`` held none."""
    found = [n for n in RUN_FILES if os.path.exists(os.path.join(out, n))]
    if not found:
        return None
    dest = os.path.join(out, "previous", time.strftime("%Y%m%d-%H%M%S"))
    while os.path.exists(dest):
        dest += "_"
    os.makedirs(dest)
    for name in found:
        os.replace(os.path.join(out, name), os.path.join(dest, name))
    return dest


def train_bc(task_name: str, out: str, *args: Any, **kwargs: Any) -> dict:
    """Train, keep the best by success, export; returns a summary dict. Holds an exclusive
    lock on ``out`` for the whole run (``run.locks.RunLockedError`` names the holder), so two
    runs never write one base. Arguments: ``train_bc_unlocked``'s."""
    from resfit_jax.run.locks import RunLock

    with RunLock(out, "BC training"):
        return train_bc_unlocked(task_name, out, *args, **kwargs)


def train_bc_unlocked(
    task_name: str,
    out: str,
    demos: str | None = None,
    policy: str = "act",
    preset: str = "cpu",
    steps: int | None = None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    execution_horizon: int | None = None,
    eval_every: int = 1000,
    eval_episodes: int = 50,
    final_episodes: int = 100,
    num_envs: int = 50,
    seed: int = 0,
    max_demos: int | None = None,
    demo_episodes: int = 30,
    demo_noise: float = 1.0,
    export: bool = True,
    relative_actions: bool = True,
    verbose: bool = True,
    init_from: str | None = None,
    extra_episodes: Sequence = (),
    extra_source: str | None = None,
    lr: float | None = None,
    relabel: Callable[[dict], dict] | None = None,
    dropout: float | None = None,
) -> dict:
    """``train_bc`` without the run lock (the caller holds it).

    Fine-tuning (distillation): ``init_from`` names a base checkpoint directory whose
    architecture, chunking, normalizer and parameters the training starts from (``policy``,
    ``preset``, ``chunk_size``, ``execution_horizon`` and ``relative_actions`` are then
    unused; ``steps`` / ``batch_size`` / ``lr`` / ``dropout`` still apply) and which is
    evaluated first, so the kept base is never one the selection evaluation scores below it.
    ``extra_episodes`` (from ``extra_source``) train next to the demos; ``relabel`` (the
    chunk dataset -> the one to train on, e.g. ``bc.replan``'s labels) replaces their
    labels."""
    import jax
    import numpy as np
    import tqdm
    from tensorboardX import SummaryWriter

    from resfit_jax import envs
    from resfit_jax.base.policy import ChunkedBase
    from resfit_jax.bc.data import chunk_dataset, fit_normalizer
    from resfit_jax.bc.export import export_base
    from resfit_jax.bc.frozen import checkpoint_manager, load_base, save_base
    from resfit_jax.bc.networks import BCConfig
    from resfit_jax.bc.train import make_trainer
    from resfit_jax.data import check_compatible, read_episodes
    from resfit_jax.observations import camera_shapes, state_size
    from resfit_jax.sim.evaluation import evaluate_policy, make_episode_runner

    out = os.path.abspath(out)
    task = envs.make(task_name)
    spec = task.observation_spec
    obs_dim, action_dim, cameras = state_size(spec), task.action_size, camera_shapes(spec)
    if steps is None and preset == "cpu":
        steps = CPU_TASK_STEPS.get(task_name)
    if chunk_size is None:
        chunk_size = TASK_CHUNK_SIZE.get(task_name, 20)
    kw = {
        k: v
        for k, v in dict(
            policy=policy,
            chunk_size=chunk_size,
            execution_horizon=execution_horizon,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            dropout=dropout,
        ).items()
        if v is not None
    }
    if relative_actions:
        kw["action_obs_index"] = getattr(task, "action_obs_index", None)
    config = (BCConfig.cpu if preset == "cpu" else BCConfig.paper)(**kw)  # fails before demos
    init_params = None
    if init_from is not None:
        from resfit_jax.bc.data import ChunkNormalizer
        from resfit_jax.bc.frozen import check_cameras, load_params

        init_params, init_info = load_params(init_from)
        check_cameras(init_info, cameras, init_from)
        if (init_info["obs_dim"], init_info["action_dim"]) != (obs_dim, action_dim):
            raise ValueError(
                f"The base in {init_from} has obs/action sizes {init_info['obs_dim']}/"
                f"{init_info['action_dim']}; task {task_name} has {obs_dim}/{action_dim}."
            )
        tuned = dict(steps=steps, batch_size=batch_size, lr=lr, dropout=dropout)
        tuned = {k: v for k, v in tuned.items() if v is not None}
        config = dataclasses.replace(BCConfig.from_dict(init_info["config"]), **tuned)
        policy = config.policy
    os.makedirs(out, exist_ok=True)
    if demos is None:
        from resfit_jax.data.demos import make_demos

        demos, _ = make_demos(
            task_name,
            demo_episodes,
            demo_noise,
            os.path.join(out, "demos"),
            seed=seed + 1000,
            verbose=verbose,
        )
    episodes = read_episodes(demos, limit=max_demos)
    check_compatible(episodes, obs_dim, action_dim, task_name, cameras)
    if verbose:
        from resfit_jax.run.configs import config_lines

        print(
            f"Resolved BCConfig:\n{config_lines(config)}\n{len(episodes)} demo episodes "
            f"from {demos}"
        )
    if extra_episodes:
        check_compatible(list(extra_episodes), obs_dim, action_dim, task_name, cameras)
        if verbose:
            print(f"{len(extra_episodes)} more episodes from {extra_source}")
    data = chunk_dataset(list(episodes) + list(extra_episodes), config.chunk_size)
    if relabel is not None:
        data = relabel(data)
    if init_params is None:
        normalizer = fit_normalizer(
            data, config.action_obs_index, config.obs_std_floor, config.action_std_floor
        )
    else:  # the base's own: its parameters only mean something in its units
        normalizer = ChunkNormalizer.from_dict(init_info["normalizer"])
    trainer = make_trainer(config, obs_dim, action_dim, normalizer, cameras)
    state = trainer.init(jax.random.PRNGKey(seed), init_params)
    device_data = jax.device_put(data)
    make_base = lambda params: ChunkedBase(
        lambda o: trainer.predict(params, o),
        action_dim,
        config.chunk_size,
        config.execution_horizon,
    )
    e = min(num_envs, eval_episodes)
    runner = make_episode_runner(task, make_base, e)
    moved = set_aside_previous_run(out)
    if moved and verbose:
        print(f"{out} held an earlier BC run; its files are kept in {moved}")
    manager = checkpoint_manager(os.path.join(out, "checkpoint"))
    meta = {
        "task": task_name,
        "obs_dim": int(obs_dim),
        "action_dim": int(action_dim),
        "demos": demos,
        "num_demos": len(episodes),
        **(
            {
                "init_from": os.path.abspath(init_from),
                "extra_data": extra_source,
                "num_extra": len(extra_episodes),
            }
            if init_from is not None or extra_episodes
            else {}
        ),
        "cameras": {c: list(v) for c, v in cameras.items()},
    }
    writer = SummaryWriter(os.path.join(out, "tb"))
    jsonl = open(os.path.join(out, "metrics.jsonl"), "a")
    eval_key = jax.random.PRNGKey(seed + 7)
    best, history, t0 = -1.0, [], time.time()
    bar = tqdm.tqdm(total=config.steps, desc=f"BC {policy} {task_name}", disable=not verbose)
    done = 0

    def evaluate_and_keep(step: int, l1: float | None) -> None:
        nonlocal best
        r = evaluate_policy(task, None, eval_episodes, eval_key, e, runner, state.params)
        row = {
            "step": step,
            "l1": l1,
            "success_rate": r["success_rate"],
            "mean_steps_success": r["mean_steps_success"],
            "wall_s": time.time() - t0,
        }
        history.append(row)
        for k, v in row.items():
            if k != "step" and v is not None:
                writer.add_scalar(f"bc/{k}", v, step)
        jsonl.write(json.dumps(row) + "\n")
        jsonl.flush()
        if r["success_rate"] >= best:
            best = r["success_rate"]
            save_base(
                manager,
                step,
                state.params,
                config,
                normalizer,
                meta,
                {"success_rate": r["success_rate"]},
            )
        bar.set_postfix(
            l1="-" if l1 is None else f"{l1:.3f}",
            success=f"{r['success_rate']:.0%}",
            best=f"{best:.0%}",
        )

    if init_params is not None:  # the starting base competes with its fine-tuned versions
        evaluate_and_keep(0, None)
    while done < config.steps:
        n = min(eval_every, config.steps - done)
        state, m = trainer.train(state, device_data, n)
        done += n
        evaluate_and_keep(done, float(m["l1"]))
        bar.update(n)
    bar.close()
    writer.close()
    jsonl.close()
    _, info = load_base(os.path.join(out, "checkpoint"), obs_dim, action_dim, cameras=cameras)
    final = evaluate_policy(
        task,
        None,
        final_episodes,
        jax.random.PRNGKey(seed + 99),
        min(num_envs, final_episodes),
        make_episode_runner(task, make_base, min(num_envs, final_episodes)),
        info["params"],
    )
    if export:
        export_base(
            os.path.join(out, "export"),
            trainer.predict,
            info["params"],
            obs_dim=int(obs_dim),
            action_dim=int(action_dim),
            chunk_size=config.chunk_size,
            execution_horizon=config.execution_horizon,
            normalizer=normalizer,
            task=task_name,
            cameras=cameras,
        )
    summary = {
        "task": task_name,
        "policy": policy,
        "best_step": info["best_step"],
        "final_episodes": final["episodes"],
        "success_rate": final["success_rate"],
        "ci95": final["ci95"],
        "mean_steps_success": final["mean_steps_success"],
        "num_demos": len(episodes),
        "steps": config.steps,
        "wall_s": time.time() - t0,
        "out": out,
        "history": history,
        "config": dataclasses.asdict(config),
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=lambda x: np.asarray(x).tolist())
    if verbose:
        lo, hi = final["ci95"]
        print(
            f"{task_name} BC ({policy}, best step {info['best_step']}): success "
            f"{final['successes']}/{final['episodes']} = {final['success_rate']:.1%} "
            f"[{lo:.2f}, {hi:.2f}], mean steps of successes "
            f"{final['mean_steps_success']:.1f}; base checkpoint {out}/checkpoint"
            + (f", export {out}/export" if export else "")
        )
    return summary
