"""BC training data from RLDS episodes: (observation, action chunk, padding mask) samples and
the normalisation statistics of the demos."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from resfit_jax.data.rlds import Episode
from resfit_jax.observations import map_state, state_of


def sample_obs(obs_dim: int, cameras: dict | None = None, batch: int = 1):
    """Zeros shaped like a batch of observations: [batch, O], or with ``cameras`` (name ->
    image shape) {"state": [batch, O], camera: uint8 [batch, H, W, C], ...}."""
    state = jnp.zeros((batch, obs_dim), jnp.float32)
    if not cameras:
        return state
    return {
        "state": state,
        **{c: jnp.zeros((batch,) + tuple(s), jnp.uint8) for c, s in cameras.items()},
    }


@struct.dataclass
class ChunkNormalizer:
    """Mean/std standardisation of observations [O] and actions [A] from the demos."""

    obs_mean: jax.Array
    obs_std: jax.Array
    action_mean: jax.Array
    action_std: jax.Array

    @classmethod
    def fit(
        cls,
        obs: np.ndarray,
        actions: np.ndarray,
        obs_floor: float = 1e-2,
        action_floor: float = 1e-2,
    ) -> ChunkNormalizer:
        obs, actions = np.asarray(obs, np.float64), np.asarray(actions, np.float64)
        if not (np.all(np.isfinite(obs)) and np.all(np.isfinite(actions))):
            raise ValueError("ChunkNormalizer.fit: demos contain NaN or inf.")
        return cls(
            obs_mean=jnp.asarray(obs.mean(0), jnp.float32),
            obs_std=jnp.asarray(np.maximum(obs.std(0), obs_floor), jnp.float32),
            action_mean=jnp.asarray(actions.mean(0), jnp.float32),
            action_std=jnp.asarray(np.maximum(actions.std(0), action_floor), jnp.float32),
        )

    def norm_obs(self, obs):
        """Standardize the state vector [..., O] (camera images pass through)."""
        return map_state(obs, lambda x: (x - self.obs_mean) / self.obs_std)

    def norm_action(self, a):
        return (a - self.action_mean) / self.action_std

    def unnorm_action(self, a):
        return a * self.action_std + self.action_mean

    def to_dict(self) -> dict:
        return {
            k: np.asarray(getattr(self, k)).tolist()
            for k in ("obs_mean", "obs_std", "action_mean", "action_std")
        }

    @classmethod
    def from_dict(cls, d: dict) -> ChunkNormalizer:
        return cls(
            **{
                k: jnp.asarray(np.asarray(d[k], np.float32))
                for k in ("obs_mean", "obs_std", "action_mean", "action_std")
            }
        )


def chunk_dataset(episodes: Sequence[Episode], chunk_size: int) -> dict[str, np.ndarray]:
    """Samples for every action step t of every episode.

    Returns obs [N, O] (with cameras ``Episode.obs``'s dict, each field [N, ...]), chunk
    [N, K, A] (actions t..t+K-1, padded past the episode end with its last action) and mask
    [N, K] (False on padding, which the L1 loss ignores).
    """
    obs, chunks, masks = [], [], []
    for ep in episodes:
        t_len = ep.num_actions
        if t_len < 1:
            continue
        acts = ep.action[:t_len]
        idx = np.arange(t_len)[:, None] + np.arange(chunk_size)[None]
        masks.append(idx < t_len)
        chunks.append(acts[np.minimum(idx, t_len - 1)])
        obs.append(jax.tree.map(lambda x: x[:t_len], ep.obs))
    if not obs:
        raise ValueError("chunk_dataset: no episode has an action step.")
    return {
        "obs": jax.tree.map(lambda *xs: np.concatenate(xs), *obs),
        "chunk": np.concatenate(chunks).astype(np.float32),
        "mask": np.concatenate(masks),
    }


def action_reference(obs: jax.Array, index: tuple[int, ...] | None, action_dim: int) -> jax.Array:
    """Per-dim reference [B, A] that relative chunks are measured from: obs[:, index[i]]
    where index[i] >= 0, else 0 (absolute dim). ``index`` None: all zeros."""
    obs = state_of(obs)
    if index is None:
        return jnp.zeros(obs.shape[:-1] + (action_dim,), obs.dtype)
    if len(index) != action_dim:
        raise ValueError(f"action_obs_index has {len(index)} entries for {action_dim} actions.")
    idx = np.asarray(index)
    ref = obs[..., np.maximum(idx, 0)]
    return jnp.where(jnp.asarray(idx >= 0), ref, 0.0)


def fit_normalizer(
    data: dict,
    action_obs_index: tuple[int, ...] | None,
    obs_floor: float = 1e-2,
    action_floor: float = 1e-2,
) -> ChunkNormalizer:
    """Normalizer for the training targets: observation stats, and action stats over every
    valid chunk position of the (relative, if ``action_obs_index``) chunk."""
    a = data["chunk"].shape[-1]
    ref = np.asarray(action_reference(jnp.asarray(state_of(data["obs"])), action_obs_index, a))
    rel = data["chunk"] - ref[:, None]
    return ChunkNormalizer.fit(state_of(data["obs"]), rel[data["mask"]], obs_floor, action_floor)
