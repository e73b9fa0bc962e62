"""``ReplayConfig``: how transitions are written (n-step, gamma, truncation) and sampled (UTD,
batch, demo fraction, capacity, frame-once storage of camera frames), and the one place that
builds the writer, buffer, frame ring and mixer from them.
"""

from __future__ import annotations

import dataclasses

from resfit_jax.replay.buffer import Mixer, ReplayBuffer, make_mixer
from resfit_jax.replay.decisions import DecisionWriter, EpisodeDecisionWriter
from resfit_jax.replay.frames import FrameStore, frame_capacity
from resfit_jax.replay.nstep import NStepWriter


# ----------------------------------------------------------------------------- config, mixer
@dataclasses.dataclass(frozen=True)
class ReplayConfig:
    """How transitions are written and sampled, separate from any learner's hyperparameters.

    n_step, gamma, bootstrap_truncation: the n-step writer (``writer()``). utd: critic steps
    (batch rows) per learner update; batch_size: samples per critic step, offline_fraction of
    them from the demo buffer (``mixer()``); capacity: online transitions per seed.
    """

    n_step: int = 3
    gamma: float = 0.99
    bootstrap_truncation: bool = True
    utd: int = 4
    batch_size: int = 256
    offline_fraction: float = 0.5
    capacity: int = 200_000
    demo_n_step: int | None = None  # n of the demo buffer's returns (None: n_step)
    frame_once: bool = False  # camera observations: store each frame once (``frames``)
    # instead of twice per transition (the pixel presets)
    frame_margin: float = 0.25  # frame-once ring: capacity * (1 + margin) frames plus
    # the n-step windows (``frames.frame_capacity``); enough
    # while episodes last >= 1 / margin steps on average

    def __post_init__(self):
        from resfit_jax.run.validation import number_errors

        errors = number_errors(self)
        if self.n_step < 1:
            errors.append(f"n_step must be >= 1 (got {self.n_step})")
        if not 0.0 < self.gamma <= 1.0:
            errors.append(f"gamma must be in (0, 1] (got {self.gamma})")
        if self.utd < 1:
            errors.append(f"utd must be >= 1 (got {self.utd})")
        if self.batch_size < 2:
            errors.append(f"batch_size must be >= 2 (got {self.batch_size})")
        if not 0.0 <= self.offline_fraction < 1.0:
            errors.append(f"offline_fraction must be in [0, 1) (got {self.offline_fraction})")
        if self.capacity < 1:
            errors.append(f"capacity must be >= 1 (got {self.capacity})")
        if self.demo_n_step is not None and self.demo_n_step < 1:
            errors.append(f"demo_n_step must be >= 1 or None (got {self.demo_n_step})")
        if not 0.0 <= self.frame_margin <= 4.0:
            errors.append(f"frame_margin must be in [0, 4] (got {self.frame_margin})")
        if errors:
            raise ValueError("ReplayConfig: " + "; ".join(errors) + ".")

    @property
    def offline_batch_size(self) -> int:
        return int(round(self.batch_size * self.offline_fraction))

    @property
    def online_batch_size(self) -> int:
        return self.batch_size - self.offline_batch_size

    def writer(self) -> NStepWriter:
        """The n-step writer of this config (the one way to build it)."""
        return NStepWriter(self.n_step, self.gamma, self.bootstrap_truncation)

    def decision_writer(self) -> DecisionWriter:
        """The semi-MDP writer (``decisions``): ``n_step`` counts decisions there."""
        return DecisionWriter(self.n_step, self.gamma, self.bootstrap_truncation)

    def episode_decision_writer(self, max_decisions: int) -> EpisodeDecisionWriter:
        """The semi-MDP writer with the Monte-Carlo bound (one decision per return)."""
        return EpisodeDecisionWriter(max_decisions, self.gamma, self.bootstrap_truncation)

    def online_writer(
        self, decisions: bool = False, mc_bound: bool = False, steps: int = 1, every: int = 1
    ):
        """The writer of an online stream: n-step transitions, one per decision
        (``decisions``; windows of ``every`` env steps), or with ``mc_bound`` an episode's
        decisions (at most ceil(steps / every) + 1 for episodes of up to ``steps`` env steps),
        emitted with their return-to-go when it ends."""
        if mc_bound:
            return self.episode_decision_writer(-(-int(steps) // every) + 1)
        return self.decision_writer() if decisions else self.writer()

    def demo_writer(self) -> NStepWriter:
        """The n-step writer of the demo buffer (``demo_n_step``, default ``n_step``)."""
        n = self.n_step if self.demo_n_step is None else self.demo_n_step
        return NStepWriter(n, self.gamma, self.bootstrap_truncation)

    def buffer(self) -> ReplayBuffer:
        """The online ring buffer of this config."""
        return ReplayBuffer(self.capacity)

    def frame_store(self, num_envs: int) -> FrameStore:
        """The frame-once ring for ``num_envs`` streams (``frames.frame_capacity``)."""
        return FrameStore(frame_capacity(self.capacity, self.n_step, num_envs, self.frame_margin))

    def mixer(self, offline: ReplayBuffer | None, steps: int | None = None) -> Mixer:
        """Online + demo mixer with ``steps`` batch rows per sample (default ``utd``)."""
        return make_mixer(
            self.buffer(),
            offline,
            self.batch_size,
            self.offline_fraction if offline is not None else 0.0,
            self.utd if steps is None else steps,
        )
