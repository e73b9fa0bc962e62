"""What a robot run builds from its config, base and demos before any robot is touched: the
learner (on the robot's observation, plus the base's plan with semi-MDP decisions), the
normalizer (with the plan's statistics) and the demo buffer (``learner_inputs``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from resfit_jax.agents.residual_td3 import make_learner
from resfit_jax.base.features import decision_inputs, learner_obs_spec
from resfit_jax.base.policy import BasePolicy
from resfit_jax.data.rlds import Episode
from resfit_jax.learner import Learner
from resfit_jax.normalization import Normalizer
from resfit_jax.replay.decision_demos import demo_buffer
from resfit_jax.replay.demos import with_feature_stats


def learner_inputs(
    cfg: Any,
    base: BasePolicy,
    obs_spec: Any,
    action_dim: int,
    normalizer: Normalizer,
    demos: Sequence[Episode],
    obs_min_std: float = 2e-4,
) -> tuple[Learner, Normalizer, Any]:
    """(learner, normalizer, demo buffer or None) for a ``RobotTrainConfig``.

    ``normalizer``: fitted on the demos (``replay.demos.fit_normalizer``). With
    ``cfg.decision_steps`` k > 1 the learner's observation gains the base's plan for the k
    steps of a decision (``base.features.decision_inputs``), the normalizer its statistics on
    the demo frames, and the demo buffer holds one decision window per demo step
    (``cfg.demo_relabel``; with ``cfg.mc_bound`` each carries its return-to-go). The demo
    buffer is None when the batches take no demos (``replay.offline_fraction`` 0).
    """
    features = offsets = None
    if cfg.decision_steps > 1:
        features, offsets = decision_inputs(base, cfg.decision_steps)
        normalizer = with_feature_stats(normalizer, demos, base, features, obs_min_std, offsets)
    spec = learner_obs_spec(obs_spec, features, offsets, action_dim)
    learner = make_learner(cfg.learner, spec, action_dim)
    offline = demo_buffer(
        demos,
        base,
        normalizer,
        cfg.replay,
        features,
        offsets,
        cfg.demo_relabel,
        cfg.learner.action_scale,
        cfg.mc_bound,
        tuple(cfg.learner.residual_dims),
    )
    return learner, normalizer, offline
