"""Distillation: the improved policy's behaviour back into the base (the ResFiT paper's stated
future direction). Roll the improved policy (base + deterministic residual) out in MJX on
starts of its own, keep its successful episodes (each ends at its first success), or with
``keep="all"`` every frame of every rollout labelled with the action the policy took, and
fine-tune the BC base on demos + these episodes with its chunked loss
(``bc.pipeline.train_bc(init_from=...)``). The chunk labels are the actions executed after
each frame (``labels="executed"``), or the improved policy's chunk as if it decided at that
frame (``labels="replanned"``: the base's own chunk there plus the residual's correction,
so the fine-tuning starts one correction away from its targets).

    rec = jax.jit(lambda k: sim.evaluation.record_episodes(task, policy, k))(keys)
    episodes = rollout_episodes(jax.device_get(rec), keep="successes")
    summary = distill_run("runs/probes/ee_chunk", "runs/bc/PickPlaceEE_distilled")
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np

from resfit_jax.data.episode import Episode
from resfit_jax.sim.evaluation import episode_keys, record_episodes

KEEP = ("successes", "all")
LABELS = ("executed", "replanned")
_DISTILL_STREAM = 0xD157  # the distillation starts' own key stream


def distill_keys(seed: int, num_episodes: int) -> jax.Array:
    """Keys [N] of the distillation rollouts: a stream of their own (fold_in(key(seed),
    0xD157)), apart from the training runs' periodic and held-out evaluation starts."""
    return episode_keys(jax.random.fold_in(jax.random.key(seed), _DISTILL_STREAM), num_episodes)


def rollout_episodes(rec: dict, keep: str = "successes") -> list[Episode]:
    """RLDS episodes from ``sim.evaluation.record_episodes``' output (host arrays; state
    observations): the successful ones up
    to their first success (``keep="successes"``), or every episode (``keep="all"``: every
    frame labelled with the policy's action; failures carry no reward). Each episode's id is
    its rollout index."""
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {KEEP}, got {keep!r}.")
    if isinstance(rec["obs"], dict):
        raise ValueError("Distillation keeps state observations; pixel tasks are not supported.")
    success = np.asarray(rec["success"], bool)
    length = np.asarray(rec["length"], int)
    out = []
    for n in range(success.shape[0]):
        if keep == "successes" and not success[n]:
            continue
        t = int(length[n])
        obs = np.concatenate([rec["obs"][:t, n], rec["next_obs"][t - 1 : t, n]])
        out.append(Episode.from_rollout(obs, rec["action"][:t, n], bool(success[n]), n))
    return out


@dataclasses.dataclass(frozen=True)
class DistillOptions:
    """``episodes`` rollouts of the improved policy (seed ``seed_index`` of the run, its
    ``state``: "kept" or "last"), ``keep`` ("successes" / "all"), chunk ``labels``
    ("executed" / "replanned", see the module docstring), then ``steps`` fine-tuning steps
    at learning rate ``lr`` (None: the base's own) with ``dropout`` (None: the base's own),
    selected by an ``eval_episodes``-episode evaluation every ``eval_every``; ``seed``: the
    rollout starts' stream and the fine-tuning's. The defaults are the setting that keeps
    the most of the gain on PickPlaceEE (docs/distillation.md)."""

    episodes: int = 1000
    keep: str = "successes"
    seed_index: int = 0
    state: str = "kept"
    steps: int = 2000
    eval_every: int = 500
    eval_episodes: int = 200
    seed: int = 0
    lr: float | None = 1e-5
    labels: str = "replanned"
    dropout: float | None = 0.0

    def __post_init__(self):
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"--lr must be > 0 (got {self.lr}).")
        for name in ("episodes", "steps", "eval_every", "eval_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1 (got {getattr(self, name)}).")
        if self.keep not in KEEP:
            raise ValueError(f"keep must be one of {KEEP}, got {self.keep!r}.")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1) (got {self.dropout}).")
        if self.labels not in LABELS:
            raise ValueError(f"labels must be one of {LABELS}, got {self.labels!r}.")


def _rollouts(trained, o: DistillOptions, data_dir: str, meta: dict) -> tuple[list, dict]:
    """The distillation episodes: recorded under data_dir, or reused from there."""
    from resfit_jax.data import read_episodes, read_metadata, write_episodes

    dataset = os.path.join(data_dir, "distill_rollouts", "1.0.0")
    if os.path.exists(dataset):
        saved = read_metadata(dataset)
        if {k: saved.get(k) for k in meta} != meta:
            raise ValueError(
                f"{data_dir} holds rollouts of another setting "
                f"({ {k: saved.get(k) for k in meta} }; now {meta}); use another --out."
            )
        return read_episodes(dataset), dict(saved, reused=True)
    task, policy = trained.trainer.task, trained.policy(o.seed_index)
    keys = distill_keys(o.seed, o.episodes)
    rec = jax.device_get(jax.jit(lambda k: record_episodes(task, policy, k))(keys))
    episodes = rollout_episodes(rec, o.keep)
    success, length = np.asarray(rec["success"]), np.asarray(rec["length"])
    stats = {
        "rollout_successes": int(success.sum()),
        "rollout_env_steps": int(length.sum()),
        "rollout_mean_success_length": float(length[success].mean()) if success.any() else None,
        "kept_episodes": len(episodes),
        "kept_steps": int(sum(e.num_actions for e in episodes)),
    }
    if not episodes:
        raise ValueError(
            f"The improved policy succeeded in none of {o.episodes} rollouts: nothing to "
            "distil (try --keep=all, or a better run)."
        )
    write_episodes(data_dir, episodes, name="distill_rollouts", metadata=meta | stats)
    return episodes, meta | stats


def held_out_comparison(trained, seed_index: int, state: str, distilled) -> dict:
    """Base, improved policy and ``distilled`` (a BasePolicy) on the run's held-out starts of
    seed ``seed_index``, paired against the base, evaluated as the run's evaluator batches
    them, every seed at once (the batch layout changes float rounding and so the outcomes of
    borderline episodes): the first two replay the outcomes the run recorded
    (``replays_run``)."""
    from resfit_jax.run.stats import paired_outcomes
    from resfit_jax.sim.evaluation import episode_keys, run_episodes
    from resfit_jax.sim.report import outcome_bits

    task, i, n = trained.trainer.task, seed_index, trained.cfg.num_final_episodes
    keys, lstate = trained.trainer.evaluator.final_keys(), trained.learner_state  # [S]
    makers = {
        "base": lambda st: trained.make_policy(None, st.normalizer),
        "improved": lambda st: trained.make_policy(st, st.normalizer),
        "distilled": lambda st: distilled,
    }
    rows = {}
    for name, make in makers.items():
        run = jax.vmap(lambda st, k, make=make: run_episodes(task, make(st), episode_keys(k, n)))
        r = jax.device_get(jax.jit(run)(lstate, keys))
        rows[name] = (np.asarray(r["success"][i]), float(r["mean_success_length"][i]))
    final = trained.summary.get("final") or {}
    recorded = {
        "base": (final.get("base_per_seed") or [{}] * (i + 1))[i].get("outcomes"),
        "improved": None
        if state == "last"
        else (final.get("per_seed") or [{}] * (i + 1))[i].get("outcomes"),
    }
    base = rows["base"][0]
    out = {}
    for name, (success, length) in rows.items():
        out[name] = {
            "success_rate": float(success.mean()),
            "mean_success_length": length,
            "outcomes": outcome_bits(success),
        }
        if recorded.get(name):
            out[name]["replays_run"] = recorded[name] == out[name]["outcomes"]
        if name != "base":
            p = paired_outcomes(base, success)
            out[name] |= {k: p[k] for k in ("fixed", "broken", "p_value")}
    gain = out["improved"]["success_rate"] - out["base"]["success_rate"]
    kept = out["distilled"]["success_rate"] - out["base"]["success_rate"]
    return {
        "episodes": int(base.shape[0]),
        "policies": out,
        "share_of_gain_kept": kept / gain if gain > 0 else None,
    }


def replay_actions(policy, obs: jax.Array) -> jax.Array:
    """Jittable: the actions [T, N, A] ``policy`` (a BasePolicy, fresh state) takes on the
    recorded observations ``obs`` [T, N, ...] of N episodes that start at t = 0, as it would
    have acted on that state sequence (a chunked base refills where it would have)."""

    def step(state, o):
        a, state = policy.step(state, o)
        return state, a

    return jax.lax.scan(step, policy.init_state(obs.shape[1]), obs)[1]


def correction_fit(task, improved, base, distilled, keys: jax.Array) -> dict:
    """Jittable: how much of the improved policy's correction a distilled base reproduces, on
    the improved policy's own episodes from ``keys`` [N] (frames of the episodes only).
    With c = improved - base and d = distilled - base per frame (raw action units):
    ``correction`` mean |c|, ``moved`` mean |d|, ``reproduced`` sum <d, c> / sum |c|^2 (1: the
    whole correction, 0: none of it), ``error_ratio`` sum |distilled - improved|^2 /
    sum |base - improved|^2 (below 1: closer to the improved actions than the base is)."""
    rec = record_episodes(task, improved, keys)
    act, alive = rec["action"], rec["alive"][..., None]
    b = replay_actions(base, rec["obs"])
    d = replay_actions(distilled, rec["obs"])
    c, moved = (act - b) * alive, (d - b) * alive
    frames = alive.sum()
    return {
        "frames": frames,
        "correction": jax.numpy.linalg.norm(c, axis=-1).sum() / frames,
        "moved": jax.numpy.linalg.norm(moved, axis=-1).sum() / frames,
        "reproduced": (moved * c).sum() / (c * c).sum(),
        "error_ratio": (((d - act) * alive) ** 2).sum() / (c * c).sum(),
    }


def distill_run(
    run: str, out: str | None = None, o: DistillOptions = DistillOptions(), log=print
) -> dict:
    """Distil seed ``o.seed_index`` of the finished ResFiT or residual-PPO ``run`` into a base in
    ``out`` (default runs/bc/<task>_distilled; see the module docstring and
    docs/distillation.md); returns and writes ``<out>/distill_summary.json`` (its ``out`` names
    the directory). Raises FileNotFoundError / ValueError naming the problem."""
    from resfit_jax.bc.frozen import INFO_FILE, open_base
    from resfit_jax.bc.pipeline import train_bc
    from resfit_jax.run.machine import machine_info
    from resfit_jax.sim.restore import open_trained_run

    trained = open_trained_run(run, state=o.state)
    if not 0 <= o.seed_index < len(trained.seeds):
        raise ValueError(
            f"--seed_index={o.seed_index}: {run} trained seeds {trained.seeds} "
            f"(indices 0..{len(trained.seeds) - 1})."
        )
    info = trained.info
    out = os.path.abspath(out or os.path.join("runs", "bc", f"{info['task']}_distilled"))
    base_dir = info["base"]
    if not os.path.exists(os.path.join(base_dir, INFO_FILE)):
        raise ValueError(
            f"The run's base {base_dir} is an export, not a train_bc checkpoint: fine-tuning "
            "needs its parameters (<train_bc out>/checkpoint)."
        )
    at = trained.progress.get("state_env_steps") or trained.progress.get("env_steps")
    if isinstance(at, list):  # per seed
        at = at[o.seed_index]
    log(
        f"Distilling {run} (seed {trained.seeds[o.seed_index]}, {o.state} state at {at} env "
        f"steps) into {out}"
    )
    meta = {"run": os.path.abspath(run)} | {
        k: getattr(o, k) for k in ("state", "seed_index", "keep", "episodes", "seed")
    }
    data_dir = os.path.join(out, "distill_data")
    episodes, data = _rollouts(trained, o, data_dir, meta)
    log(
        f"improved policy: {data['rollout_successes']} / {o.episodes} rollouts succeed"
        f"{' (recorded before, reused)' if data.get('reused') else ''}; "
        f"{data['kept_episodes']} episodes ({data['kept_steps']} steps) join the base's demos"
    )
    shift = {}

    def relabel(data: dict) -> dict:  # the labels, and how far each set is from the base
        from resfit_jax.bc.replan import relabel_replanned

        rows = sum(e.num_actions for e in episodes)
        replanned, stats = relabel_replanned(trained.policy(o.seed_index), data, rows)
        shift.update(stats)
        log(
            "label distance from the base's own chunk (mean L2 per position, demos / "
            f"rollouts): executed {stats['executed_demos']:.4f} / "
            f"{stats['executed_rollouts']:.4f}, replanned {stats['replanned_demos']:.4f} / "
            f"{stats['replanned_rollouts']:.4f}; training on the {o.labels} labels"
        )
        return replanned if o.labels == "replanned" else data

    bc = train_bc(
        info["task"],
        out,
        info["demos"],
        steps=o.steps,
        lr=o.lr,
        eval_every=o.eval_every,
        eval_episodes=o.eval_episodes,
        seed=o.seed,
        init_from=base_dir,
        extra_episodes=episodes,
        extra_source=data_dir,
        relabel=relabel,
        dropout=o.dropout,
    )
    task = trained.trainer.task
    distilled, _ = open_base(out, int(task.observation_spec.shape[0]), task.action_size)
    summary = {
        "out": out,
        "distill": {k: v for k, v in data.items() if k != "reused"}
        | {k: getattr(o, k) for k in ("steps", "lr", "eval_episodes", "labels", "dropout")}
        | {"label_shift": shift},
        "bc": {k: bc[k] for k in ("best_step", "success_rate")},
        "round1_env_steps": trained.progress.get("env_steps"),
        "held_out": held_out_comparison(trained, o.seed_index, o.state, distilled),
        "correction_fit": held_out_fit(trained, o.seed_index, distilled),
        "machine": machine_info(),
    }
    with open(os.path.join(out, "distill_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def held_out_fit(trained, seed_index: int, distilled) -> dict:
    """``correction_fit`` of seed ``seed_index``'s improved policy, its base and ``distilled``
    on the seed's held-out starts (host floats)."""
    task, n = trained.trainer.task, trained.cfg.num_final_episodes
    keys = episode_keys(trained.trainer.evaluator.final_keys()[seed_index], n)
    improved = trained.policy(seed_index)
    base = trained.policy(seed_index, residual=False)
    fit = jax.jit(lambda k: correction_fit(task, improved, base, distilled, k))(keys)
    return {k: float(v) for k, v in jax.device_get(fit).items()}


def fit_line(fit: dict) -> str:
    """``correction_fit`` as one line of text."""
    return (
        f"  correction reproduced {fit['reproduced']:.0%} (mean |correction| "
        f"{fit['correction']:.4f}, distilled moved {fit['moved']:.4f}; squared error to the "
        f"improved actions {fit['error_ratio']:.2f} x the base's)"
    )


def held_out_table(held: dict) -> str:
    """``held_out_comparison``'s result as text."""
    lines = [f"Held out ({held['episodes']} starts of the run's seed, paired against the base)"]
    replay = {True: "  (replays the run)", False: "  (NOT the run's outcomes)"}
    for name, r in held["policies"].items():
        pair = (
            f"  fixed {r['fixed']:>3} broken {r['broken']:>3} p {r['p_value']:.2g}"
            if "fixed" in r
            else ""
        )
        lines.append(
            f"  {name:<10} {r['success_rate']:6.1%}  mean steps of successes "
            f"{r['mean_success_length']:5.1f}{pair}{replay.get(r.get('replays_run'), '')}"
        )
    if held["share_of_gain_kept"] is not None:
        lines.append(f"  the distilled base keeps {held['share_of_gain_kept']:.0%} of the gain")
    return "\n".join(lines)
