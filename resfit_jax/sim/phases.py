"""The driver every simulated trainer shares (ResFiT and its off-policy baselines, residual
PPO, Filtered BC): ``run_phases`` runs a trainer's phase functions over a run directory
with checkpoints, resume, periodic and held-out evaluation and summary.json; the phases
that iterate whole chunks (``iteration_phase``) and the held-out final evaluation
(``final_eval_phase``) are shared too.

    summary = run_phases(trainer, {"train": my_phase, "final_eval": final_eval_phase}, out,
                         RunOptions(resume=True))

A trainer is anything that satisfies ``PhasedTrainer``; a phase function takes the ``Run``
(``sim.progress``) and returns True to stop early.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

import jax
import numpy as np

from resfit_jax.base.callback import host_errors_surfaced
from resfit_jax.normalization import Normalizer
from resfit_jax.run.locks import RunLock
from resfit_jax.sharding import primary
from resfit_jax.sim.evaluation import Evaluator
from resfit_jax.sim.progress import SAVE_EVERY_S, Run, start_run
from resfit_jax.sim.report import (
    outcome_bits,
    pooled,
    rescore_differences,
    run_summary,
    summarize_eval,
)


class PhasedTrainer(Protocol):
    """What ``run_phases`` and the shared phases need of a trainer. ``cfg`` has eval_every
    (and is saved in config.json); ``normalizer`` and ``offline`` (the demo buffer state, or
    None) are the run's starting statistics, replaced by the checkpoint's on resume;
    ``first_phase`` names the phase a new run starts in; ``finite_fields`` names the bits of
    the chunks' ``nonfinite_mask``; ``starts_at_base``: the policy at step 0 is the base
    (its periodic evaluation is the base's); ``iterations`` chunks of
    ``env_steps_per_chunk`` env steps make the train phase."""

    cfg: Any
    seeds: list[int]
    normalizer: Normalizer
    offline: Any
    evaluator: Evaluator
    method: str
    first_phase: str
    finite_fields: tuple[str, ...]
    starts_at_base: bool

    @property
    def iterations(self) -> int: ...

    @property
    def env_steps_per_chunk(self) -> int: ...

    def init(self) -> Any: ...


def iteration_phase(run: Run, label: str, iterate) -> bool:
    """The train phase of a trainer whose chunks are whole iterations (``iterate(state) ->
    (state, metrics)``, ``trainer.iterations`` of ``trainer.env_steps_per_chunk`` env steps
    each): evaluates (and checkpoints) every eval_every env steps and after the last one.
    Returns True when it stopped early (``stop_at_env_steps``)."""
    prog, trainer = run.prog, run.trainer
    per = trainer.env_steps_per_chunk
    run.open_bar(label, trainer.iterations * per, prog.env_steps, "env step")
    eval_keys = trainer.evaluator.eval_keys()
    while prog.chunk < trainer.iterations:
        before = prog.env_steps
        run.state, metrics = iterate(run.state)
        prog.chunk += 1
        prog.env_steps += per
        run.bar.update(per)
        run.log_chunk(metrics, "train")
        if evaluate_if_due(run, before, prog.chunk == trainer.iterations, eval_keys):
            return True
        run.save_if_due()
    prog.phase, prog.chunk = "final_eval", 0
    run.save()
    return False


def evaluate_if_due(run: Run, before: int, last: bool, eval_keys: jax.Array) -> bool:
    """After a training chunk that started at ``before`` env steps: evaluate and checkpoint
    when an ``eval_every`` boundary was crossed or it was the last chunk. Returns True when
    the run should stop early there (``stop_at_env_steps``)."""
    prog, trainer, every = run.prog, run.trainer, run.trainer.cfg.eval_every
    if prog.env_steps // every <= before // every and not last:
        return False
    prog.last_eval = run.log_eval(trainer.evaluator.evaluate(run.state.learner_state, eval_keys))
    run.keep_if_best(prog.last_eval)
    run.save()
    run.postfix()
    return (
        run.stop_at_env_steps is not None and prog.env_steps >= run.stop_at_env_steps and not last
    )


def final_eval_phase(run: Run) -> bool:
    """Base and residual on held-out starts: per seed and pooled paired statistics."""
    prog, trainer = run.prog, run.trainer
    run.close_bar()
    ev = trainer.evaluator
    keys = ev.final_keys()
    ev_base = jax.device_get(ev.evaluate_base_final(trainer.normalizer, keys))
    seeds = range(len(prog.seeds))
    base_rows = [
        summarize_eval(ev_base, i) | {"outcomes": outcome_bits(ev_base["success"][i])}
        for i in seeds
    ]

    def held_out(learner_state) -> dict:
        out = jax.device_get(ev.evaluate_final(learner_state, keys))
        rows = [
            summarize_eval(out, i, ev_base["success"][i])
            | {"outcomes": outcome_bits(out["success"][i])}
            for i in seeds
        ]
        return {
            "per_seed": rows,
            "base_per_seed": base_rows,
            "pooled": pooled(ev_base["success"], out["success"], base_rows, rows),
        }

    prog.final = held_out(run.state.learner_state if run.best is None else run.best)
    if run.best is not None:  # select.rule="best": the kept states; the last too
        last = held_out(run.state.learner_state)
        prog.final |= {
            "selected_env_steps": prog.best_env_steps,
            "last": {"per_seed": last["per_seed"], "pooled": last["pooled"]},
        }
    rows = prog.final["per_seed"]
    for i, s in enumerate(prog.seeds if not run.rescoring else []):  # rows exist already
        run.logger.write(
            {
                "kind": "final_eval",
                "seed": s,
                "env_steps": prog.env_steps,
                "total_env_steps": prog.env_steps + prog.warmup_env_steps,
                **rows[i],
                "base_success_rate": base_rows[i]["success_rate"],
            }
        )
    prog.phase, prog.chunk = "done", 0
    run.save()
    return False


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How ``run_phases`` runs: ``resume`` the run in ``out`` (else it must be new);
    ``progress`` bars; ``stop_at_env_steps``: stop after the first checkpoint at or past this
    many main-loop env steps (a later resume continues); ``task_name`` and ``extra_info`` are
    recorded in config.json; ``identity`` (e.g. content hashes of the base and demos) is
    recorded and a resume with another is refused; ``save_every_s``: besides each phase end
    and evaluation, checkpoint at the first chunk end this many seconds after the last one;
    ``rescore``: re-run a finished run's final evaluation (``trainer.rescore_run``)."""

    resume: bool = False
    progress: bool = True
    stop_at_env_steps: int | None = None
    task_name: str = ""
    extra_info: dict | None = None
    identity: dict | None = None
    save_every_s: float = SAVE_EVERY_S
    rescore: bool = False


def run_phases(
    trainer: PhasedTrainer,
    phase_functions: dict[str, Callable[[Run], bool]],
    out: str,
    options: RunOptions = RunOptions(),
) -> dict:
    """The driver every simulated trainer shares: open or resume the run directory under its
    lock, evaluate the base on the periodic starts once, run ``phase_functions[phase]`` until
    "done" (or an early stop: a phase function returns True), write summary.json and return
    the summary, with the final ``loop_state`` (and ``selected_state``, the kept learner
    states of ``select.rule="best"``)."""
    out = os.path.abspath(out)
    with RunLock(out, "training run"), host_errors_surfaced():
        return _run_phases(trainer, phase_functions, out, options)


def _run_phases(trainer: PhasedTrainer, phase_functions: dict, out: str, o: RunOptions) -> dict:
    ckpt, logger, prog, state, best = start_run(
        trainer, out, o.resume, o.task_name, o.extra_info, o.identity
    )
    run = Run(
        trainer,
        ckpt,
        logger,
        prog,
        state,
        time.time() - prog.wall_s,
        o.progress and primary(),
        o.task_name,
        o.stop_at_env_steps,
        best=best,
        save_every_s=o.save_every_s,
    )
    if o.rescore:
        if prog.phase != "done":
            logger.close()
            ckpt.close()
            raise ValueError(
                f"{out}: the run is not finished (phase {prog.phase!r}); resume "
                "it to finish it instead of rescoring."
            )
        recorded, wall = prog.final, prog.wall_s
        prog.phase, run.rescoring = "final_eval", True
    ev = trainer.evaluator
    try:
        if prog.base_eval is None:
            base = jax.device_get(ev.evaluate_base(trainer.normalizer, ev.eval_keys()))
            prog.base_success = np.asarray(base["success"]).tolist()
            prog.base_eval = [summarize_eval(base, i) for i in range(len(prog.seeds))]
            # a zero-initialised residual makes the policy at step 0 the base; the baselines'
            # own actors are evaluated
            prog.last_eval = run.log_eval(
                base if trainer.starts_at_base else ev.evaluate(state.learner_state, ev.eval_keys())
            )
            run.keep_if_best(prog.last_eval)
        while prog.phase != "done":
            if phase_functions[prog.phase](run):
                break
    except KeyboardInterrupt:
        run.close_bar()
        try:
            run.save()
            print(f"\nInterrupted: checkpoint saved in {ckpt.directory}; continue with --resume.")
        except Exception:  # the state of an interrupted chunk may already be donated
            print(
                f"\nInterrupted mid-chunk: the latest checkpoint in {ckpt.directory} is the "
                "previous one; continue with --resume."
            )
        logger.close()
        raise
    run.close_bar()
    if o.rescore:
        changed = rescore_differences(recorded, prog.final)
        if changed:
            prog.final["rescored_from"] = {
                k: recorded[k] for k in ("pooled", "last") if k in recorded
            }
            print(
                f"WARNING: {out}: the rescored held-out evaluation differs from the recorded "
                f"one ({'; '.join(changed)}); the summary now holds the new one."
            )
        run.t_start = time.time() - wall  # the training's wall time, not ours
        run.save()
    logger.close()
    summary = run_summary(prog, trainer.cfg, o.task_name, out, trainer.method)
    if primary():
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    ckpt.close()
    summary["loop_state"] = run.state
    if run.best is not None:
        summary["selected_state"] = run.best
    return summary
