"""What every simulated trainer builds from a task, a base, its demos and a config: the
checked demos, the re-chunked base, the time feature, the normalizer fitted on the demos and
the base's chunk features and offsets for the learner (``prepare_inputs``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from resfit_jax.base.features import (
    BaseFeatures,
    Offsets,
    chunked_base,
    decision_inputs,
    make_offsets,
    rechunk,
)
from resfit_jax.base.policy import BasePolicy, ObservationPrefix
from resfit_jax.data.rlds import Episode, check_compatible
from resfit_jax.envs.core import Env, TimeFeature
from resfit_jax.normalization import Normalizer
from resfit_jax.observations import camera_shapes, state_size
from resfit_jax.replay.demos import fit_normalizer, with_feature_stats, with_time_feature


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What both simulated trainers build from a base, its demos and a config."""

    task: Env
    base: BasePolicy
    episodes: list
    normalizer: Normalizer
    features: BaseFeatures | None
    offsets: Offsets | None = None


def prepare_inputs(
    task: Env, base: BasePolicy, episodes: Sequence[Episode], cfg: Any, action_scale: float
) -> Inputs:
    """Check the base and demos against the task, re-chunk the base, add the time feature,
    fit the normalizer (demo action range widened by the residual's ``action_scale``) and the
    base's chunk features. ``cfg``: a TrainConfig or a PPOTrainConfig."""
    if base.action_dim != task.action_size:
        raise ValueError(
            f"The base policy's action size ({base.action_dim}) does not match the "
            f"task's ({task.action_size}); load the base trained for this task."
        )
    episodes = list(episodes)[: cfg.num_demos] if cfg.num_demos else list(episodes)
    base = rechunk(base, cfg.base.execution_horizon, cfg.base.temporal_ensemble)
    spec = task.observation_spec
    obs_dim = state_size(spec)
    check_compatible(episodes, obs_dim, task.action_size, type(task).__name__, camera_shapes(spec))
    res = cfg.residual
    if res.time_feature:
        base = ObservationPrefix(base, obs_dim)
        episodes = with_time_feature(episodes, task.horizon)
        task = TimeFeature(task)
    normalizer = fit_normalizer(episodes, action_scale, cfg.action_margin, cfg.obs_min_std)
    k = getattr(res, "decision_steps", 1)
    if k > 1:  # semi-MDP: decide at refills and every k steps between them, see the plan
        slope = getattr(res, "window", "offset") == "offset_slope"
        features, offsets = decision_inputs(base, k, res.base_phase, res.base_plan, slope)
    else:
        features = BaseFeatures.for_base(base, res.base_phase, res.base_plan)
        offsets = make_offsets(res.offset_bound, res.hold)
    if offsets is not None:
        chunked_base(base)  # offsets reset at refills: a chunked base only
    if features is not None or offsets is not None:
        normalizer = with_feature_stats(
            normalizer, episodes, base, features, cfg.obs_min_std, offsets
        )
    return Inputs(task, base, episodes, normalizer, features, offsets)
