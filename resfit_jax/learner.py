"""The small protocol every learner implements; the sim and robot loops depend on it only.

    state          = learner.init(key, normalizer)            # pytree, with state.normalizer
    r, aux         = learner.act(state, obs, base_action, key, deterministic=False, std=None)
    state, metrics = learner.update(state, online, offline)   # [UTD, B_on|B_off, ...] batches
    state, metrics = learner.critic_warmup(state, online, offline)   # optional

Shapes: obs is a pytree of [*B, D_i]; base_action and r are [*B, A] in the normalized action
space of ``state.normalizer`` (``normalization.Normalizer``); aux["action"] is the action
to execute, normalized. ``std`` is the exploration noise's standard deviation (None: the
learner's own; a learner with a stochastic policy of its own may ignore it). ``key`` and
``state.rng`` are typed PRNG keys (``jax.random.key``). Every function is pure and works
under jit and vmap.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax

from resfit_jax.normalization import Normalizer
from resfit_jax.replay import Transition

PyTree = Any


@runtime_checkable
class Learner(Protocol):
    obs_dim: int
    action_dim: int

    def init(self, key: jax.Array, normalizer: Normalizer | None = None) -> PyTree: ...

    def act(
        self,
        state: PyTree,
        obs: PyTree,
        base_action: jax.Array,
        key: jax.Array,
        deterministic: bool = False,
        std: float | jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]: ...

    def update(
        self, state: PyTree, online: Transition, offline: Transition | None
    ) -> tuple[PyTree, dict[str, jax.Array]]: ...


def has_critic_warmup(learner: Learner) -> bool:
    """Whether the learner has a critic-only warm-up phase (``critic_warmup``)."""
    return callable(getattr(learner, "critic_warmup", None))
