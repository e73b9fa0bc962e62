"""Policy selection on the periodic evaluations ("keep the best", per seed).

With ``TrainConfig.select="best"`` a run keeps, for each seed, the learner state of its
best periodic evaluation so far (success rate on the periodic starts; the step-0
evaluation is the first candidate, so a ResFiT run whose residual never beats its base on
those starts ends with the zero residual, i.e. the base). Only a strictly higher success
rate replaces the kept state: ties keep the earlier, less-changed policy; with
``select_margin`` m the lead must exceed m (a guard against keeping a state on the periodic
evaluation's noise). The held-out
final evaluation then scores the kept state on starts that no selection has seen, and
also the last state, so the summary shows what selection bought.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

SELECT_RULES = ("last", "best")


def copy_tree(tree: Any) -> Any:
    """A copy with fresh buffers (the loop state's are donated to the next chunk)."""
    return jax.tree.map(jnp.copy, tree)


def keep_better(kept: Any, current: Any, better: np.ndarray) -> Any:
    """Per seed (leading axis S of every leaf): ``current`` where ``better`` [S] else
    ``kept``."""
    better = jnp.asarray(better, bool)

    def pick(k, c):
        mask = better.reshape(better.shape + (1,) * (c.ndim - 1))
        return jnp.where(mask, c, k)

    return jax.tree.map(pick, kept, current)


def improved(rates: list[float], best: list[float], margin: float = 0.0) -> np.ndarray:
    """bool [S]: where this evaluation's success rate beats the kept one by more than
    ``margin`` (strictly: a tie, or a lead of exactly the margin, keeps the earlier)."""
    return np.asarray(rates, float) > np.asarray(best, float) + margin + 1e-12
