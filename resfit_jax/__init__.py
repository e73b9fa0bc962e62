"""resfit-jax: residual off-policy RL (ResFiT) that improves a frozen behaviour-cloning policy,
in JAX. The names below are the stable public surface; import them from the package top
(``from resfit_jax import make_learner``), so that a module moving inside the package never
breaks your code. Submodules (``resfit_jax.sim``, ``resfit_jax.robot``, ...) hold the rest.

    learner = make_learner(ResidualTD3Config.small(), obs_spec=28, action_dim=7)
    state = learner.init(key, fit_normalizer(demo_episodes, action_scale=0.1))
    r, aux = learner.act(state, obs, base_action, key)
    state, metrics = replay_updates(learner, state, mixer, online, offline, key, 1)

Names load on first use, so ``import resfit_jax`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_EXPORTS = {
    # the learner
    "Learner": "resfit_jax.learner",
    "ResidualTD3Config": "resfit_jax.agents.residual_td3",
    "LearnerState": "resfit_jax.agents.residual_td3",
    "make_learner": "resfit_jax.agents.residual_td3",
    # replay: config, n-step writer, ring buffer, mixer, and the update both loops run
    "ReplayConfig": "resfit_jax.replay",
    "Transition": "resfit_jax.replay",
    "transition_spec": "resfit_jax.replay",
    "NStepWriter": "resfit_jax.replay",
    "ReplayBuffer": "resfit_jax.replay",
    "ReplayState": "resfit_jax.replay",
    "Mixer": "resfit_jax.replay",
    "make_mixer": "resfit_jax.replay",
    "replay_updates": "resfit_jax.replay.updates",
    "critic_warmup_updates": "resfit_jax.replay.updates",
    "offline_buffer": "resfit_jax.replay.demos",
    # normalization
    "Normalizer": "resfit_jax.normalization",
    "ActionScaler": "resfit_jax.normalization",
    "StateStandardizer": "resfit_jax.normalization",
    "fit_normalizer": "resfit_jax.replay.demos",
    # base adapters and base + residual as one policy
    "BasePolicy": "resfit_jax.base.policy",
    "FunctionBase": "resfit_jax.base.policy",
    "ChunkedBase": "resfit_jax.base.policy",
    "load_exported_base": "resfit_jax.base.policy",
    "host_callback_base": "resfit_jax.base.callback",
    "ResidualPolicy": "resfit_jax.base.residual",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'resfit_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
