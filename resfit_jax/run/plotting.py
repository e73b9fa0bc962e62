"""Learning curves of residual runs from their metrics.jsonl files (matplotlib, Agg backend).

    plot_runs(["runs/residual/PickPlace", "runs/other"], "curves.png", labels=["a", "b"])

Left: evaluation success rate vs main-loop env steps, mean over seeds with a min-max band,
and the base's success (dashed) for reference. Right: mean steps of successful episodes vs
env steps (steps-to-success), same layout. Returns the per-run curves as dicts.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from resfit_jax.run.logger import read_metrics


def eval_curves(run_dir: str) -> dict:
    """{"env_steps" [T] (main loop), "total_env_steps" [T] (with warm-up collection),
    "success" [S, T], "length" [S, T] (NaN: no success), "base" [S], "episodes" [S] (per
    evaluation), "seeds" [S]} from a run's eval rows (only steps that every seed reached)."""
    rows = [r for r in read_metrics(run_dir) if r.get("kind") == "eval"]
    if not rows:
        raise ValueError(f"{run_dir}: metrics.jsonl has no evaluation rows yet.")
    by_seed: dict[int, dict[int, dict]] = defaultdict(dict)
    for r in rows:
        by_seed[r["seed"]][r["env_steps"]] = r
    seeds = sorted(by_seed)
    steps = sorted(set.intersection(*(set(v) for v in by_seed.values())))
    get = lambda s, t, k: by_seed[s][t].get(k)
    success = np.array([[get(s, t, "success_rate") for t in steps] for s in seeds], float)
    length = np.array(
        [
            [
                np.nan
                if get(s, t, "mean_success_length") is None
                else get(s, t, "mean_success_length")
                for t in steps
            ]
            for s in seeds
        ]
    )
    base = np.array([by_seed[s][steps[0]].get("base_success_rate", np.nan) for s in seeds])
    episodes = np.array([by_seed[s][steps[0]].get("episodes", 0) for s in seeds], int)
    total = np.array([by_seed[seeds[0]][t].get("total_env_steps", t) for t in steps])
    return {
        "env_steps": np.array(steps),
        "total_env_steps": total,
        "success": success,
        "length": length,
        "base": base,
        "episodes": episodes,
        "seeds": seeds,
    }


def plot_runs(
    run_dirs: Sequence[str], out: str, labels: Sequence[str] | None = None, title: str | None = None
) -> list[dict]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(labels) if labels else [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    if len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs.")
    fig, (ax_s, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    curves = []
    for i, (d, label) in enumerate(zip(run_dirs, labels)):
        c = eval_curves(d)
        curves.append(c)
        color = f"C{i}"
        x = c["env_steps"]
        n = len(c["seeds"])
        for ax, y in ((ax_s, c["success"]), (ax_l, c["length"])):
            with np.errstate(all="ignore"):
                mean = np.nanmean(y, axis=0)
                lo, hi = np.nanmin(y, axis=0), np.nanmax(y, axis=0)
            ax.plot(x, mean, color=color, label=f"{label} ({n} seed{'s' * (n > 1)})")
            if n > 1:
                ax.fill_between(x, lo, hi, color=color, alpha=0.2)
        ax_s.axhline(
            float(np.nanmean(c["base"])), color=color, ls="--", lw=1, label=f"{label}: BC base"
        )
    ax_s.set(
        xlabel="env steps (main loop)",
        ylabel="success rate",
        ylim=(-0.02, 1.02),
        title="evaluation success",
    )
    ax_l.set(
        xlabel="env steps (main loop)",
        ylabel="mean steps of successful episodes",
        title="steps to success",
    )
    ax_s.legend(fontsize=8)
    ax_l.legend(fontsize=8)
    for ax in (ax_s, ax_l):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return curves


def save_success_plot(fig, ax, title: str, path: str) -> None:
    """Finish a success-against-env-steps figure (log x, the studies' labels, grid, legend)
    and write it to ``path`` (PNG), creating its folder."""
    import matplotlib.pyplot as plt

    ax.set(
        xscale="log",
        xlabel="env steps (incl. warm-up collection)",
        ylabel="success rate (periodic, matched starts)",
        ylim=(-0.02, 1.02),
        title=title,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
