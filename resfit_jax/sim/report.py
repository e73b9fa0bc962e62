"""Evaluation rows, run summaries and the "BC vs ResFiT" table of a simulated run."""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from resfit_jax.logger import MetricsLogger
from resfit_jax.stats import wilson_interval


def summarize_eval(ev: dict, s: int) -> dict:
    """One seed's evaluation row from a vmapped ``run_episodes`` result."""
    succ = np.asarray(ev["success"][s])
    n, k = int(succ.size), int(succ.sum())
    lo, hi = wilson_interval(k, n)
    msl = float(ev["mean_success_length"][s])
    return {"success_rate": k / n, "successes": k, "episodes": n, "ci_low": lo, "ci_high": hi,
            "mean_success_length": msl if np.isfinite(msl) else None}


def log_chunk(logger: MetricsLogger, seeds: list[int], env_steps: int, warmup_env_steps: int,
              stats: dict, kind: str) -> None:
    """One JSONL row per seed of a chunk's stats / metrics (vmapped: leading seed axis)."""
    stats = jax.tree.map(np.asarray, stats)
    for i, s in enumerate(seeds):
        row: dict[str, Any] = {"kind": kind, "seed": s, "env_steps": env_steps,
                               "total_env_steps": env_steps + warmup_env_steps}
        for k, v in stats.items():
            row[k] = float(v[i])
        if "episodes" in row:
            row["train_success_rate"] = row["successes"] / row["episodes"] if row["episodes"] else None
        logger.write(row)


def _mean(rows: list[dict], k: str) -> float | None:
    vals = [r[k] for r in rows if r[k] is not None]
    return float(np.mean(vals)) if vals else None


def run_summary(prog, cfg, task_name: str, out: str) -> dict:
    """summary.json of a run from its progress record."""
    base, final = prog.base_eval, prog.last_eval
    return {"task": task_name, "seeds": prog.seeds, "env_steps": prog.env_steps,
            "warmup_env_steps": prog.warmup_env_steps,
            "critic_warmup_updates": cfg.critic_warmup_chunks * cfg.critic_warmup_chunk,
            "eval_episodes": cfg.eval_episodes, "complete": prog.phase == "done",
            "base": base, "resfit": final,
            "base_success_rate": _mean(base, "success_rate"),
            "base_mean_success_length": _mean(base, "mean_success_length"),
            "resfit_success_rate": _mean(final, "success_rate"),
            "resfit_mean_success_length": _mean(final, "mean_success_length"),
            "wall_s": prog.wall_s, "out": os.path.relpath(out)}


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
