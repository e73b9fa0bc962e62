"""Replay: what both training loops store and sample, flashbax style (init / add / sample).

- ``nstep``: ``Transition`` and the ``NStepWriter`` (one window per env stream, fixed shapes).
- ``decisions``: semi-MDP replay, one transition per residual decision (``DecisionWriter``)
  and the demos as decision windows.
- ``buffer``: the device ring buffer and the online + demo ``Mixer``.
- ``config``: ``ReplayConfig``, the one place that builds writer, buffer and mixer.
- ``frames``: frame-once storage of camera frames (transitions hold frame ids).
- ``demos``: the demo buffer relabelled by the base, and ``fit_normalizer``.
- ``updates``: ``replay_updates`` and the critic warm-up, the update both loops run.
"""

from resfit_jax.replay.buffer import Mixer, ReplayBuffer, ReplayState, make_mixer
from resfit_jax.replay.config import ReplayConfig
from resfit_jax.replay.decisions import DecisionState, DecisionWriter, EpisodeDecisionWriter
from resfit_jax.replay.nstep import NStepState, NStepWriter, Transition, transition_spec

__all__ = [
    "DecisionState",
    "DecisionWriter",
    "EpisodeDecisionWriter",
    "Mixer",
    "NStepState",
    "NStepWriter",
    "ReplayBuffer",
    "ReplayConfig",
    "ReplayState",
    "Transition",
    "make_mixer",
    "transition_spec",
]
