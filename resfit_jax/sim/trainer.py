"""The residual-training driver in simulation: phases, seeds, evaluation, logs, checkpoints.

    trainer = make_trainer(task, base, demos, preset("PickPlace", "cpu"), seeds=[0, 1, 2])
    summary = train_residual(trainer, out="runs/residual/pp")

Phases, one function each, each resumable at a chunk boundary:
1. ``_warmup_phase``: collection with base + uniform residual noise;
2. ``_critic_warmup_phase``: critic-only steps on mixed online + demo batches;
3. ``_train_phase``: act with exploration noise, store, ``updates_per_step`` updates per
   vector step, evaluate every ``eval_every`` env steps;
4. ``phases.final_eval_phase``: base and residual on held-out starts that no periodic
   evaluation (and so no selection) has seen; with ``select.rule="best"`` the residual of
   each seed's best periodic evaluation (``sim.selection``), and the last one for contrast.
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
from collections.abc import Sequence
from typing import Any

from resfit_jax.agents.checks import FINITE_FIELDS
from resfit_jax.agents.ibrl import make_ibrl
from resfit_jax.agents.residual_td3 import make_learner
from resfit_jax.agents.rlpd import NoBase
from resfit_jax.base.features import learner_obs_spec
from resfit_jax.base.policy import BasePolicy
from resfit_jax.data.rlds import Episode
from resfit_jax.envs.core import Env
from resfit_jax.normalization import Normalizer
from resfit_jax.replay.decision_demos import demo_buffer
from resfit_jax.sharding import GRAD_AXES, Layout, make_mesh
from resfit_jax.sim.config import METHOD_NAMES, TrainConfig
from resfit_jax.sim.evaluation import Evaluator, make_evaluator
from resfit_jax.sim.inputs import prepare_inputs
from resfit_jax.sim.loop import STAT_KEYS, SimLoop
from resfit_jax.sim.phases import RunOptions, final_eval_phase, iteration_phase, run_phases
from resfit_jax.sim.progress import Run

PHASES = ("warmup", "critic_warmup", "train", "final_eval", "done")


@dataclasses.dataclass
class Trainer:
    """The compiled phase functions of one configuration (built by ``make_trainer``); a
    ``phases.PhasedTrainer``.

    ``normalizer`` and ``offline`` (the demo buffer state) are the run's starting
    statistics and demos; a resumed run replaces them with the checkpoint's. ``evaluator``
    holds the matched evaluations (``sim.evaluation``)."""

    task: Env
    loop: SimLoop
    cfg: TrainConfig
    normalizer: Normalizer
    offline: Any
    seeds: list[int]
    evaluator: Evaluator
    method: str = "ResFiT"
    first_phase: str = "warmup"
    finite_fields: tuple[str, ...] = FINITE_FIELDS

    @property
    def starts_at_base(self) -> bool:
        """Whether the policy at step 0 is the base (ResFiT's zero-initialised residual)."""
        return self.cfg.method == "resfit"

    def __post_init__(self):
        loop, cfg = self.loop, self.cfg
        self.layout = Layout(make_mesh(*cfg.mesh), cfg.data_shards, len(self.seeds))
        chunk = self.layout.chunk  # shard_map over the mesh, vmap over seeds
        self.warmup = chunk(lambda ls: loop.warmup(ls, cfg.steps_per_chunk), sums=STAT_KEYS)
        self.critic_warmup = chunk(
            lambda ls, off: loop.critic_warmup(ls, off, cfg.critic_warmup_chunk)
        )
        self.train = chunk(lambda ls, off: loop.train(ls, off, cfg.steps_per_chunk), sums=STAT_KEYS)

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
        return self.layout.init(self.loop.init, lambda k: learner.init(k, normalizer))(
            self.evaluator.keys()
        )


def make_trainer(
    task: Env, base: BasePolicy, episodes: Sequence[Episode], cfg: TrainConfig, seeds: Sequence[int]
) -> Trainer:
    """Build the normalizer, learner, sim loop and the relabelled demo buffer for a config.
    ``cfg.method`` picks the learner: ResFiT, RLPD (``NoBase`` acts; ``base`` stays the
    evaluations' reference) or IBRL. The baselines' action range is the demos' (widened by
    ``action_margin`` only): their actor's output is the whole action, not a correction."""
    widen = cfg.learner.action_scale if cfg.method == "resfit" else 0.0
    inp = prepare_inputs(task, base, episodes, cfg, widen)
    task, base, episodes, normalizer = inp.task, inp.base, inp.episodes, inp.normalizer
    features, offsets = inp.features, inp.offsets
    reference = None
    if cfg.method == "rlpd":
        reference, base = base, NoBase.for_normalizer(normalizer)
    # one data shard's loop: its envs, replay and batches (``sharding``; one shard: all)
    envs, replay = cfg.num_envs // cfg.data_shards, cfg.local_replay
    build = make_ibrl if cfg.method == "ibrl" else make_learner
    learner_cfg = cfg.learner  # hold: the learner masks its residual by the flag
    if offsets is not None and offsets.hold and offsets.observed:
        learner_cfg = dataclasses.replace(learner_cfg, residual_mask=True)
    spec = learner_obs_spec(task.observation_spec, features, offsets, task.action_size)
    if offsets is not None and offsets.slope:  # a decision: 2A coefficients per window
        learner = build(
            learner_cfg,
            spec,
            offsets.decision_size(task.action_size),
            axis_name=GRAD_AXES,
            env_action_dim=task.action_size,
        )
    else:
        learner = build(learner_cfg, spec, task.action_size, axis_name=GRAD_AXES)
    offline_buf, offline = demo_buffer(
        episodes,
        base,
        normalizer,
        cfg.replay,
        features,
        offsets,
        cfg.residual.demo_relabel,
        cfg.learner.action_scale,
        cfg.residual.mc_bound,
        tuple(getattr(cfg.learner, "residual_dims", ())),
    ) or (None, None)
    res = cfg.residual
    loop = SimLoop(
        task,
        base,
        learner,
        replay,
        num_envs=envs,
        updates_per_step=cfg.updates_per_step,
        warmup_noise=cfg.warmup_noise,
        offline_buffer=offline_buf,
        features=features,
        offsets=offsets,
        mc_bound=res.mc_bound,
        progressive_steps=res.progressive_steps,
        explore_std_range=(
            tuple(res.exploration_std_range) if res.exploration_std_range is not None else None
        ),
    )
    evaluator = make_evaluator(
        task,
        seeds,
        cfg.eval_episodes,
        cfg.num_final_episodes,
        base,
        learner,
        features,
        offsets,
        reference,
    )
    return Trainer(
        task,
        loop,
        cfg,
        normalizer,
        offline,
        list(seeds),
        evaluator,
        method=METHOD_NAMES[cfg.method],
    )


def _warmup_phase(run: Run) -> bool:
    cfg, prog = run.cfg, run.prog
    run.open_bar(
        "warm-up", cfg.warmup_chunks * cfg.env_steps_per_chunk, prog.warmup_env_steps, "env step"
    )
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
    if cfg.critic_warmup_chunks:  # the baselines have no critic warm-up
        run.open_bar(
            "critic warm-up",
            cfg.critic_warmup_chunks * cfg.critic_warmup_chunk,
            prog.chunk * cfg.critic_warmup_chunk,
            "update",
        )
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


PHASE_FUNCTIONS = {
    "warmup": _warmup_phase,
    "critic_warmup": _critic_warmup_phase,
    "train": _train_phase,
    "final_eval": final_eval_phase,
}


def train_residual(trainer: Trainer, out: str, **options: Any) -> dict:
    """Run (or resume) all phases into ``out``; returns the summary (also written to
    <out>/summary.json) with the final ``loop_state`` (and ``selected_state``, the kept
    learner states, with ``select.rule="best"``). The run holds an exclusive lock on ``out``.
    ``options``: ``phases.RunOptions``' fields (resume, progress, stop_at_env_steps for
    staged runs, task_name, extra_info, identity such as the content hashes of the base and
    demos, save_every_s)."""
    return run_phases(trainer, PHASE_FUNCTIONS, out, RunOptions(**options))


def rescore_run(trainer: Any, out: str, task_name: str = "", identity: dict | None = None) -> dict:
    """Re-run a finished run's held-out final evaluation from its last checkpoint (the kept
    states with ``select.rule="best"``), e.g. for a run recorded before summaries kept each
    episode's outcome. ``trainer`` must be the run's (same config, seeds and inputs: the
    resume checks apply). The training's wall time and metrics rows stay as they were; if
    the new pooled numbers differ from the recorded ones (code changed since), a warning
    names both and ``final["rescored_from"]`` keeps the recorded ones."""
    return run_phases(
        trainer,
        {"final_eval": final_eval_phase},
        out,
        RunOptions(
            resume=True, progress=False, task_name=task_name, identity=identity, rescore=True
        ),
    )
