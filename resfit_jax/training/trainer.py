"""The residual-training driver in simulation: phases, seeds, evaluation, logs, checkpoints.

    result = train_residual(task, base, demos, preset("PickPlace", "cpu"), out="runs/res/pp",
                            num_seeds=3)

Phases (spec/resfit.md): 1. warm-up collection (base + uniform residual noise), 2. critic
warm-up (critic-only steps on 50/50 online + demo batches), 3. main loop (act with
exploration noise, store, ``updates_per_step`` updates per vector step). Every phase runs as
jitted ``lax.scan`` chunks (``SimLoop``) vmapped over S seeds; between chunks the host only
logs, evaluates and checkpoints.

Evaluation runs exactly ``eval_episodes`` full episodes with the deterministic residual, on
the same initial conditions as the base-alone evaluation of that seed (matched seeds).

Checkpoints (``RunCheckpointer``) hold the whole per-seed loop state (learner, online replay,
env and base state, n-step windows, RNG) plus the host progress; one is written after each
phase and at every evaluation (and on Ctrl-C). ``resume=True`` continues from the latest one
and, on CPU, reproduces the uninterrupted run exactly.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from resfit_jax.base_policy import BasePolicy, ObservationPrefix
from resfit_jax.checkpointing import RunCheckpointer
from resfit_jax.data.rlds import Episode, check_compatible
from resfit_jax.envs.core import Env, TimeFeature
from resfit_jax.normalization import ActionScaler, StateStandardizer
from resfit_jax.residual_td3 import make_learner
from resfit_jax.training.config import TrainConfig
from resfit_jax.training.evaluation import wilson_interval
from resfit_jax.training.logger import MetricsLogger
from resfit_jax.training.offline import offline_buffer, with_time_feature
from resfit_jax.training.sim_loop import SimLoop

PHASES = ("warmup", "critic_warmup", "train", "done")
EVAL_SALT = 0xE7A1


def config_to_dict(cfg: TrainConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def fit_normalizers(episodes: Sequence[Episode], action_scale: float, margin: float = 0.0
                    ) -> tuple[ActionScaler, StateStandardizer]:
    """Action scaler (demo [min, max], widened by 1 + margin and 1 + action_scale) and obs
    standardizer."""
    actions = np.concatenate([ep.action[:-1] for ep in episodes])
    obs = np.concatenate([ep.observation for ep in episodes])
    return ActionScaler.fit(actions, action_scale, margin=margin), StateStandardizer.fit(obs)


def _summarize_eval(ev: dict, s: int) -> dict:
    succ = np.asarray(ev["success"][s])
    n, k = int(succ.size), int(succ.sum())
    lo, hi = wilson_interval(k, n)
    msl = float(ev["mean_success_length"][s])
    return {"success_rate": k / n, "successes": k, "episodes": n, "ci_low": lo, "ci_high": hi,
            "mean_success_length": msl if np.isfinite(msl) else None}


@dataclasses.dataclass
class Trainer:
    """Holds the compiled phase functions of one configuration (built by ``make_trainer``)."""

    task: Env
    loop: SimLoop
    cfg: TrainConfig
    offline: Any
    seeds: list[int]

    def __post_init__(self):
        loop, cfg = self.loop, self.cfg
        v = jax.vmap
        self.warmup = jax.jit(v(lambda ls: loop.warmup(ls, cfg.steps_per_chunk)),
                              donate_argnums=0)
        self.critic_warmup = jax.jit(v(lambda ls, off: loop.critic_warmup(
            ls, off, cfg.critic_warmup_chunk), in_axes=(0, None)), donate_argnums=0)
        self.train = jax.jit(v(lambda ls, off: loop.train(ls, off, cfg.steps_per_chunk),
                               in_axes=(0, None)), donate_argnums=0)
        self.evaluate = jax.jit(v(lambda lstate, key: loop.evaluate(lstate, key,
                                                                    cfg.eval_episodes)))
        self.evaluate_base = jax.jit(v(lambda key: loop.evaluate(None, key, cfg.eval_episodes)))

    def keys(self) -> jax.Array:
        return jnp.stack([jax.random.key(s) for s in self.seeds])

    def eval_keys(self) -> jax.Array:
        return jax.vmap(lambda k: jax.random.fold_in(k, EVAL_SALT))(self.keys())

    def init(self):
        learner = self.loop.learner

        def one(key):
            k_loop, k_learn = jax.random.split(key)
            return self.loop.init(k_loop, learner.init(k_learn))
        return jax.jit(jax.vmap(one))(self.keys())


def make_trainer(task: Env, base: BasePolicy, episodes: Sequence[Episode], cfg: TrainConfig,
                 seeds: Sequence[int]) -> Trainer:
    """Build normalizers, learner, sim loop and the relabelled demo buffer for a config."""
    if base.action_dim != task.action_size:
        raise ValueError(f"The base policy's action size ({base.action_dim}) does not match the "
                         f"task's ({task.action_size}); load the base trained for this task.")
    episodes = list(episodes)[: cfg.num_demos] if cfg.num_demos else list(episodes)
    obs_dim = int(task.observation_spec.shape[0])
    check_compatible(episodes, obs_dim, task.action_size, type(task).__name__)
    if cfg.time_feature:
        base = ObservationPrefix(base, obs_dim)
        episodes = with_time_feature(episodes, task.horizon)
        task = TimeFeature(task)
    scaler, obs_norm = fit_normalizers(episodes, cfg.learner.action_scale, cfg.action_margin)
    learner = make_learner(cfg.learner, task.observation_spec, task.action_size, obs_norm)
    loop = SimLoop(task, base, learner, scaler, num_envs=cfg.num_envs,
                   replay_capacity=cfg.replay_capacity, updates_per_step=cfg.updates_per_step,
                   warmup_noise=cfg.warmup_noise)
    offline = None
    if cfg.learner.offline_fraction > 0:
        _, offline = offline_buffer(episodes, base, scaler, loop.writer)
    return Trainer(task, loop, cfg, offline, list(seeds))


def train_residual(trainer: Trainer, out: str, resume: bool = False, progress: bool = True,
                   stop_at_env_steps: int | None = None, task_name: str = "",
                   extra_info: dict | None = None) -> dict:
    """Run (or resume) all phases; returns a summary (also written to <out>/summary.json).

    stop_at_env_steps: stop after the first checkpoint at or past this many main-loop env
    steps (for staged runs and the resume test); a later call with resume=True continues.
    """
    from tqdm import tqdm

    cfg, seeds = trainer.cfg, trainer.seeds
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    ckpt = RunCheckpointer(os.path.join(out, "checkpoints"))
    cfg_dict = config_to_dict(cfg)
    ls = trainer.init()
    if resume and ckpt.latest_step() is not None:
        ls, prog = ckpt.restore(ls)
        if prog["config"] != cfg_dict or prog["seeds"] != seeds:
            raise ValueError(f"--resume: the run in {out} was started with a different config "
                             "or seeds; resume with the same flags (see its config.json).")
        logger = MetricsLogger(out, seeds, keep_lines=prog["jsonl_lines"])
    else:
        if not resume and ckpt.latest_step() is not None:
            raise FileExistsError(f"{out} already holds a run checkpoint; pass --resume to "
                                  "continue it or choose a new --out.")
        prog = {"phase": "warmup", "chunk": 0, "env_steps": 0, "warmup_env_steps": 0,
                "config": cfg_dict, "seeds": seeds, "jsonl_lines": 0, "wall_s": 0.0,
                "base_eval": None, "last_eval": None, "saves": 0}
        logger = MetricsLogger(out, seeds)
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(dict(extra_info or {}, task=task_name, seeds=seeds, config=cfg_dict), f,
                      indent=2)
    eval_keys = trainer.eval_keys()
    total = cfg.warmup_chunks * cfg.env_steps_per_chunk + cfg.train_chunks * cfg.env_steps_per_chunk
    done_steps = prog["warmup_env_steps"] + prog["env_steps"]
    bar = tqdm(total=total, initial=done_steps, desc=f"ResFiT {task_name} x{len(seeds)} seeds",
               disable=not progress, unit="env step", unit_scale=True)
    t_start = time.time() - prog["wall_s"]

    def save():
        prog["jsonl_lines"] = logger.lines
        prog["wall_s"] = time.time() - t_start
        logger.flush()
        prog["saves"] += 1
        ckpt.save(prog["saves"], ls, prog)

    def log_eval(ev: dict) -> list[dict]:
        rows = []
        for i, s in enumerate(seeds):
            r = _summarize_eval(ev, i)
            rows.append(r)
            logger.write({"kind": "eval", "seed": s, "env_steps": prog["env_steps"],
                          "total_env_steps": prog["env_steps"] + prog["warmup_env_steps"],
                          **r, "base_success_rate": prog["base_eval"][i]["success_rate"],
                          "wall_s": time.time() - t_start})
        return rows

    def postfix():
        last = prog["last_eval"] or prog["base_eval"]
        succ = np.mean([r["success_rate"] for r in last]) if last else float("nan")
        phase = prog["phase"]
        if phase == "critic_warmup":
            phase = (f"critic warm-up {prog['chunk'] * cfg.critic_warmup_chunk:,}/"
                     f"{cfg.critic_warmup_chunks * cfg.critic_warmup_chunk:,}")
        bar.set_postfix(phase=phase, eval_success=f"{succ:.0%}")

    try:
        if prog["base_eval"] is None:
            ev = trainer.evaluate_base(eval_keys)
            prog["base_eval"] = [_summarize_eval(ev, i) for i in range(len(seeds))]
            # the residual starts at exactly zero, so the policy at step 0 is the base
            prog["last_eval"] = log_eval(ev)
        postfix()
        while prog["phase"] != "done":
            phase = prog["phase"]
            if phase == "warmup":
                if prog["chunk"] < cfg.warmup_chunks:
                    ls, stats = trainer.warmup(ls)
                    prog["chunk"] += 1
                    prog["warmup_env_steps"] += cfg.env_steps_per_chunk
                    bar.update(cfg.env_steps_per_chunk)
                    _log_chunk(logger, seeds, prog, stats, "warmup")
                    continue
                prog.update(phase="critic_warmup", chunk=0)
                save()
            elif phase == "critic_warmup":
                if prog["chunk"] < cfg.critic_warmup_chunks:
                    ls, metrics = trainer.critic_warmup(ls, trainer.offline)
                    prog["chunk"] += 1
                    _log_chunk(logger, seeds, prog, metrics, "critic_warmup")
                    postfix()
                    continue
                prog.update(phase="train", chunk=0)
                save()
            elif phase == "train":
                if prog["chunk"] < cfg.train_chunks:
                    before = prog["env_steps"]
                    ls, stats = trainer.train(ls, trainer.offline)
                    prog["chunk"] += 1
                    prog["env_steps"] += cfg.env_steps_per_chunk
                    bar.update(cfg.env_steps_per_chunk)
                    _log_chunk(logger, seeds, prog, stats, "train")
                    last_chunk = prog["chunk"] == cfg.train_chunks
                    if prog["env_steps"] // cfg.eval_every > before // cfg.eval_every or last_chunk:
                        prog["last_eval"] = log_eval(trainer.evaluate(ls.learner_state, eval_keys))
                        save()
                        if stop_at_env_steps is not None and prog["env_steps"] >= stop_at_env_steps \
                                and not last_chunk:
                            break
                    postfix()
                    continue
                prog.update(phase="done", chunk=0)
                save()
    except KeyboardInterrupt:
        bar.close()
        try:
            save()
            print(f"\nInterrupted: checkpoint saved in {ckpt.directory}; continue with --resume.")
        except Exception:  # the state of an interrupted chunk may already be donated
            print(f"\nInterrupted mid-chunk: the latest checkpoint in {ckpt.directory} is the "
                  "previous one; continue with --resume.")
        logger.close()
        raise
    bar.close()
    logger.close()
    summary = _summary(prog, seeds, cfg, task_name, out)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    ckpt.close()
    summary["loop_state"] = ls
    return summary


def _log_chunk(logger: MetricsLogger, seeds: list[int], prog: dict, stats: dict, kind: str):
    stats = jax.tree.map(np.asarray, stats)
    for i, s in enumerate(seeds):
        row = {"kind": kind, "seed": s, "env_steps": prog["env_steps"],
               "total_env_steps": prog["env_steps"] + prog["warmup_env_steps"]}
        for k, v in stats.items():
            row[k] = float(v[i])
        if "episodes" in row:
            row["train_success_rate"] = row["successes"] / row["episodes"] if row["episodes"] else None
        logger.write(row)


def _summary(prog: dict, seeds: list[int], cfg: TrainConfig, task_name: str, out: str) -> dict:
    base, final = prog["base_eval"], prog["last_eval"]
    mean = lambda rows, k: (float(np.mean([r[k] for r in rows if r[k] is not None]))
                            if any(r[k] is not None for r in rows) else None)
    return {"task": task_name, "seeds": seeds, "env_steps": prog["env_steps"],
            "warmup_env_steps": prog["warmup_env_steps"],
            "critic_warmup_updates": cfg.critic_warmup_chunks * cfg.critic_warmup_chunk,
            "eval_episodes": cfg.eval_episodes, "complete": prog["phase"] == "done",
            "base": base, "resfit": final,
            "base_success_rate": mean(base, "success_rate"),
            "base_mean_success_length": mean(base, "mean_success_length"),
            "resfit_success_rate": mean(final, "success_rate"),
            "resfit_mean_success_length": mean(final, "mean_success_length"),
            "wall_s": prog["wall_s"], "out": os.path.relpath(out)}


def results_table(summary: dict) -> str:
    """"BC vs ResFiT" table of a summary: one row per seed and the mean over seeds."""
    def fmt_len(x):
        return "-" if x is None else f"{x:.1f}"

    n = summary["eval_episodes"]
    lines = [f"{summary['task']}: BC vs ResFiT on {n} matched episodes per seed, "
             f"{summary['env_steps']:,} main-loop env steps (+{summary['warmup_env_steps']:,} "
             "warm-up)",
             f"{'seed':<6}{'BC success':>12}{'BC steps':>10}{'ResFiT success':>16}"
             f"{'ResFiT 95% CI':>16}{'ResFiT steps':>14}"]
    for s, b, r in zip(summary["seeds"], summary["base"], summary["resfit"]):
        lines.append(f"{s:<6}{b['success_rate']:>12.1%}{fmt_len(b['mean_success_length']):>10}"
                     f"{r['success_rate']:>16.1%}"
                     f"{f'[{r['ci_low']:.2f}, {r['ci_high']:.2f}]':>16}"
                     f"{fmt_len(r['mean_success_length']):>14}")
    if len(summary["seeds"]) > 1:
        rs = [r["success_rate"] for r in summary["resfit"]]
        lines.append(f"{'mean':<6}{summary['base_success_rate']:>12.1%}"
                     f"{fmt_len(summary['base_mean_success_length']):>10}"
                     f"{summary['resfit_success_rate']:>16.1%}"
                     f"{f'sd {np.std(rs):.2f}':>16}"
                     f"{fmt_len(summary['resfit_mean_success_length']):>14}")
    return "\n".join(lines)
