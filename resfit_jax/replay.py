"""Device-resident replay for E parallel env streams, with n-step aggregation at insert time.

Pure pieces, each a frozen dataclass of functions over explicit state (optax style):

- ``NStepWriter``: keeps the last n steps of every env stream and emits finished n-step
  ``Transition``s as a fixed-shape block [E, n] with a validity mask (jittable, no dynamic
  shapes). A window that an episode end cuts short shrinks k; terminated episodes get
  ``nonterminal = 0``; truncated (time-limit) episodes bootstrap from the true last
  observation unless ``bootstrap_truncation=False`` (the reference release's behaviour).
- ``ReplayBuffer``: a ring buffer of ``Transition``s [capacity, ...] filled by masked
  scatters. Storage dtypes follow the example transition (e.g. uint8 image fields stay uint8).
- ``Mixer`` (``make_mixer``, ``ReplayConfig.mixer``): online [UTD, B_on, ...] and offline
  [UTD, B_off, ...] batches drawn uniformly and independently, for a learner's ``update``.
- ``ReplayConfig``: n-step, gamma, truncation handling, UTD, batch and demo fraction, capacity,
  frame-once storage of camera frames (``frames``: transitions hold frame ids, the frames
  live once in a ring next to them and ``sample`` puts them back).

Transition fields (per sample): obs (pytree), base_action [A] (normalized base action at
obs), action [A] (executed normalized action), reward [] (n-step return
sum_i gamma^i r_{t+i}), discount [] (gamma^k), nonterminal [] (1.0 = bootstrap from next_obs),
next_obs (pytree, the observation k steps later), next_base_action [A].
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from resfit_jax.frames import FrameState, FrameStore, frame_capacity, resolve

PyTree = Any


@struct.dataclass
class Transition:
    obs: PyTree
    base_action: jax.Array
    action: jax.Array
    reward: jax.Array
    discount: jax.Array
    nonterminal: jax.Array
    next_obs: PyTree
    next_base_action: jax.Array


def transition_spec(obs_spec: PyTree, action_dim: int) -> Transition:
    """A Transition of ShapeDtypeStructs for one sample (no batch axis)."""
    obs_spec = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), obs_spec)
    act = jax.ShapeDtypeStruct((action_dim,), jnp.float32)
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    return Transition(obs=obs_spec, base_action=act, action=act, reward=scalar,
                      discount=scalar, nonterminal=scalar, next_obs=obs_spec,
                      next_base_action=act)


# ----------------------------------------------------------------------------- n-step writer
@struct.dataclass
class NStepState:
    """Per-stream window of the last n steps, oldest first, right-aligned.

    obs: pytree [E, n, ...]; base_action, action: [E, n, A]; reward: [E, n];
    count: [E] int32, how many of the window's slots belong to the current episode.
    """

    obs: PyTree
    base_action: jax.Array
    action: jax.Array
    reward: jax.Array
    count: jax.Array


@dataclasses.dataclass(frozen=True)
class NStepWriter:
    """n-step return writer for E parallel streams (each stream has its own window)."""

    n: int = 3
    gamma: float = 0.99
    bootstrap_truncation: bool = True

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"NStepWriter.n must be >= 1, got {self.n}.")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"NStepWriter.gamma must be in (0, 1], got {self.gamma}.")

    def init(self, num_envs: int, obs_spec: PyTree, action_dim: int) -> NStepState:
        n = self.n
        obs = jax.tree.map(lambda s: jnp.zeros((num_envs, n) + tuple(s.shape), s.dtype), obs_spec)
        return NStepState(
            obs=obs,
            base_action=jnp.zeros((num_envs, n, action_dim), jnp.float32),
            action=jnp.zeros((num_envs, n, action_dim), jnp.float32),
            reward=jnp.zeros((num_envs, n), jnp.float32),
            count=jnp.zeros((num_envs,), jnp.int32),
        )

    def step(self, state: NStepState, obs: PyTree, base_action: jax.Array, action: jax.Array,
             reward: jax.Array, next_obs: PyTree, next_base_action: jax.Array,
             terminated: jax.Array, truncated: jax.Array) -> tuple[NStepState, Transition, jax.Array]:
        """Push one env step for every stream; return (state, candidates [E, n], valid [E, n]).

        obs/next_obs: pytrees [E, ...] (next_obs must be the TRUE next observation, i.e. the
        pre-reset final observation when the episode ended); base_action, action,
        next_base_action: [E, A]; reward, terminated, truncated: [E].
        Slot j of the window, once emitted, covers k = n - j steps.
        """
        n = self.n
        num_envs = state.count.shape[0]
        if reward.shape != (num_envs,):
            raise ValueError(f"NStepWriter.step: reward must be [E={num_envs}], got {reward.shape}.")
        push = lambda win, x: jnp.concatenate([win[:, 1:], x[:, None].astype(win.dtype)], axis=1)
        new = NStepState(
            obs=jax.tree.map(push, state.obs, obs),
            base_action=push(state.base_action, base_action),
            action=push(state.action, action),
            reward=push(state.reward, reward),
            count=jnp.minimum(state.count + 1, n),
        )
        terminated = terminated.astype(bool)
        done = terminated | truncated.astype(bool)
        slot = jnp.arange(n)
        in_episode = slot[None, :] >= (n - new.count)[:, None]                        # [E, n]
        k = n - slot                                                                   # [n]
        # returns[e, j] = sum_{i >= j} gamma^(i-j) r_i over the window (reverse discounted cumsum)
        def backward(carry, r):
            g = r + self.gamma * carry
            return g, g
        _, ret = jax.lax.scan(backward, jnp.zeros((num_envs,), jnp.float32),
                              jnp.where(in_episode, new.reward, 0.0).T, reverse=True)
        ret = ret.T                                                                    # [E, n]
        full = new.count == n
        valid = jnp.where(done[:, None], in_episode, (slot[None, :] == 0) & full[:, None])
        if self.bootstrap_truncation:
            nonterminal = jnp.where(done, ~terminated, True)
        else:
            nonterminal = ~done
        bcast = lambda x: jnp.broadcast_to(x[:, None], (num_envs, n) + x.shape[1:])
        cands = Transition(
            obs=new.obs,
            base_action=new.base_action,
            action=new.action,
            reward=ret,
            discount=jnp.broadcast_to(self.gamma ** k.astype(jnp.float32), (num_envs, n)),
            nonterminal=bcast(nonterminal.astype(jnp.float32)),
            next_obs=jax.tree.map(bcast, next_obs),
            next_base_action=bcast(next_base_action),
        )
        new = new.replace(count=jnp.where(done, 0, new.count))
        return new, cands, valid


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
        return ReplayState(data=data, insert_index=jnp.zeros((), jnp.int32),
                           size=jnp.zeros((), jnp.int32), frames=frames)

    def add(self, state: ReplayState, items: Transition, valid: jax.Array | None = None) -> ReplayState:
        """Insert items with leaves [*M, ...] where ``valid`` [*M] is True (all if None)."""
        lead = valid.shape if valid is not None else items.reward.shape
        m = 1
        for d in lead:
            m *= d
        if m > self.capacity:
            raise ValueError(f"ReplayBuffer.add: {m} candidates per call exceed capacity "
                             f"{self.capacity}; raise the capacity.")
        flat = jax.tree.map(lambda x: x.reshape((m,) + x.shape[len(lead):]), items)
        mask = jnp.ones((m,), bool) if valid is None else valid.reshape(m)
        offset = jnp.cumsum(mask.astype(jnp.int32)) - 1
        idx = jnp.where(mask, (state.insert_index + offset) % self.capacity, self.capacity)

        def write(store, x):
            if store.shape[1:] != x.shape[1:]:
                raise ValueError(f"ReplayBuffer.add: item shape {x.shape[1:]} does not match "
                                 f"stored shape {store.shape[1:]}.")
            if jnp.issubdtype(store.dtype, jnp.integer) and jnp.issubdtype(x.dtype, jnp.floating):
                raise ValueError(f"ReplayBuffer.add: a {x.dtype} field into {store.dtype} "
                                 "storage would be truncated; pass camera images as uint8 "
                                 "(0-255), as the spec says.")
            return store.at[idx].set(x.astype(store.dtype), mode="drop")

        data = jax.tree.map(write, state.data, flat)
        count = mask.sum().astype(jnp.int32)
        return state.replace(data=data,
                             insert_index=(state.insert_index + count) % self.capacity,
                             size=jnp.minimum(state.size + count, self.capacity))

    def sample(self, state: ReplayState, key: jax.Array, shape: tuple[int, ...]) -> Transition:
        """Uniform sample with replacement; leaves [*shape, ...]. Needs state.size > 0.
        Frame-once storage: the sampled frame ids are replaced by their frames."""
        idx = jax.random.randint(key, shape, 0, jnp.maximum(state.size, 1))
        out = jax.tree.map(lambda x: x[idx], state.data)
        if state.frames is None:
            return out
        return out.replace(obs=resolve(out.obs, state.frames),
                           next_obs=resolve(out.next_obs, state.frames))


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
    demo_n_step: int | None = None     # n of the demo buffer's returns (None: n_step)
    frame_once: bool = False           # camera observations: store each frame once (``frames``)
                                       # instead of twice per transition (the pixel presets)
    frame_margin: float = 0.25         # frame-once ring: capacity * (1 + margin) frames plus
                                       # the n-step windows (``frames.frame_capacity``); enough
                                       # while episodes last >= 1 / margin steps on average

    def __post_init__(self):
        from resfit_jax.validation import number_errors

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

    def demo_writer(self) -> NStepWriter:
        """The n-step writer of the demo buffer (``demo_n_step``, default ``n_step``)."""
        n = self.n_step if self.demo_n_step is None else self.demo_n_step
        return NStepWriter(n, self.gamma, self.bootstrap_truncation)

    def buffer(self) -> ReplayBuffer:
        """The online ring buffer of this config."""
        return ReplayBuffer(self.capacity)

    def frame_store(self, num_envs: int) -> FrameStore:
        """The frame-once ring for ``num_envs`` streams (``frames.frame_capacity``)."""
        return FrameStore(frame_capacity(self.capacity, self.n_step, num_envs,
                                         self.frame_margin))

    def mixer(self, offline: ReplayBuffer | None, steps: int | None = None) -> "Mixer":
        """Online + demo mixer with ``steps`` batch rows per sample (default ``utd``)."""
        return make_mixer(self.buffer(), offline, self.batch_size,
                          self.offline_fraction if offline is not None else 0.0,
                          self.utd if steps is None else steps)


@dataclasses.dataclass(frozen=True)
class Mixer:
    """Symmetric (RLPD-style) sampling from an online and an optional offline buffer, built
    once by ``make_mixer`` (flashbax's mixer shape): callers pass only states and a key."""

    online: ReplayBuffer
    offline: ReplayBuffer | None
    online_batch: int
    offline_batch: int
    steps: int

    def sample(self, key: jax.Array, online_state: ReplayState,
               offline_state: ReplayState | None) -> tuple[Transition, Transition | None]:
        """([steps, B_on, ...], [steps, B_off, ...] or None); uniform, with replacement."""
        k_on, k_off = jax.random.split(key)
        on = self.online.sample(online_state, k_on, (self.steps, self.online_batch))
        if self.offline_batch == 0:
            return on, None
        if offline_state is None:
            raise ValueError("Mixer.sample: this mixer draws demo samples; pass the offline "
                             "(demo) buffer state.")
        return on, self.offline.sample(offline_state, k_off, (self.steps, self.offline_batch))

    def can_sample(self, online_state: ReplayState, offline_state: ReplayState | None
                   ) -> jax.Array:
        ok = online_state.size > 0
        if self.offline_batch > 0 and offline_state is not None:
            ok = ok & (offline_state.size > 0)
        return ok


def make_mixer(online: ReplayBuffer, offline: ReplayBuffer | None, batch_size: int,
               offline_fraction: float = 0.5, steps: int = 1) -> Mixer:
    """B_off = round(batch_size * offline_fraction) (0 without an offline buffer),
    B_on = batch_size - B_off, each sample [steps, B, ...]."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"make_mixer: steps and batch_size must be >= 1, got {steps}, "
                         f"{batch_size}.")
    n_off = int(round(batch_size * offline_fraction)) if offline is not None else 0
    return Mixer(online, offline, batch_size - n_off, n_off, int(steps))
