"""Tuned RLPD (the ResFiT paper's baseline): residual TD3 with no base.

The learner is residual TD3 itself (``agents.residual_td3``) with a full-range output
(action_scale 1.0, default last-layer init); the recipe is ``sim.presets.with_method(cfg,
"rlpd")``. What makes it base-free is ``NoBase``: the "base action" it acts around is the
middle of the action range (0 in normalized units), everywhere, so the actor's output is
the whole action, the critic's input is the executed action, and demo transitions keep
their demo actions. The BC base stays the paired reference of every evaluation.
"""

from resfit_jax.agents.rlpd.no_base import NoBase

__all__ = ["NoBase"]
