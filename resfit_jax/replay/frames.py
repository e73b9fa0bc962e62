"""Frame-once storage of camera images for the online replay.

A pixel n-step transition refers to two frames: its observation's and the one k steps
later. Storing both inside every transition keeps each frame twice in the replay (and n
times in the n-step writer's window). In frame-once mode every camera frame is written once
into a ring of its own and transitions carry int32 frame ids in place of their camera
fields:

    store = FrameStore(capacity)                       # frames kept (a ring)
    fs = store.init(camera_spec)                       # {camera: ShapeDtypeStruct [H, W, C]}
    fs, ids = store.write(fs, images, mask)            # {camera: [M, H, W, C]} -> ids [M]
    images = read(fs, ids)                             # ids [...] -> {camera: [..., H, W, C]}

The sim loop writes each env's next frame at every step (the true last frame when an
episode ends) and the first frame of every new episode, so an env step writes
1 + (episode ended) frames, and one id serves every camera of a frame. A transition's
frames are alive while fewer than ``capacity`` frames have been written since its
observation's frame; ``stale_count`` counts the stored transitions whose frames are gone
(the trainer raises on it with the fix). ``frame_capacity`` sizes the ring so that this
never happens while episodes last at least 1 / margin steps on average.

Memory per online transition (2 cameras at 84 px: 42.3 kB a frame): 84.7 kB when each
transition holds its two frames, (1 + margin) x 42.3 kB = 52.9 kB here at the default
margin 0.25 (docs/vision.md).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from resfit_jax.observations import cameras_of, is_dict

PyTree = Any
FRAME_ID = jnp.int32


@struct.dataclass
class FrameState:
    """frames: {camera: uint8 [F, H, W, C]}; count: int32 [], frames written so far (the id
    of the next frame; frame id i lives in slot i % F)."""

    frames: dict
    count: jax.Array

    @property
    def capacity(self) -> int:
        return int(jax.tree.leaves(self.frames)[0].shape[0])


@dataclasses.dataclass(frozen=True)
class FrameStore:
    """A ring of camera frames, written in blocks with a mask (jittable, fixed shapes)."""

    capacity: int

    def __post_init__(self):
        if self.capacity < 1:
            raise ValueError(f"FrameStore.capacity must be >= 1, got {self.capacity}.")

    def init(self, camera_spec: dict) -> FrameState:
        """An empty ring for ``{camera: spec [H, W, C]}`` (uint8 frames)."""
        if not camera_spec:
            raise ValueError(
                "FrameStore.init: no camera fields; frame-once storage is for "
                "observations with camera images."
            )
        frames = {
            k: jnp.zeros((self.capacity,) + tuple(s.shape), s.dtype) for k, s in camera_spec.items()
        }
        return FrameState(frames=frames, count=jnp.zeros((), FRAME_ID))

    def write(
        self, state: FrameState, images: dict, mask: jax.Array | None = None
    ) -> tuple[FrameState, jax.Array]:
        """Write the frames ``images[camera][m]`` where ``mask[m]`` (all if None); returns the
        new state and ids [M] (the id each frame got; -1 where masked out)."""
        m = jax.tree.leaves(images)[0].shape[0]
        mask = jnp.ones((m,), bool) if mask is None else mask.reshape(m)
        ids = state.count + jnp.cumsum(mask.astype(FRAME_ID)) - 1
        slot = jnp.where(mask, ids % self.capacity, self.capacity)  # out of range: dropped

        def put(store, x):
            if store.shape[1:] != x.shape[1:] or store.dtype != x.dtype:
                raise ValueError(
                    f"FrameStore.write: frames {x.dtype}{list(x.shape[1:])} do not "
                    f"match the store's {store.dtype}{list(store.shape[1:])}."
                )
            return store.at[slot].set(x, mode="drop")

        if set(images) != set(state.frames):
            raise ValueError(
                f"FrameStore.write: cameras {sorted(images)} are not the store's "
                f"{sorted(state.frames)}."
            )
        frames = {k: put(state.frames[k], images[k]) for k in state.frames}
        count = state.count + mask.sum().astype(FRAME_ID)
        return FrameState(frames=frames, count=count), jnp.where(mask, ids, -1)


def read(state: FrameState, ids: jax.Array) -> dict:
    """ids [...] -> {camera: [..., H, W, C]} (the frames last written under those ids)."""
    slot = ids % state.capacity
    return {k: v[slot] for k, v in state.frames.items()}


def alive(state: FrameState, ids: jax.Array) -> jax.Array:
    """[...] bool: the frames of ``ids`` are still in the ring (not yet overwritten)."""
    return (ids >= 0) & (ids >= state.count - state.capacity) & (ids < state.count)


def frame_capacity(capacity: int, n_step: int, num_envs: int, margin: float = 0.25) -> int:
    """Frames to keep for ``capacity`` transitions of E = ``num_envs`` streams with n-step
    windows: a transition's frame was written at most n steps before the transition, and an
    env step writes 1 + (episode ended) frames, so ceil(capacity * (1 + margin)) +
    2 (n + 1) E frames cover every stored transition while the mean episode lasts at least
    1 / margin steps."""
    return int(math.ceil(capacity * (1.0 + margin))) + 2 * (n_step + 1) * num_envs


# ---------------------------------------------------------------- observations with frame ids
def id_spec(obs_spec: PyTree) -> PyTree:
    """The observation spec with each camera field replaced by an int32 frame id []."""
    if not cameras_of(obs_spec):
        return obs_spec
    return {
        k: (jax.ShapeDtypeStruct((), FRAME_ID) if k in cameras_of(obs_spec) else v)
        for k, v in obs_spec.items()
    }


def camera_spec(obs_spec: PyTree) -> dict:
    """{camera: spec [H, W, C]} of an observation spec ({} for a state observation)."""
    return {
        k: jax.ShapeDtypeStruct(tuple(v.shape), v.dtype) for k, v in cameras_of(obs_spec).items()
    }


def with_ids(obs: PyTree, ids: jax.Array) -> PyTree:
    """obs [E, ...] with each camera field replaced by the frame ids [E] (one id per frame
    serves every camera)."""
    if not is_dict(obs):
        return obs
    cams = cameras_of(obs)
    return {k: (ids.astype(FRAME_ID) if k in cams else v) for k, v in obs.items()}


def resolve(obs: PyTree, state: FrameState | None) -> PyTree:
    """obs with frame ids [...] in its camera fields -> obs with the frames [..., H, W, C]."""
    if state is None or not is_dict(obs):
        return obs
    out = dict(obs)
    for k, v in read(state, obs[next(iter(state.frames))]).items():
        out[k] = v
    return out


def stale_count(state: FrameState, obs_ids: jax.Array, size: jax.Array) -> jax.Array:
    """int32 []: stored transitions (the first ``size`` of ``obs_ids`` [C]) whose observation
    frame has been overwritten (their next frame is newer, so it is alive if theirs is)."""
    stored = jnp.arange(obs_ids.shape[0]) < size
    return (stored & ~alive(state, obs_ids)).sum().astype(jnp.int32)
