"""``Episode``: one episode as numpy arrays in the RLDS layout (T + 1 steps; see
``data.rlds`` for the step schema), with its checks and ``from_rollout``."""

from __future__ import annotations

import dataclasses

import numpy as np

STEP_KEYS = ("action", "reward", "discount", "is_first", "is_last", "is_terminal")


def _first(n: int) -> np.ndarray:
    f = np.zeros(n, bool)
    f[0] = True
    return f


def _last(n: int) -> np.ndarray:
    f = np.zeros(n, bool)
    f[-1] = True
    return f


@dataclasses.dataclass
class Episode:
    """One episode as numpy arrays, T + 1 steps (see the module docstring)."""

    observation: np.ndarray  # [T + 1, O] float32 (the state vector)
    action: np.ndarray  # [T + 1, A] float32 (last row zeros)
    reward: np.ndarray  # [T + 1] float32
    discount: np.ndarray  # [T + 1] float32
    is_first: np.ndarray  # [T + 1] bool
    is_last: np.ndarray  # [T + 1] bool
    is_terminal: np.ndarray  # [T + 1] bool
    episode_id: int = 0
    success: bool = False
    seed: int = -1
    images: dict[str, np.ndarray] | None = None  # camera -> uint8 [T + 1, H, W, C]

    @property
    def num_actions(self) -> int:
        return int(self.action.shape[0]) - 1

    @property
    def obs(self):
        """The observations as the task gives them: the state [T + 1, O], or with cameras
        {"state": [T + 1, O], camera: uint8 [T + 1, H, W, C], ...}."""
        return {"state": self.observation, **self.images} if self.images else self.observation

    @property
    def camera_shapes(self) -> dict[str, tuple[int, ...]]:
        return {c: tuple(x.shape[1:]) for c, x in (self.images or {}).items()}

    @classmethod
    def from_rollout(
        cls,
        observations: np.ndarray,
        actions: np.ndarray,
        success: bool,
        episode_id: int = 0,
        seed: int = -1,
    ) -> Episode:
        """Build from T + 1 observations [T + 1, O] (or a dict with "state" [T + 1, O] and
        camera images uint8 [T + 1, H, W, C]) and T actions [T, A]; the reward is the sparse
        success reward (1 on the last action of a successful episode)."""
        images = None
        if isinstance(observations, dict):
            images = {k: np.asarray(v, np.uint8) for k, v in observations.items() if k != "state"}
            observations = observations["state"]
        observations = np.asarray(observations, np.float32)
        actions = np.asarray(actions, np.float32)
        t = actions.shape[0]
        if observations.shape[0] != t + 1:
            raise ValueError(
                f"Episode.from_rollout: {observations.shape[0]} observations for "
                f"{t} actions; expected T + 1 = {t + 1}."
            )
        reward = np.zeros(t + 1, np.float32)
        discount = np.ones(t + 1, np.float32)
        if success:
            reward[t - 1] = 1.0
            discount[t] = 0.0
        return cls(
            observation=observations,
            action=np.concatenate([actions, np.zeros((1, actions.shape[1]), np.float32)]),
            reward=reward,
            discount=discount,
            is_first=_first(t + 1),
            is_last=_last(t + 1),
            is_terminal=_last(t + 1) & bool(success),
            episode_id=int(episode_id),
            success=bool(success),
            seed=int(seed),
            images=images or None,
        )

    def validate(self) -> None:
        n = self.observation.shape[0]
        for k in STEP_KEYS:
            if getattr(self, k).shape[0] != n:
                raise ValueError(
                    f"Episode {self.episode_id}: field {k!r} has "
                    f"{getattr(self, k).shape[0]} steps, observation has {n}."
                )
        if n < 2 or not self.is_first[0] or not self.is_last[-1] or self.is_last[:-1].any():
            raise ValueError(
                f"Episode {self.episode_id}: is_first/is_last flags are not a "
                "single well-formed episode."
            )
        if not np.all(np.isfinite(self.observation)) or not np.all(np.isfinite(self.action)):
            raise ValueError(f"Episode {self.episode_id}: non-finite observation or action.")
        for c, x in (self.images or {}).items():
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[0] != n:
                raise ValueError(
                    f"Episode {self.episode_id}: camera {c!r} has shape {x.shape} "
                    f"dtype {x.dtype}; expected uint8 [{n}, H, W, C] (one image "
                    "per step)."
                )
