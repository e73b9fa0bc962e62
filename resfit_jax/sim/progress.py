"""What a simulated run keeps between chunks on the host: the typed ``Progress`` record
(saved as JSON with every checkpoint) and the ``Run`` context the phase functions share."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import numpy as np

from resfit_jax.agents.checks import raise_if_nonfinite
from resfit_jax.run.checkpointing import RunCheckpointer
from resfit_jax.run.configs import config_differences, same_config, to_dict
from resfit_jax.run.logger import MetricsLogger
from resfit_jax.run.machine import machine_info
from resfit_jax.sharding import primary
from resfit_jax.sim.report import log_chunk, summarize_eval
from resfit_jax.sim.selection import copy_tree, improved, keep_better


@dataclasses.dataclass
class Progress:
    """Host-side progress of a run, saved as JSON with every checkpoint."""

    config: dict
    seeds: list[int]
    phase: str = "warmup"
    chunk: int = 0  # chunks done in the current phase
    env_steps: int = 0  # main-loop env steps per seed
    warmup_env_steps: int = 0
    jsonl_lines: int = 0
    wall_s: float = 0.0
    saves: int = 0
    base_eval: list[dict] | None = None
    last_eval: list[dict] | None = None
    base_success: list[list[bool]] | None = None  # [S][N] base outcomes on the eval starts
    final: dict | None = None  # held-out final evaluation
    identity: dict | None = None  # content hashes of the base and demos
    best_success: list[float] | None = None  # select="best": kept state's periodic
    best_env_steps: list[int] | None = None  # success rate and env steps, per seed

    @classmethod
    def from_json(cls, d: dict) -> Progress:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


SAVE_EVERY_S = 600.0  # seconds of work a killed run may lose at most (plus one chunk)


@dataclasses.dataclass
class Run:
    """What the phase functions share: the trainer, state, progress, files and the bar."""

    trainer: Any  # a sim.phases.PhasedTrainer
    ckpt: RunCheckpointer
    logger: MetricsLogger
    prog: Progress
    state: Any
    t_start: float
    show_progress: bool
    task_name: str
    stop_at_env_steps: int | None
    bar: Any = None
    best: Any = None  # select="best": the kept learner states (sim.selection)
    rescoring: bool = False  # re-running a finished run's final evaluation (no new rows)
    save_every_s: float = SAVE_EVERY_S  # also checkpoint at the first chunk end past this
    saved_at: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def cfg(self):
        return self.trainer.cfg

    def save(self) -> None:
        self.prog.jsonl_lines = self.logger.lines
        self.prog.wall_s = time.time() - self.t_start
        self.logger.flush()
        self.prog.saves += 1
        self.ckpt.save(
            self.prog.saves,
            self.checkpoint_tree(self.state, self.best),
            dataclasses.asdict(self.prog),
        )
        self.saved_at = time.monotonic()

    def save_if_due(self) -> None:
        """At a chunk boundary: checkpoint when ``save_every_s`` seconds have passed since the
        last checkpoint, so a killed run loses at most that much work between evaluations."""
        if time.monotonic() - self.saved_at >= self.save_every_s:
            self.save()

    def checkpoint_tree(self, state: Any, best: Any) -> dict:
        """What a checkpoint holds. With ``select="best"`` it always has a "best" entry (the
        current learner state stands in before the first evaluation keeps one), so a run
        killed before its first evaluation restores into the same template."""
        tree = {"loop": state, "offline": self.trainer.offline}
        if not keeps_best(self.cfg):
            return tree
        return tree | {"best": state.learner_state if best is None else best}

    def keep_if_best(self, rows: list[dict]) -> None:
        """select.rule="best": keep each seed's learner state whose periodic success rate is
        the highest so far (strictly, by more than ``select.margin``; the first call, at step
        0, keeps the starting state)."""
        if not keeps_best(self.cfg):
            return
        rates = [r["success_rate"] for r in rows]
        current = self.state.learner_state
        if self.best is None:
            self.best = copy_tree(current)
            self.prog.best_success = rates
            self.prog.best_env_steps = [self.prog.env_steps] * len(rates)
            return
        better = improved(rates, self.prog.best_success, self.cfg.select.margin)
        if better.any():
            self.best = keep_better(self.best, current, better)
            self.prog.best_success = [
                r if b else k for r, b, k in zip(rates, better, self.prog.best_success)
            ]
            self.prog.best_env_steps = [
                self.prog.env_steps if b else k for b, k in zip(better, self.prog.best_env_steps)
            ]

    def log_eval(self, ev: dict) -> list[dict]:
        rows = []
        for i, s in enumerate(self.prog.seeds):
            r = summarize_eval(ev, i, self.prog.base_success[i])
            rows.append(r)
            self.logger.write(
                {
                    "kind": "eval",
                    "seed": s,
                    "env_steps": self.prog.env_steps,
                    "total_env_steps": self.prog.env_steps + self.prog.warmup_env_steps,
                    **r,
                    "base_success_rate": self.prog.base_eval[i]["success_rate"],
                    "wall_s": time.time() - self.t_start,
                }
            )
        return rows

    def log_chunk(self, stats: dict, kind: str) -> None:
        """Check the chunk's updates were finite (once per chunk, on the host), then log."""
        stats = dict(stats)
        mask = stats.pop("nonfinite_mask", None)
        if mask is not None:
            raise_if_nonfinite(
                mask,
                f"{kind} chunk {self.prog.chunk} (not checkpointed; the "
                f"latest checkpoint in {self.ckpt.directory} is from before it)",
                fields=self.trainer.finite_fields,
            )
        stale = np.max(np.asarray(stats.get("stale_frames_max", 0)))
        if stale > 0:
            loop = self.trainer.loop
            raise ValueError(
                f"{kind} chunk {self.prog.chunk}: {int(stale)} stored transitions lost their "
                f"camera frames (the frame-once ring of {loop.frame_store.capacity} frames was "
                "overwritten: episodes end more often than replay.frame_margin="
                f"{loop.replay.frame_margin} allows). Restart with a larger "
                "--config.replay.frame_margin, or --config.replay.frame_once=false."
            )
        log_chunk(
            self.logger,
            self.prog.seeds,
            self.prog.env_steps,
            self.prog.warmup_env_steps,
            stats,
            kind,
        )

    def open_bar(self, desc: str, total: int, initial: int, unit: str) -> None:
        from tqdm import tqdm

        self.close_bar()
        self.bar = tqdm(
            total=total,
            initial=initial,
            unit=unit,
            unit_scale=True,
            disable=not self.show_progress,
            desc=f"{desc} {self.task_name} x{len(self.prog.seeds)}".strip(),
        )
        self.postfix()

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def postfix(self) -> None:
        last = self.prog.last_eval or self.prog.base_eval
        succ = np.mean([r["success_rate"] for r in last]) if last else float("nan")
        if self.bar is not None:
            self.bar.set_postfix(eval_success=f"{succ:.0%}")


PLACEMENT = ("mesh", "shards")  # where a run's shards sit: free to change on resume


def check_resume_layout(out: str, cfg: Any) -> None:
    """A run resumes on another device count only with the data shards it started with (its
    state's layout); the mesh may change to any data-device count that divides them."""
    path = os.path.join(out, "config.json")
    if not (hasattr(cfg, "data_shards") and os.path.exists(path)):
        return
    with open(path) as f:
        saved = json.load(f).get("config", {})
    shards = saved.get("shards", 0) or saved.get("mesh", [1, 1])[0]
    if shards != cfg.data_shards:
        raise ValueError(
            f"--resume: the run in {out} was started with {shards} data shard(s) "
            f"and this config has {cfg.data_shards}; its replay and envs are split "
            f"{shards} ways, so resume with --config.shards={shards} (on any "
            f"--config.mesh whose data size divides {shards})."
        )


def keeps_best(cfg: Any) -> bool:
    """The config keeps each seed's best periodic state (``select.rule="best"``); configs
    without a ``select`` (residual PPO, Filtered BC) score the last state."""
    select = getattr(cfg, "select", None)
    return select is not None and select.rule == "best"


def check_resume_settings(
    out: str, cfg: Any, seeds: list[int], task_name: str, identity: dict | None
) -> None:
    """Before any checkpoint is read: a --resume whose config, seeds, task, base or demos
    differ from the run's (its config.json) is refused, naming each difference, instead of
    failing later as if the checkpoint were damaged."""
    path = os.path.join(out, "config.json")
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return  # the checkpoint's own record is checked after the restore
    diffs = []
    if isinstance(saved.get("config"), dict):
        diffs = config_differences(saved["config"], cfg, ignore=PLACEMENT)
    if saved.get("seeds") is not None and list(saved["seeds"]) != list(seeds):
        diffs.append(f"seeds: {saved['seeds']} -> {list(seeds)}")
    if task_name and saved.get("task") and saved["task"] != task_name:
        diffs.append(f"task: {saved['task']!r} -> {task_name!r}")
    old = saved.get("identity") or {}
    for k in identity or {}:
        if old.get(k) and old[k] != identity[k]:
            diffs.append(f"{k}: another file (content hash {old[k][:12]} -> {identity[k][:12]})")
    if diffs:
        shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise ValueError(
            f"--resume: the run in {out} was started with other settings ({shown}). The "
            "checkpoint is fine: resume with the flags it was started with (its config.json), "
            "or start this configuration in a new --out."
        )


def start_run(
    trainer: Any,
    out: str,
    resume: bool,
    task_name: str,
    extra_info: dict | None,
    identity: dict | None,
) -> tuple[RunCheckpointer, MetricsLogger, Progress, Any, Any]:
    """Open (resume) or create a run directory; returns its checkpointer, logger, progress,
    loop state and the kept learner states of ``select="best"`` (or None)."""
    cfg_dict, seeds = to_dict(trainer.cfg), trainer.seeds
    ckpt = RunCheckpointer(os.path.join(out, "checkpoints"))
    state = trainer.init()
    if resume and ckpt.latest_step() is not None:
        check_resume_layout(out, trainer.cfg)
        check_resume_settings(out, trainer.cfg, seeds, task_name, identity)
        template = {"loop": state, "offline": trainer.offline}
        if keeps_best(trainer.cfg):
            template["best"] = state.learner_state
        restored, saved = ckpt.restore(template)
        prog = Progress.from_json(saved)
        if not same_config(prog.config, trainer.cfg, ignore=PLACEMENT) or prog.seeds != seeds:
            raise ValueError(
                f"--resume: the run in {out} was started with a different config "
                "or seeds; resume with the same flags (see its config.json)."
            )
        if identity and prog.identity and identity != prog.identity:
            changed = [k for k in identity if identity[k] != prog.identity.get(k)]
            raise ValueError(
                f"--resume: the run in {out} was started with another "
                f"{' and '.join(changed)} (content hashes {prog.identity} now "
                f"{identity}); resume with the --base and --demos it started with "
                "(see its config.json) or choose a new --out."
            )
        state = restored["loop"]  # placed like the template (this run's mesh)
        # the run keeps the statistics and demos it started with, whatever is on disk now
        trainer.offline = restored["offline"]
        trainer.normalizer = jax.tree.map(lambda x: x[0], state.learner_state.normalizer)
        return (
            ckpt,
            MetricsLogger(out, seeds, prog.jsonl_lines, primary()),
            prog,
            state,
            restored.get("best") if prog.best_success is not None else None,
        )
    if not resume and ckpt.latest_step() is not None:
        raise FileExistsError(
            f"{out} already holds a run checkpoint; pass --resume to "
            "continue it or choose a new --out."
        )
    if primary():
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(
                dict(
                    extra_info or {},
                    task=task_name,
                    seeds=seeds,
                    identity=identity,
                    config=cfg_dict,
                    machine=machine_info(),  # MJX outcomes differ across CPU types
                ),
                f,
                indent=2,
            )
    prog = Progress(config=cfg_dict, seeds=seeds, identity=identity, phase=trainer.first_phase)
    return ckpt, MetricsLogger(out, seeds, enabled=primary()), prog, state, None
