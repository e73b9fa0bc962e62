"""Evaluation rows, run summaries and the "BC vs ResFiT" table of a simulated run."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from resfit_jax.run.logger import MetricsLogger
from resfit_jax.run.stats import paired_outcomes, wilson_interval

PAIRED_KEYS = ("fixed", "broken", "gain", "churn", "p_value", "diff_ci_low", "diff_ci_high")


def summarize_eval(ev: dict, s: int, base_success=None) -> dict:
    """One seed's evaluation row from a vmapped ``run_episodes`` result; with the base's
    outcomes on the same starts (bool [N]) also the paired fixed / broken / gain / churn /
    McNemar p-value / interval of the difference (``stats.paired_outcomes``)."""
    succ = np.asarray(ev["success"][s])
    n, k = int(succ.size), int(succ.sum())
    lo, hi = wilson_interval(k, n)
    msl = float(ev["mean_success_length"][s])
    row = {
        "success_rate": k / n,
        "successes": k,
        "episodes": n,
        "ci_low": lo,
        "ci_high": hi,
        "mean_success_length": msl if np.isfinite(msl) else None,
    }
    if "length" in ev:
        lengths = np.asarray(ev["length"][s], float)[succ]
        row["success_length_sd"] = float(lengths.std(ddof=1)) if k > 1 else None
    if base_success is not None:
        paired = paired_outcomes(base_success, succ)
        row |= {k: paired[k] for k in PAIRED_KEYS}
    return row


def outcome_bits(success) -> str:
    """Bool [N] -> "0110...": one character per episode, kept in summary.json for the
    held-out starts so two runs on the same starts can be compared episode by episode."""
    return "".join("1" if bool(x) else "0" for x in np.asarray(success).ravel())


def held_out_outcomes(summary: dict, last: bool = False) -> tuple[str, str] | None:
    """(base, policy) held-out outcomes of a run, every seed's episodes in seed order, as
    outcome strings; ``last``: the last state's instead of the kept one. None for runs
    recorded before outcomes were kept."""
    final = summary.get("final") or {}
    rows = (final.get("last") or {}).get("per_seed") if last else final.get("per_seed")
    base_rows = final.get("base_per_seed")
    if not rows or not base_rows or any("outcomes" not in r for r in rows + base_rows):
        return None
    return "".join(r["outcomes"] for r in base_rows), "".join(r["outcomes"] for r in rows)


# How many held-out episodes' base outcomes may differ between two runs that are still paired,
# as a share of the count two independent sets of episodes would differ in (n (p1 (1 - p2) +
# p2 (1 - p1))): float32 rounding of the same base queried in other batches flips borderline
# episodes (measured: 2 of 300 on PickPlace, 3% of the independent count; 17 of 300 on the
# contact-rich PegInsertion, 12%); other starts differ in about the independent count.
BASE_FLIP_SHARE = 0.25


def paired_between(reference: dict, other: dict) -> dict:
    """Two runs' held-out final evaluations compared episode by episode (summary.json
    dicts). ``fixed``: episodes the reference fails and ``other`` solves; ``broken``: the
    reverse; with the McNemar p-value and the interval of other - reference.

    Pairing needs the same held-out starts: the same task and seeds (each seed's starts come
    from its key) and the same base, checked through the base's own outcomes, which the same
    base on the same starts reproduces up to float32 rounding: a base queried in other
    batches (another run config, e.g. ``base_plan``) can flip borderline episodes, so up to
    ``BASE_FLIP_SHARE`` of the count that independent episodes would differ in may differ
    (counted in ``base_disagreements``; other starts differ in about that whole count). Raises
    ValueError naming what differs, or when a run has no stored outcomes (recorded before
    they were kept)."""
    for name, s in (("reference", reference), ("other", other)):
        if held_out_outcomes(s) is None:
            raise ValueError(
                f"paired_between: the {name} run ({s.get('out', '?')}) has no "
                "held-out outcomes in its summary.json (recorded before they "
                "were kept); re-run its final evaluation with --rescore "
                "(studies.compare, studies.ablate) or "
                "sim.trainer.rescore_run."
            )
    for field in ("task", "seeds"):
        if reference.get(field) != other.get(field):
            raise ValueError(
                f"paired_between: the runs differ in {field} "
                f"({reference.get(field)} vs {other.get(field)}), so their "
                "held-out starts differ; compare runs of the same task and seeds."
            )
    (ref_base, ref), (other_base, pol) = held_out_outcomes(reference), held_out_outcomes(other)
    n = len(ref_base)
    differ = sum(a != b for a, b in zip(ref_base, other_base))
    p1, p2 = ref_base.count("1") / max(n, 1), other_base.count("1") / max(len(other_base), 1)
    independent = n * (p1 * (1 - p2) + p2 * (1 - p1))
    allowed = int(BASE_FLIP_SHARE * independent)
    if n != len(other_base) or differ > allowed:
        raise ValueError(
            f"paired_between: the base's held-out outcomes differ in {differ} of "
            f"{n} episodes ({n} vs {len(other_base)} episodes; independent "
            f"episodes would differ in about {independent:.0f}, float32 rounding "
            f"of the same base in at most {allowed}), so the runs did not use the "
            "same starts and base (or the base's action range differs); they are "
            "not paired."
        )
    out = paired_outcomes([c == "1" for c in ref], [c == "1" for c in pol])
    return out | {
        "reference_success_rate": out.pop("base_success_rate"),
        "base_disagreements": differ,
    }


def paired_header(reference: str, other: str) -> str:
    """Column titles for ``paired_cells``."""
    return (
        f"{reference[:10]:>11}{other[:10]:>11}{'fixed':>7}{'broken':>8}{'p':>9}"
        f"{'diff 95% CI':>17}{'BC flips':>10}"
    )


def paired_cells(v: dict) -> str:
    """A ``paired_between`` result as fixed-width cells: the reference's success, the other
    run's, fixed, broken, p-value, the interval of other - reference and the episodes whose
    base outcome differed between the two runs (float32 rounding, ``paired_between``)."""
    ci = f"[{v['diff_ci_low']:+.2f}, {v['diff_ci_high']:+.2f}]"
    return (
        f"{v['reference_success_rate']:>11.1%}{v['success_rate']:>11.1%}{v['fixed']:>7}"
        f"{v['broken']:>8}{v['p_value']:>9.2g}{ci:>17}{v.get('base_disagreements', 0):>10}"
    )


def rescore_differences(recorded: dict, new: dict) -> list[str]:
    """What a rescored final evaluation changed: "field: old -> new" for the pooled counts
    and rates of the kept and (select="best") last states."""
    out = []
    for part in ("pooled", "last"):
        a = recorded.get(part) or {}
        b = new.get(part) or {}
        a, b = (a.get("pooled", a), b.get("pooled", b)) if part == "last" else (a, b)
        for k in ("episodes", "base_success_rate", "success_rate", "fixed", "broken"):
            if k in a and a[k] != b.get(k):
                out.append(f"{part}.{k}: {a[k]} -> {b.get(k)}")
    return out


def pooled(
    base_success: list, policy_success: list, base_rows: list[dict], rows: list[dict]
) -> dict:
    """Paired statistics over all seeds' episodes together, and mean steps of successes."""
    flat = lambda xs: [bool(v) for x in xs for v in x]
    out = paired_outcomes(flat(base_success), flat(policy_success))
    out["base_mean_success_length"] = _mean(base_rows, "mean_success_length")
    out["mean_success_length"] = _mean(rows, "mean_success_length")
    out["base_mean_success_length_ci95"] = length_interval(base_rows)
    out["mean_success_length_ci95"] = length_interval(rows)
    return out


def length_interval(rows: list[dict]) -> list[float] | None:
    """95% normal interval [low, high] (steps) of the mean length of successful episodes,
    every success of every seed counted once: pooled from each row's successes, mean and
    sample SD (``success_length_sd``). None when a row lacks the SD (runs recorded before it
    was kept) or there are fewer than two successes."""
    k = np.array([r["successes"] for r in rows], float)
    if any("success_length_sd" not in r for r in rows) or k.sum() < 2:
        return None
    m = np.array([r["mean_success_length"] if r["successes"] else 0.0 for r in rows], float)
    sd = np.array([r["success_length_sd"] or 0.0 for r in rows], float)
    n = k.sum()
    mean = float((k * m).sum() / n)
    ss = ((np.maximum(k - 1, 0)) * sd**2).sum() + (k * (m - mean) ** 2).sum()
    half = 1.959964 * float(np.sqrt(ss / (n - 1) / n))
    return [mean - half, mean + half]


def log_chunk(
    logger: MetricsLogger,
    seeds: list[int],
    env_steps: int,
    warmup_env_steps: int,
    stats: dict,
    kind: str,
) -> None:
    """One JSONL row per seed of a chunk's stats / metrics (vmapped: leading seed axis)."""
    stats = jax.tree.map(np.asarray, stats)
    for i, s in enumerate(seeds):
        row: dict[str, Any] = {
            "kind": kind,
            "seed": s,
            "env_steps": env_steps,
            "total_env_steps": env_steps + warmup_env_steps,
        }
        for k, v in stats.items():
            row[k] = float(v[i])
        if "episodes" in row:
            row["train_success_rate"] = (
                row["successes"] / row["episodes"] if row["episodes"] else None
            )
        logger.write(row)


def _mean(rows: list[dict], k: str) -> float | None:
    vals = [r[k] for r in rows if r[k] is not None]
    return float(np.mean(vals)) if vals else None


def run_summary(prog, cfg, task_name: str, out: str, method: str = "ResFiT") -> dict:
    """summary.json of a run from its progress record. ``final`` is the evaluation on
    held-out starts (never used for periodic evaluation): per seed and pooled. The method's
    periodic results sit under "resfit" whatever the method (one schema for every run)."""
    base, final = prog.base_eval, prog.last_eval
    critic_warmup = getattr(cfg, "critic_warmup_chunks", 0) * getattr(cfg, "critic_warmup_chunk", 0)
    return {
        "task": task_name,
        "method": method,
        "seeds": prog.seeds,
        "env_steps": prog.env_steps,
        "final": prog.final,
        "warmup_env_steps": prog.warmup_env_steps,
        "critic_warmup_updates": critic_warmup,
        "eval_episodes": cfg.eval_episodes,
        "complete": prog.phase == "done",
        "base": base,
        "resfit": final,
        "base_success_rate": _mean(base, "success_rate"),
        "base_mean_success_length": _mean(base, "mean_success_length"),
        "resfit_success_rate": _mean(final, "success_rate"),
        "resfit_mean_success_length": _mean(final, "mean_success_length"),
        "wall_s": prog.wall_s,
        "out": os.path.relpath(out),
    }


def _fmt_len(x):
    return "-" if x is None else f"{x:.1f}"


# methods whose state at step 0 is not the base (their actor replaces its actions)
NO_BASE_START = ("IBRL", "RLPD")


def final_table(summary: dict) -> str:
    """The held-out final evaluation: per seed and pooled, with fixed / broken and p."""
    final = summary.get("final")
    if not final:
        return ""
    n = final["per_seed"][0]["episodes"]
    method = summary.get("method", "ResFiT")
    method = "PPO" if method == "ResidualPPO" else method[:8]
    lines = [
        f"Held-out final evaluation ({n} new starts per seed, never used for selection):",
        f"{'seed':<7}{'BC':>8}{method:>9}{'fixed':>7}{'broken':>8}{'churn':>7}"
        f"{'p':>9}{'diff 95% CI':>18}{'BC steps':>10}{'steps':>7}",
    ]
    rows = list(zip(summary["seeds"], final["per_seed"], final["base_per_seed"]))
    for s, r, b in rows + [("pooled", final["pooled"], None)]:
        bsteps = b["mean_success_length"] if b else r["base_mean_success_length"]
        lines.append(
            f"{s!s:<7}{r['base_success_rate'] if b is None else b['success_rate']:>8.1%}"
            f"{r['success_rate']:>9.1%}{r['fixed']:>7}{r['broken']:>8}"
            f"{r['churn']:>7.1%}{r['p_value']:>9.2g}"
            f"{f'[{r["diff_ci_low"]:+.2f}, {r["diff_ci_high"]:+.2f}]':>18}"
            f"{_fmt_len(bsteps):>10}{_fmt_len(r['mean_success_length']):>7}"
        )
    kept, last = final.get("selected_env_steps"), (final.get("last") or {}).get("pooled")
    if kept is not None:
        start = (
            "the untrained policy, not the base"
            if summary.get("method") in NO_BASE_START
            else "the base itself"
        )
        lines.append(
            f"select=best: each seed's best periodic state was scored (kept at env "
            f"steps {', '.join(f'{k:,}' for k in kept)}; 0 = {start})."
        )
        if last:
            lines.append(
                f"The last states scored {last['success_rate']:.1%} ({last['fixed']} "
                f"fixed / {last['broken']} broken, p {last['p_value']:.2g})."
            )
    return "\n".join(lines)


def results_table(summary: dict) -> str:
    """ "BC vs ResFiT" table of a summary: the last periodic evaluation per seed and the mean
    over seeds, then the held-out final evaluation (when the run finished)."""
    fmt_len = _fmt_len
    m = summary.get("method", "ResFiT")
    w1, w2, w3 = (max(w, len(m) + k) for w, k in ((16, 10), (16, 9), (14, 8)))
    n = summary["eval_episodes"]
    lines = [
        f"{summary['task']}: BC vs {m}, last periodic evaluation ({n} matched starts per "
        "seed), "
        f"{summary['env_steps']:,} main-loop env steps (+{summary['warmup_env_steps']:,} "
        "warm-up)",
        f"{'seed':<6}{'BC success':>12}{'BC steps':>10}{m + ' success':>{w1}}"
        f"{m + ' 95% CI':>{w2}}{m + ' steps':>{w3}}",
    ]
    for s, b, r in zip(summary["seeds"], summary["base"], summary["resfit"]):
        lines.append(
            f"{s:<6}{b['success_rate']:>12.1%}{fmt_len(b['mean_success_length']):>10}"
            f"{r['success_rate']:>{w1}.1%}"
            f"{f'[{r["ci_low"]:.2f}, {r["ci_high"]:.2f}]':>{w2}}"
            f"{fmt_len(r['mean_success_length']):>{w3}}"
        )
    if len(summary["seeds"]) > 1:
        rs = [r["success_rate"] for r in summary["resfit"]]
        lines.append(
            f"{'mean':<6}{summary['base_success_rate']:>12.1%}"
            f"{fmt_len(summary['base_mean_success_length']):>10}"
            f"{summary['resfit_success_rate']:>{w1}.1%}"
            f"{f'sd {np.std(rs):.2f}':>{w2}}"
            f"{fmt_len(summary['resfit_mean_success_length']):>{w3}}"
        )
    final = final_table(summary)
    return "\n".join(lines) + ("\n\n" + final if final else "")


# ------------------------------------------------------------------------------- mechanism
MECHANISM_KEYS = ("action_gap", "td_error_abs", "q_head_std", "action_gap_head_std")


def mechanism_numbers(metrics_rows: list[dict]) -> dict:
    """Whether the critic can rank corrections, from a run's metrics rows: at the start,
    middle and end of the main loop (mean over seeds), the action gap |Q(s, a_b + r) -
    Q(s, a_b)| (head means, on the actor's batch) against the TD error |mean_k Q_k - y|, the
    head spread (std over heads of Q) and the heads' disagreement on the gap itself (std over
    heads of Q_k(s, a_b + r) - Q_k(s, a_b)). {} for runs logged before the action gap was."""
    train = [r for r in metrics_rows if r.get("kind") == "train" and "action_gap" in r]
    if not train:
        return {}
    steps = sorted({r["env_steps"] for r in train})
    picks = {"start": steps[0], "middle": steps[len(steps) // 2], "end": steps[-1]}
    out = {}
    for name, step in picks.items():
        rows = [r for r in train if r["env_steps"] == step]
        out[name] = {"env_steps": step} | {
            k: float(np.mean([r[k] for r in rows])) for k in MECHANISM_KEYS if k in rows[0]
        }
    return out


def mechanism_table(named: dict[str, dict]) -> str:
    """``mechanism_numbers`` of several settings per stage: the action gap (± the heads'
    disagreement on it) / TD error / head spread."""
    lines = [
        f"{'setting':<34}"
        + "".join(f"{stage + ' gap±sd / td / spread':>38}" for stage in ("start", "middle", "end"))
    ]
    for name, m in named.items():
        if not m:
            continue
        cell = lambda v: (
            f"{v['action_gap']:.4f}"
            + (f"±{v['action_gap_head_std']:.4f}" if "action_gap_head_std" in v else "")
            + f" / {v['td_error_abs']:.4f} / {v['q_head_std']:.4f}"
        )
        cells = "".join(f"{cell(m[s]):>38}" for s in ("start", "middle", "end"))
        lines.append(f"{name[:33]:<34}{cells}")
    return "\n".join(lines)
