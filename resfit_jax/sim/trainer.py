"""The residual-training driver in simulation: phases, seeds, evaluation, logs, checkpoints.

    trainer = make_trainer(task, base, demos, preset("PickPlace", "cpu"), seeds=[0, 1, 2])
    summary = train_residual(trainer, out="runs/residual/pp")

Phases (spec/resfit.md), one function each, each resumable at a chunk boundary:
1. ``_warmup_phase``: collection with base + uniform residual noise;
2. ``_critic_warmup_phase``: critic-only steps on mixed online + demo batches;
3. ``_train_phase``: act with exploration noise, store, ``updates_per_step`` updates per
   vector step, evaluate every ``eval_every`` env steps;
4. ``_final_eval_phase``: base and residual on held-out starts that no periodic evaluation
   (and so no selection) has seen; with ``select="best"`` the residual of each seed's best
   periodic evaluation (``sim.selection``), and the last one for contrast.
Every phase runs as jitted ``lax.scan`` chunks (``SimLoop``) vmapped over S seeds; between
chunks the host only logs, evaluates and checkpoints.

Evaluation runs exactly ``eval_episodes`` full episodes with the deterministic residual, on
the same initial states as the base-alone evaluation of that seed (matched), and reports the
paired fixed / broken counts, churn, gain and the exact McNemar p-value against the base.

Checkpoints (``RunCheckpointer``) hold the whole per-seed loop state (learner with its
normalizer, online replay, env and base state, n-step windows, RNG), the demo buffer and the
typed ``Progress`` record; one is written after each phase, at every evaluation, at the first
chunk end ``save_every_s`` (10 min) after the last one, and on Ctrl-C (SIGTERM in scripts).
``resume=True`` continues from the latest one with the statistics and demo buffer the run
started with and, on CPU, reproduces the uninterrupted run exactly.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Sequence

import jax
import numpy as np

from resfit_jax.agents.ibrl import make_ibrl
from resfit_jax.agents.residual_td3 import make_learner
from resfit_jax.agents.rlpd import NoBase
from resfit_jax.base.features import BaseFeatures, Offsets, chunked_base, make_offsets, rechunk
from resfit_jax.base.policy import BasePolicy, ObservationPrefix
from resfit_jax.data.rlds import Episode, check_compatible
from resfit_jax.replay.demos import (fit_normalizer, offline_buffer, with_feature_stats,
                                    with_time_feature)
from resfit_jax.envs.core import Env, TimeFeature
from resfit_jax.run.locks import RunLock
from resfit_jax.normalization import Normalizer
from resfit_jax.observations import camera_shapes, state_size
from resfit_jax.sim.evaluation import EVAL_SALT, FINAL_SALT, Evaluators  # noqa: F401
from resfit_jax.sharding import GRAD_AXES, Layout, make_mesh, primary
from resfit_jax.sim.loop import STAT_KEYS, SimLoop
from resfit_jax.sim.presets import METHOD_NAMES, TrainConfig
from resfit_jax.sim.progress import SAVE_EVERY_S, Run, start_run
from resfit_jax.sim.report import (outcome_bits, pooled, rescore_differences, run_summary,
                                   summarize_eval)

PHASES = ("warmup", "critic_warmup", "train", "final_eval", "done")
@dataclasses.dataclass
class Trainer(Evaluators):
    """The compiled phase functions of one configuration (built by ``make_trainer``).

    ``normalizer`` and ``offline`` (the demo buffer state) are the run's starting
    statistics and demos; a resumed run replaces them with the checkpoint's."""

    task: Env
    loop: SimLoop
    cfg: TrainConfig
    normalizer: Normalizer
    offline: Any
    seeds: list[int]
    method: str = "ResFiT"
    first_phase: str = "warmup"
    reference: BasePolicy | None = None     # the BC base of the paired evaluations (RLPD)

    @property
    def starts_at_base(self) -> bool:
        """Whether the policy at step 0 is the base (ResFiT's zero-initialised residual)."""
        return self.cfg.method == "resfit"

    def __post_init__(self):
        loop, cfg = self.loop, self.cfg
        self.layout = Layout(make_mesh(*cfg.mesh), cfg.data_shards, len(self.seeds))
        chunk = self.layout.chunk             # shard_map over the mesh, vmap over seeds
        self.warmup = chunk(lambda ls: loop.warmup(ls, cfg.steps_per_chunk), sums=STAT_KEYS)
        self.critic_warmup = chunk(lambda ls, off: loop.critic_warmup(
            ls, off, cfg.critic_warmup_chunk))
        self.train = chunk(lambda ls, off: loop.train(ls, off, cfg.steps_per_chunk),
                           sums=STAT_KEYS)
        self._build_evaluators(loop.base, loop.learner, loop.features, loop.offsets,
                               self.reference)

    @property
    def iterations(self) -> int:
        """Main-loop chunks (``iteration_phase``)."""
        return self.cfg.train_chunks

    @property
    def env_steps_per_chunk(self) -> int:
        return self.cfg.env_steps_per_chunk

    def init(self):
        """The loop state of every (shard, seed) (layout: ``sharding``)."""
        learner, normalizer = self.loop.learner, self.normalizer
        return self.layout.init(self.loop.init, lambda k: learner.init(k, normalizer)
                                )(self.keys())


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What both simulated trainers build from a base, its demos and a config."""

    task: Env
    base: BasePolicy
    episodes: list
    normalizer: Normalizer
    features: BaseFeatures | None
    offsets: Offsets | None = None


def prepare_inputs(task: Env, base: BasePolicy, episodes: Sequence[Episode], cfg: Any,
                   action_scale: float) -> Inputs:
    """Check the base and demos against the task, re-chunk the base, add the time feature,
    fit the normalizer (demo action range widened by the residual's ``action_scale``) and the
    base's chunk features. ``cfg``: a TrainConfig or a PPOTrainConfig."""
    if base.action_dim != task.action_size:
        raise ValueError(f"The base policy's action size ({base.action_dim}) does not match the "
                         f"task's ({task.action_size}); load the base trained for this task.")
    episodes = list(episodes)[: cfg.num_demos] if cfg.num_demos else list(episodes)
    base = rechunk(base, cfg.base_execution_horizon, cfg.base_temporal_ensemble)
    spec = task.observation_spec
    obs_dim = state_size(spec)
    check_compatible(episodes, obs_dim, task.action_size, type(task).__name__,
                     camera_shapes(spec))
    if getattr(cfg, "time_feature", False):
        base = ObservationPrefix(base, obs_dim)
        episodes = with_time_feature(episodes, task.horizon)
        task = TimeFeature(task)
    normalizer = fit_normalizer(episodes, action_scale, cfg.action_margin, cfg.obs_min_std)
    features = BaseFeatures.for_base(base, cfg.base_phase, cfg.base_plan)
    offsets = make_offsets(getattr(cfg, "offset_bound", 0.0), getattr(cfg, "residual_hold", False))
    if offsets is not None:
        chunked_base(base)                     # offsets reset at refills: a chunked base only
    if features is not None or offsets is not None:
        normalizer = with_feature_stats(normalizer, episodes, base, features, cfg.obs_min_std,
                                        offsets)
    return Inputs(task, base, episodes, normalizer, features, offsets)


def make_trainer(task: Env, base: BasePolicy, episodes: Sequence[Episode], cfg: TrainConfig,
                 seeds: Sequence[int]) -> Trainer:
    """Build the normalizer, learner, sim loop and the relabelled demo buffer for a config.
    ``cfg.method`` picks the learner: ResFiT, RLPD (``NoBase`` acts; ``base`` stays the
    evaluations' reference) or IBRL. The baselines' action range is the demos' (widened by
    ``action_margin`` only): their actor's output is the whole action, not a correction."""
    widen = cfg.learner.action_scale if cfg.method == "resfit" else 0.0
    inp = prepare_inputs(task, base, episodes, cfg, widen)
    task, base, episodes, normalizer, features, offsets = (
        inp.task, inp.base, inp.episodes, inp.normalizer, inp.features, inp.offsets)
    reference = None
    if cfg.method == "rlpd":
        reference, base = base, NoBase.for_normalizer(normalizer)
    # one data shard's loop: its envs, replay and batches (``sharding``; one shard: all)
    envs, replay = cfg.num_envs // cfg.data_shards, cfg.local_replay
    loop = SimLoop(task, base, None, replay, num_envs=envs, features=features, offsets=offsets)
    build = make_ibrl if cfg.method == "ibrl" else make_learner
    learner_cfg = cfg.learner                  # hold: the learner masks its residual by the flag
    if offsets is not None and offsets.hold:
        learner_cfg = dataclasses.replace(learner_cfg, residual_mask=True)
    learner = build(learner_cfg, loop.learner_obs_spec, task.action_size, axis_name=GRAD_AXES)
    offline_buf, offline = None, None
    if cfg.replay.offline_fraction > 0:
        offline_buf, offline = offline_buffer(episodes, base, normalizer,
                                              cfg.replay.demo_writer(), features, offsets)
    loop = SimLoop(task, base, learner, replay, num_envs=envs, updates_per_step=cfg.updates_per_step, warmup_noise=cfg.warmup_noise,
                   offline_buffer=offline_buf, features=features, offsets=offsets,
                   progressive_steps=cfg.progressive_steps,
                   explore_std_range=(tuple(cfg.exploration_std_range)
                                      if cfg.exploration_std_range is not None else None))
    return Trainer(task, loop, cfg, normalizer, offline, list(seeds),
                   method=METHOD_NAMES[cfg.method], reference=reference)


def _warmup_phase(run: Run) -> bool:
    cfg, prog = run.cfg, run.prog
    run.open_bar("warm-up", cfg.warmup_chunks * cfg.env_steps_per_chunk, prog.warmup_env_steps,
                 "env step")
    while prog.chunk < cfg.warmup_chunks:
        run.state, stats = run.trainer.warmup(run.state)
        prog.chunk += 1
        prog.warmup_env_steps += cfg.env_steps_per_chunk
        run.bar.update(cfg.env_steps_per_chunk)
        run.log_chunk(stats, "warmup")
        run.save_if_due()
    prog.phase, prog.chunk = "critic_warmup", 0
    run.save()
    return False


def _critic_warmup_phase(run: Run) -> bool:
    cfg, prog = run.cfg, run.prog
    if cfg.critic_warmup_chunks:                 # the baselines have no critic warm-up
        run.open_bar("critic warm-up", cfg.critic_warmup_chunks * cfg.critic_warmup_chunk,
                     prog.chunk * cfg.critic_warmup_chunk, "update")
    while prog.chunk < cfg.critic_warmup_chunks:
        run.state, metrics = run.trainer.critic_warmup(run.state, run.trainer.offline)
        prog.chunk += 1
        run.bar.update(cfg.critic_warmup_chunk)
        run.log_chunk(metrics, "critic_warmup")
        run.save_if_due()
    prog.phase, prog.chunk = "train", 0
    run.save()
    return False


def _train_phase(run: Run) -> bool:
    """Returns True when it stopped early (``stop_at_env_steps``)."""
    trainer = run.trainer
    return iteration_phase(run, trainer.method, lambda s: trainer.train(s, trainer.offline))


def iteration_phase(run: Run, label: str, iterate) -> bool:
    """The train phase of a trainer whose chunks are whole iterations (``iterate(state) ->
    (state, metrics)``, ``trainer.iterations`` of ``trainer.env_steps_per_chunk`` env steps
    each): evaluates (and checkpoints) every eval_every env steps and after the last one.
    Returns True when it stopped early (``stop_at_env_steps``)."""
    prog, trainer = run.prog, run.trainer
    per = trainer.env_steps_per_chunk
    run.open_bar(label, trainer.iterations * per, prog.env_steps, "env step")
    eval_keys = trainer.eval_keys()
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
    prog.last_eval = run.log_eval(trainer.evaluate(run.state.learner_state, eval_keys))
    run.keep_if_best(prog.last_eval)
    run.save()
    run.postfix()
    return (run.stop_at_env_steps is not None and prog.env_steps >= run.stop_at_env_steps
            and not last)


def _final_eval_phase(run: Run) -> bool:
    """Base and residual on held-out starts: per seed and pooled paired statistics."""
    prog, trainer = run.prog, run.trainer
    run.close_bar()
    keys = trainer.final_keys()
    ev_base = jax.device_get(trainer.evaluate_base_final(keys))
    seeds = range(len(prog.seeds))
    base_rows = [summarize_eval(ev_base, i) | {"outcomes": outcome_bits(ev_base["success"][i])}
                 for i in seeds]

    def held_out(learner_state) -> dict:
        ev = jax.device_get(trainer.evaluate_final(learner_state, keys))
        rows = [summarize_eval(ev, i, ev_base["success"][i])
                | {"outcomes": outcome_bits(ev["success"][i])} for i in seeds]
        return {"per_seed": rows, "base_per_seed": base_rows,
                "pooled": pooled(ev_base["success"], ev["success"], base_rows, rows)}
    prog.final = held_out(run.state.learner_state if run.best is None else run.best)
    if run.best is not None:            # select="best": the kept states; the last for contrast
        last = held_out(run.state.learner_state)
        prog.final |= {"selected_env_steps": prog.best_env_steps,
                       "last": {"per_seed": last["per_seed"], "pooled": last["pooled"]}}
    rows = prog.final["per_seed"]
    for i, s in enumerate(prog.seeds if not run.rescoring else []):   # rows exist already
        run.logger.write({"kind": "final_eval", "seed": s, "env_steps": prog.env_steps,
                          "total_env_steps": prog.env_steps + prog.warmup_env_steps,
                          **rows[i], "base_success_rate": base_rows[i]["success_rate"]})
    prog.phase, prog.chunk = "done", 0
    run.save()
    return False


PHASE_FUNCTIONS = {"warmup": _warmup_phase, "critic_warmup": _critic_warmup_phase,
                   "train": _train_phase, "final_eval": _final_eval_phase}


def train_residual(trainer: Trainer, out: str, resume: bool = False, progress: bool = True,
                   stop_at_env_steps: int | None = None, task_name: str = "",
                   extra_info: dict | None = None, identity: dict | None = None,
                   save_every_s: float = SAVE_EVERY_S) -> dict:
    """Run (or resume) all phases; returns a summary (also written to <out>/summary.json)
    with the final ``loop_state`` (and ``selected_state``, the kept learner states, with
    ``select="best"``). The run holds an exclusive lock on ``out``.

    stop_at_env_steps: stop after the first checkpoint at or past this many main-loop env
    steps (for staged runs and the resume test); a later call with resume=True continues.
    identity: e.g. content hashes of the base and demos (``checkpointing.content_hash``);
    recorded, and a resume with a different identity is refused.
    save_every_s: besides each phase end and evaluation, checkpoint at the first chunk end
    this many seconds after the last checkpoint (a killed run loses at most that much).
    """
    return run_phases(trainer, PHASE_FUNCTIONS, out, resume, progress, stop_at_env_steps,
                      task_name, extra_info, identity, save_every_s=save_every_s)


def rescore_run(trainer: Any, out: str, task_name: str = "", identity: dict | None = None
                ) -> dict:
    """Re-run a finished run's held-out final evaluation from its last checkpoint (the kept
    states with ``select="best"``), e.g. for a run recorded before summaries kept each
    episode's outcome. ``trainer`` must be the run's (same config, seeds and inputs: the
    resume checks apply). The training's wall time and metrics rows stay as they were; if
    the new pooled numbers differ from the recorded ones (code changed since), a warning
    names both and ``final["rescored_from"]`` keeps the recorded ones."""
    return run_phases(trainer, {"final_eval": _final_eval_phase}, out, resume=True,
                      progress=False, task_name=task_name, identity=identity, rescore=True)


def run_phases(trainer: Any, phase_functions: dict, out: str, resume: bool = False,
               progress: bool = True, stop_at_env_steps: int | None = None, task_name: str = "",
               extra_info: dict | None = None, identity: dict | None = None,
               rescore: bool = False, save_every_s: float = SAVE_EVERY_S) -> dict:
    """The driver both simulated trainers share: open or resume the run directory under its
    lock, evaluate the base on the periodic starts once, run ``phase_functions[phase]`` until
    "done" (or an early stop), write summary.json and return the summary. ``rescore``: a
    finished run's final evaluation again (``rescore_run``)."""
    out = os.path.abspath(out)
    with RunLock(out, "training run"):
        return _run_phases(trainer, phase_functions, out, resume, progress, stop_at_env_steps,
                           task_name, extra_info, identity, rescore, save_every_s)


def _run_phases(trainer, phase_functions, out, resume, progress, stop_at_env_steps, task_name,
                extra_info, identity, rescore=False, save_every_s=SAVE_EVERY_S) -> dict:
    ckpt, logger, prog, state, best = start_run(trainer, out, resume, task_name, extra_info,
                                                identity)
    run = Run(trainer, ckpt, logger, prog, state, time.time() - prog.wall_s,
              progress and primary(),
               task_name, stop_at_env_steps, best=best, save_every_s=save_every_s)
    if rescore:
        if prog.phase != "done":
            logger.close()
            ckpt.close()
            raise ValueError(f"{out}: the run is not finished (phase {prog.phase!r}); resume "
                             "it to finish it instead of rescoring.")
        recorded, wall = prog.final, prog.wall_s
        prog.phase, run.rescoring = "final_eval", True
    try:
        if prog.base_eval is None:
            ev = jax.device_get(trainer.evaluate_base(trainer.eval_keys()))
            prog.base_success = np.asarray(ev["success"]).tolist()
            prog.base_eval = [summarize_eval(ev, i) for i in range(len(prog.seeds))]
            # a zero-initialised residual makes the policy at step 0 the base; the baselines'
            # own actors are evaluated
            prog.last_eval = run.log_eval(ev if getattr(trainer, "starts_at_base", True) else
                                          trainer.evaluate(state.learner_state,
                                                           trainer.eval_keys()))
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
            print(f"\nInterrupted mid-chunk: the latest checkpoint in {ckpt.directory} is the "
                  "previous one; continue with --resume.")
        logger.close()
        raise
    run.close_bar()
    if rescore:
        changed = rescore_differences(recorded, prog.final)
        if changed:
            prog.final["rescored_from"] = {k: recorded[k] for k in ("pooled", "last")
                                           if k in recorded}
            print(f"WARNING: {out}: the rescored held-out evaluation differs from the recorded "
                  f"one ({'; '.join(changed)}); the summary now holds the new one.")
        run.t_start = time.time() - wall              # the training's wall time, not ours
        run.save()
    logger.close()
    summary = run_summary(prog, trainer.cfg, task_name, out, trainer.method)
    if primary():
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    ckpt.close()
    summary["loop_state"] = run.state
    if run.best is not None:
        summary["selected_state"] = run.best
    return summary
