"""The learner update both loops run: k updates on fresh mixed online + demo batches.

The sim loop calls these inside its jitted scan; the robot learner jits them on their own.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from resfit_jax.learner import Learner
from resfit_jax.replay import Mixer, ReplayState

PyTree = Any


def reduce_metrics(metrics: dict) -> dict:
    """Means over a scan's leading axis; ``nonfinite_mask`` is OR-ed (any update flags it)."""
    return {
        k: (jnp.bitwise_or.reduce(v, axis=0) if k == "nonfinite_mask" else jnp.mean(v, axis=0))
        for k, v in metrics.items()
    }


def replay_updates(
    learner: Learner,
    learner_state: PyTree,
    mixer: Mixer,
    online: ReplayState,
    offline: ReplayState | None,
    key: jax.Array,
    num_updates: int,
) -> tuple[PyTree, dict]:
    """Jittable: ``num_updates`` learner updates, each on its own ``mixer.sample`` (e.g.
    [UTD, B_on] + [UTD, B_off]); metrics are means over the updates."""

    def one(ls, k):
        on, off = mixer.sample(k, online, offline)
        return learner.update(ls, on, off)

    learner_state, metrics = jax.lax.scan(one, learner_state, jax.random.split(key, num_updates))
    return learner_state, reduce_metrics(metrics)


def critic_warmup_updates(
    learner: Learner,
    learner_state: PyTree,
    mixer: Mixer,
    online: ReplayState,
    offline: ReplayState | None,
    key: jax.Array,
    num_updates: int,
) -> tuple[PyTree, dict]:
    """Jittable: ``num_updates`` critic-only steps, each on its own one-row sample (build the
    mixer with ``steps=1``)."""

    def one(ls, k):
        on, off = mixer.sample(k, online, offline)
        return learner.critic_warmup(ls, on, off)

    learner_state, metrics = jax.lax.scan(one, learner_state, jax.random.split(key, num_updates))
    return learner_state, reduce_metrics(metrics)
