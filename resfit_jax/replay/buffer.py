"""The device ring buffer of ``Transition``s [capacity, ...] filled by masked scatters, and
the ``Mixer`` that draws a learner's online [UTD, B_on, ...] and offline [UTD, B_off, ...]
batches from it uniformly and independently (RLPD-style symmetric sampling). Storage dtypes
follow the example transition (uint8 image fields stay uint8).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from resfit_jax.replay.frames import FrameState, resolve
from resfit_jax.replay.nstep import Transition


# ----------------------------------------------------------------------------- ring buffer
@struct.dataclass
class ReplayState:
    """data: Transition with leaves [capacity, ...]; insert_index, size: int32 scalars;
    frames: the camera frames of frame-once storage (``frames.FrameState``; then data's
    camera fields hold int32 frame ids), or None."""

    data: Transition
    insert_index: jax.Array
    size: jax.Array
    frames: FrameState | None = None


@dataclasses.dataclass(frozen=True)
class ReplayBuffer:
    """Uniform ring buffer of Transitions on device."""

    capacity: int

    def __post_init__(self):
        if self.capacity < 1:
            raise ValueError(f"ReplayBuffer.capacity must be >= 1, got {self.capacity}.")

    def init(self, spec: Transition, frames: FrameState | None = None) -> ReplayState:
        """Empty buffer for a per-sample Transition spec (see ``transition_spec``). With
        ``frames`` (frame-once storage) the spec's camera fields are frame ids
        (``frames.id_spec``) and ``sample`` reads the frames back."""
        data = jax.tree.map(lambda s: jnp.zeros((self.capacity,) + tuple(s.shape), s.dtype), spec)
        return ReplayState(
            data=data,
            insert_index=jnp.zeros((), jnp.int32),
            size=jnp.zeros((), jnp.int32),
            frames=frames,
        )

    def add(
        self, state: ReplayState, items: Transition, valid: jax.Array | None = None
    ) -> ReplayState:
        """Insert items with leaves [*M, ...] where ``valid`` [*M] is True (all if None)."""
        lead = valid.shape if valid is not None else items.reward.shape
        m = 1
        for d in lead:
            m *= d
        if m > self.capacity:
            raise ValueError(
                f"ReplayBuffer.add: {m} candidates per call exceed capacity "
                f"{self.capacity}; raise the capacity."
            )
        flat = jax.tree.map(lambda x: x.reshape((m,) + x.shape[len(lead) :]), items)
        mask = jnp.ones((m,), bool) if valid is None else valid.reshape(m)
        offset = jnp.cumsum(mask.astype(jnp.int32)) - 1
        idx = jnp.where(mask, (state.insert_index + offset) % self.capacity, self.capacity)

        def write(store, x):
            if store.shape[1:] != x.shape[1:]:
                raise ValueError(
                    f"ReplayBuffer.add: item shape {x.shape[1:]} does not match "
                    f"stored shape {store.shape[1:]}."
                )
            if jnp.issubdtype(store.dtype, jnp.integer) and jnp.issubdtype(x.dtype, jnp.floating):
                raise ValueError(
                    f"ReplayBuffer.add: a {x.dtype} field into {store.dtype} "
                    "storage would be truncated; pass camera images as uint8 "
                    "(0-255), as the spec says."
                )
            return store.at[idx].set(x.astype(store.dtype), mode="drop")

        data = jax.tree.map(write, state.data, flat)
        count = mask.sum().astype(jnp.int32)
        return state.replace(
            data=data,
            insert_index=(state.insert_index + count) % self.capacity,
            size=jnp.minimum(state.size + count, self.capacity),
        )

    def sample(self, state: ReplayState, key: jax.Array, shape: tuple[int, ...]) -> Transition:
        """Uniform sample with replacement; leaves [*shape, ...]. Needs state.size > 0.
        Frame-once storage: the sampled frame ids are replaced by their frames."""
        idx = jax.random.randint(key, shape, 0, jnp.maximum(state.size, 1))
        out = jax.tree.map(lambda x: x[idx], state.data)
        if state.frames is None:
            return out
        return out.replace(
            obs=resolve(out.obs, state.frames), next_obs=resolve(out.next_obs, state.frames)
        )


@dataclasses.dataclass(frozen=True)
class Mixer:
    """Symmetric (RLPD-style) sampling from an online and an optional offline buffer, built
    once by ``make_mixer`` (flashbax's mixer shape): callers pass only states and a key."""

    online: ReplayBuffer
    offline: ReplayBuffer | None
    online_batch: int
    offline_batch: int
    steps: int

    def sample(
        self, key: jax.Array, online_state: ReplayState, offline_state: ReplayState | None
    ) -> tuple[Transition, Transition | None]:
        """([steps, B_on, ...], [steps, B_off, ...] or None); uniform, with replacement."""
        k_on, k_off = jax.random.split(key)
        on = self.online.sample(online_state, k_on, (self.steps, self.online_batch))
        if self.offline_batch == 0:
            return on, None
        if offline_state is None:
            raise ValueError(
                "Mixer.sample: this mixer draws demo samples; pass the offline (demo) buffer state."
            )
        return on, self.offline.sample(offline_state, k_off, (self.steps, self.offline_batch))

    def can_sample(self, online_state: ReplayState, offline_state: ReplayState | None) -> jax.Array:
        ok = online_state.size > 0
        if self.offline_batch > 0 and offline_state is not None:
            ok = ok & (offline_state.size > 0)
        return ok


def make_mixer(
    online: ReplayBuffer,
    offline: ReplayBuffer | None,
    batch_size: int,
    offline_fraction: float = 0.5,
    steps: int = 1,
) -> Mixer:
    """B_off = round(batch_size * offline_fraction) (0 without an offline buffer),
    B_on = batch_size - B_off, each sample [steps, B, ...]."""
    if steps < 1 or batch_size < 1:
        raise ValueError(
            f"make_mixer: steps and batch_size must be >= 1, got {steps}, {batch_size}."
        )
    n_off = int(round(batch_size * offline_fraction)) if offline is not None else 0
    return Mixer(online, offline, batch_size - n_off, n_off, int(steps))
