"""What keeps a robot safe between the policy and the arm: ``SafetyLimits`` (absolute bounds
and a maximum change per step on every command, clipping counted), ``RateClock`` (fixed-rate
ticks with deadline monitoring) and ``EmergencyStop``."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np

from resfit_jax.data.rlds import Episode
from resfit_jax.observations import state_of


class EmergencyStop(RuntimeError):
    """Raised by the trainer after an e-stop episode has been journaled."""


# ---------------------------------------------------------------------------------- safety
@dataclasses.dataclass(frozen=True)
class SafetyLimits:
    """Command limits [A]: ``low <= command <= high`` and ``|command - previous| <= max_delta``.

    ``obs_index[i]`` is the observation entry that measures action dim i (e.g. the joint
    position behind a joint target; -1 if none); it gives the "previous command" at an
    episode's first step. Without it the first step is bounded by ``low``/``high`` only.
    """

    low: np.ndarray
    high: np.ndarray
    max_delta: np.ndarray
    obs_index: tuple[int, ...] | None = None

    def __post_init__(self):
        low, high = np.asarray(self.low, np.float32), np.asarray(self.high, np.float32)
        d = np.broadcast_to(np.asarray(self.max_delta, np.float32), low.shape).copy()
        if low.ndim != 1 or high.shape != low.shape:
            raise ValueError(
                f"SafetyLimits: low {low.shape} and high {high.shape} must be equal 1-D shapes [A]."
            )
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(low <= high)):
            raise ValueError("SafetyLimits: need finite low <= high in every dim.")
        if not np.all(d > 0):
            raise ValueError(f"SafetyLimits: max_delta must be > 0 in every dim, got {d}.")
        if self.obs_index is not None and len(self.obs_index) != low.shape[0]:
            raise ValueError(
                f"SafetyLimits: obs_index has {len(self.obs_index)} entries for "
                f"{low.shape[0]} action dims."
            )
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        object.__setattr__(self, "max_delta", d)

    @property
    def action_size(self) -> int:
        return int(self.low.shape[0])

    @classmethod
    def from_demos(
        cls,
        episodes: Sequence[Episode],
        low,
        high,
        delta_margin: float = 1.5,
        obs_index: Sequence[int] | None = None,
    ) -> SafetyLimits:
        """Bounds ``low``/``high`` (e.g. the task's joint limits) and a per-step change limit
        of ``delta_margin`` times the largest change any demo made in each dim."""
        deltas = [
            np.abs(np.diff(ep.action[:-1], axis=0)).max(axis=0)
            for ep in episodes
            if ep.num_actions > 1
        ]
        if not deltas:
            raise ValueError("SafetyLimits.from_demos: no demo with two or more actions.")
        d = np.max(deltas, axis=0) * delta_margin
        return cls(
            low, high, np.maximum(d, 1e-4), tuple(obs_index) if obs_index is not None else None
        )

    def initial_command(self, obs: np.ndarray) -> np.ndarray:
        """The measured "previous command" [A] at an episode's first step (NaN = unknown)."""
        prev = np.full(self.action_size, np.nan, np.float32)
        if self.obs_index is not None:
            idx = np.asarray(self.obs_index)
            known = idx >= 0
            prev[known] = np.asarray(state_of(obs), np.float32)[idx[known]]
        return prev

    def apply(self, previous: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(command [A] float32, clipped [A] bool). ``previous`` entries that are NaN have no
        rate limit. A non-finite action raises ValueError (the caller stops the robot)."""
        a = np.asarray(action, np.float32)
        if a.shape != self.low.shape:
            raise ValueError(
                f"SafetyLimits.apply: action shape {a.shape}, expected {self.low.shape}."
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"SafetyLimits.apply: non-finite action {a}; refusing to send it.")
        prev = np.asarray(previous, np.float32)
        known = np.isfinite(prev)
        p = np.clip(np.where(known, prev, 0.0), self.low, self.high)
        lo = np.where(known, np.maximum(self.low, p - self.max_delta), self.low)
        hi = np.where(known, np.minimum(self.high, p + self.max_delta), self.high)
        cmd = np.clip(a, lo, hi).astype(np.float32)
        return cmd, cmd != a


# ------------------------------------------------------------------------------- timing
class RateClock:
    """Ticks at ``hz``; ``wait()`` sleeps until the next tick and reports an overrun when the
    step's work ended more than ``tolerance_s`` after that tick (then re-anchors, so one
    slow step does not make the following ones late)."""

    def __init__(
        self,
        hz: float,
        tolerance_s: float = 0.0,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if hz <= 0:
            raise ValueError(f"RateClock: hz must be > 0, got {hz}.")
        self.period, self.tolerance_s = 1.0 / hz, float(tolerance_s)
        self._clock, self._sleep = clock, sleep
        self.start()

    def start(self) -> None:
        self._t0 = self._clock()
        self._k = 0

    def wait(self) -> float:
        """Returns the lateness (s) of this step's work past its tick (<= 0 when on time)."""
        self._k += 1
        tick = self._t0 + self._k * self.period
        now = self._clock()
        late = now - tick
        if late > self.tolerance_s:
            self._t0, self._k = now, 0
        elif late < 0:
            self._sleep(-late)
        return late

    def overrun(self, late: float) -> bool:
        return late > self.tolerance_s
