"""Statistics for success rates: Wilson intervals and paired comparisons of two policies on
the same initial states (churn, gain, exact McNemar p-value, Agresti-Min interval)."""

from __future__ import annotations

import math


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials (95% for z = 1.96)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def mcnemar_exact(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar p-value of paired binary outcomes: ``fixed`` pairs went
    failure -> success, ``broken`` success -> failure (a binomial test of fixed vs broken at
    p = 1/2 over the discordant pairs). 1.0 when there are none."""
    n = fixed + broken
    if n == 0:
        return 1.0
    k = min(fixed, broken)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def paired_difference_interval(
    fixed: int, broken: int, n: int, z: float = 1.96
) -> tuple[float, float]:
    """Agresti-Min interval of the paired difference in success rates, (fixed - broken) / n,
    over n matched pairs (each discordant cell and the total adjusted by +0.5 / +2)."""
    if n == 0:
        return (-1.0, 1.0)
    m = n + 2.0
    p_fixed, p_broken = (fixed + 0.5) / m, (broken + 0.5) / m
    d = p_fixed - p_broken
    se = math.sqrt(max(p_fixed + p_broken - d * d, 0.0) / m)
    return (max(-1.0, d - z * se), min(1.0, d + z * se))


def paired_outcomes(base_success, policy_success) -> dict:
    """Compare two policies on the same N initial states (bool [N] each).

    Returns n, base and policy success rates, fixed (base fails, policy succeeds) and broken
    (base succeeds, policy fails) counts, gain = fixed / n, churn = broken / n, the exact
    McNemar p-value and the Agresti-Min 95% interval of the difference.
    """
    base = [bool(x) for x in base_success]
    pol = [bool(x) for x in policy_success]
    if len(base) != len(pol):
        raise ValueError(
            f"paired_outcomes: {len(base)} base outcomes but {len(pol)} policy "
            "outcomes; compare the same episodes."
        )
    n = len(base)
    fixed = sum((not b) and p for b, p in zip(base, pol))
    broken = sum(b and (not p) for b, p in zip(base, pol))
    lo, hi = paired_difference_interval(fixed, broken, n)
    return {
        "episodes": n,
        "base_success_rate": sum(base) / n if n else float("nan"),
        "success_rate": sum(pol) / n if n else float("nan"),
        "fixed": fixed,
        "broken": broken,
        "gain": fixed / n if n else float("nan"),
        "churn": broken / n if n else float("nan"),
        "p_value": mcnemar_exact(fixed, broken),
        "diff_ci_low": lo,
        "diff_ci_high": hi,
    }
