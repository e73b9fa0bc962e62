"""BasePolicy protocol: the frozen BC policy as a black box with explicit, jittable state.

    bstate      = base.init_state(num_envs)
    bstate      = base.reset(bstate, done_mask)   # done_mask [E] bool: clear ended episodes
    a_b, bstate = base.step(bstate, obs)          # obs [E, ...] -> raw action [E, A]

Actions are in RAW env units; the training loop normalizes them with the task's
``ActionScaler``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import struct

PyTree = Any


class BasePolicy(Protocol):
    action_dim: int

    def init_state(self, num_envs: int) -> PyTree: ...

    def reset(self, state: PyTree, done: jax.Array) -> PyTree: ...

    def step(self, state: PyTree, obs: PyTree) -> tuple[jax.Array, PyTree]: ...


@dataclasses.dataclass(frozen=True)
class FunctionBase:
    """A stateless, jittable policy ``fn(obs [E, ...]) -> raw action [E, A]`` as a BasePolicy."""

    fn: Callable[[PyTree], jax.Array]
    action_dim: int

    def init_state(self, num_envs: int) -> PyTree:
        return jnp.zeros((num_envs,), jnp.int32)  # step counter per env (for inspection)

    def reset(self, state, done):
        return jnp.where(done, 0, state)

    def step(self, state, obs):
        a = self.fn(obs)
        if a.shape[-1] != self.action_dim:
            raise ValueError(
                f"FunctionBase: the policy returned actions of size {a.shape[-1]}, "
                f"but action_dim is {self.action_dim}."
            )
        return a, state + 1


@dataclasses.dataclass(frozen=True)
class ObservationPrefix:
    """A base that sees only the first ``size`` entries of a flat observation [E, D], e.g.
    when the learner's observation carries extra features (``envs.core.TimeFeature``)."""

    base: Any
    size: int

    @property
    def action_dim(self) -> int:
        return self.base.action_dim

    def init_state(self, num_envs: int) -> PyTree:
        return self.base.init_state(num_envs)

    def reset(self, state, done):
        return self.base.reset(state, done)

    def step(self, state, obs):
        return self.base.step(state, obs[..., : self.size])


@struct.dataclass
class ChunkQueue:
    """Per-env action-chunk queue (a pytree; every field has a leading [E] axis).

    chunk [E, K, A]   the chunk being executed (raw action units)
    index [E] int32   next action to pop; >= horizon means "query a new chunk"
    steps [E] int32   steps since the episode started (for inspection)
    Temporal ensembling keeps the last K chunks instead:
    history [E, K, K, A] chunk predicted i steps ago at row i; age_valid [E, K] bool.
    """

    chunk: jax.Array
    index: jax.Array
    steps: jax.Array
    history: jax.Array | None = None
    age_valid: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class ChunkedBase:
    """A chunk predictor ``predict(obs [E, ...]) -> raw chunk [E, K, A]`` run as a BasePolicy.

    Without ensembling: a new chunk is predicted when the queue is empty (every
    ``execution_horizon`` steps, <= K), and one action is popped per step, open loop. With
    ``temporal_ensemble`` m: a chunk is predicted every step and the action for now is the
    average of the predictions made for this step by the last K chunks, weighted
    exp(m * age) (older predictions weigh more, as in ACT; m = 0 is a plain mean).
    ``reset(state, done)`` clears the queues of ended episodes (success or timeout), so the
    next episode's first step queries its own first observation.

    Without ensembling only the envs whose queue is empty are queried: their observations
    are gathered into blocks of ``query_block`` rows (default: twice the envs expected to
    refill per step, E / horizon) and predicted block by block in a ``while_loop`` that runs
    as many blocks as there are such envs (none on most steps; E / block when all refill
    together). Row i of a chunk depends only on observation i, so the result is that of one
    pass over all envs up to float32 rounding (a matmul's rounding can depend on its batch
    size: at most 5e-7 on PickPlace's ACT base). With one env (a robot) the base runs only
    on the steps that start a chunk. ``query_block >= E`` predicts all envs every step and
    selects.
    """

    predict: Callable[[PyTree], jax.Array]
    action_dim: int
    chunk_size: int
    execution_horizon: int | None = None
    temporal_ensemble: float | None = None
    query_block: int | None = None

    def __post_init__(self):
        h = self.horizon
        if not 1 <= h <= self.chunk_size:
            raise ValueError(
                f"ChunkedBase: execution_horizon {h} must be in [1, chunk_size={self.chunk_size}]."
            )
        if self.query_block is not None and self.query_block < 1:
            raise ValueError(f"ChunkedBase: query_block must be >= 1 (got {self.query_block}).")

    @property
    def horizon(self) -> int:
        return self.chunk_size if self.execution_horizon is None else int(self.execution_horizon)

    def init_state(self, num_envs: int) -> ChunkQueue:
        k, a = self.chunk_size, self.action_dim
        q = ChunkQueue(
            chunk=jnp.zeros((num_envs, k, a), jnp.float32),
            index=jnp.full((num_envs,), self.horizon, jnp.int32),
            steps=jnp.zeros((num_envs,), jnp.int32),
        )
        if self.temporal_ensemble is not None:
            q = q.replace(
                history=jnp.zeros((num_envs, k, k, a), jnp.float32),
                age_valid=jnp.zeros((num_envs, k), bool),
            )
        return q

    def reset(self, state: ChunkQueue, done: jax.Array) -> ChunkQueue:
        done = jnp.asarray(done, bool)
        state = state.replace(
            index=jnp.where(done, self.horizon, state.index), steps=jnp.where(done, 0, state.steps)
        )
        if state.age_valid is not None:
            state = state.replace(age_valid=state.age_valid & ~done[:, None])
        return state

    def _predict(self, obs: PyTree, num_envs: int) -> jax.Array:
        chunk = self.predict(obs)
        expected = (num_envs, self.chunk_size, self.action_dim)
        if chunk.shape != expected:
            raise ValueError(
                f"ChunkedBase: the predictor returned a chunk of shape "
                f"{chunk.shape}, expected {expected} [E, K, A]."
            )
        return chunk.astype(jnp.float32)

    def block_size(self, num_envs: int) -> int:
        """Rows per query block for E envs."""
        auto = 2 * -(-num_envs // self.horizon)
        return max(1, min(num_envs, self.query_block or auto))

    def _refill(self, chunk: jax.Array, obs: PyTree, refill: jax.Array) -> jax.Array:
        """chunk [E, K, A] with the rows where ``refill`` [E] replaced by new predictions."""
        e = refill.shape[0]
        c = self.block_size(e)
        if self.query_block is not None and self.query_block >= e:
            return jnp.where(refill[:, None, None], self._predict(obs, e), chunk)
        if c >= e:  # one block holds every env: skip the predictor when none refills
            return jax.lax.cond(
                refill.any(),
                lambda: jnp.where(refill[:, None, None], self._predict(obs, e), chunk),
                lambda: chunk,
            )
        blocks = -(-e // c)
        # the rows to query first, then e (out of range: gathered as row e - 1, not written)
        order = jnp.nonzero(refill, size=blocks * c, fill_value=e)[0]
        count = refill.sum()

        def body(carry):
            i, chunk = carry
            rows = jax.lax.dynamic_slice(order, (i * c,), (c,))
            block = jax.tree.map(lambda x: x[jnp.minimum(rows, e - 1)], obs)
            return i + 1, chunk.at[rows].set(self._predict(block, c), mode="drop")

        return jax.lax.while_loop(lambda carry: carry[0] * c < count, body, (0, chunk))[1]

    def step(self, state: ChunkQueue, obs: PyTree) -> tuple[jax.Array, ChunkQueue]:
        e = state.index.shape[0]
        if self.temporal_ensemble is not None:
            return self._step_ensemble(state, self._predict(obs, e))
        refill = state.index >= self.horizon
        chunk = self._refill(state.chunk, obs, refill)
        index = jnp.where(refill, 0, state.index)
        action = jnp.take_along_axis(chunk, index[:, None, None], axis=1)[:, 0]
        return action, state.replace(chunk=chunk, index=index + 1, steps=state.steps + 1)

    def _step_ensemble(self, state: ChunkQueue, new: jax.Array):
        k = self.chunk_size
        # Shift: row i = chunk predicted i steps ago; the new chunk enters at row 0.
        history = jnp.concatenate([new[:, None], state.history[:, :-1]], axis=1)
        valid = jnp.concatenate(
            [jnp.ones_like(state.age_valid[:, :1]), state.age_valid[:, :-1]], axis=1
        )
        ages = jnp.arange(k)
        preds = history[:, ages, ages]  # [E, K, A]: row i's action for now
        w = jnp.exp(self.temporal_ensemble * ages.astype(jnp.float32)) * valid
        action = (w[..., None] * preds).sum(1) / w.sum(1, keepdims=True)
        return action, state.replace(
            history=history,
            age_valid=valid,
            chunk=new,
            index=jnp.ones_like(state.index),
            steps=state.steps + 1,
        )


# ---------------------------------------------------------------------------------------------
# Exported bases: a jax.export artifact + JSON metadata, loadable without the model code.

EXPORT_FORMAT_VERSION = 1
ARTIFACT_FILE = "base.jaxexport"
METADATA_FILE = "base.json"


def load_exported_base(
    directory: str,
    obs_dim: int | None = None,
    action_dim: int | None = None,
    execution_horizon: int | None = None,
    temporal_ensemble: float | None = None,
) -> ChunkedBase:
    """Load a base written by ``resfit_jax.bc.export.export_base`` as a ChunkedBase.

    The artifact maps raw observations [b, O] (a pixel base: {"state", camera, ...}, as the
    metadata's ``cameras`` lists) (symbolic b) to raw chunks [b, K, A] with the
    normalisation baked in, so no model code is needed. ``obs_dim`` / ``action_dim`` (the
    task's) are checked against the metadata. Artifacts are tied to JAX's serialization
    compatibility window; keep params + architecture config as the archival format.
    """
    import json
    import os

    from jax import export

    meta_path = os.path.join(directory, METADATA_FILE)
    art_path = os.path.join(directory, ARTIFACT_FILE)
    for p in (meta_path, art_path):
        if not os.path.isfile(p):
            what = "a directory, not a file" if os.path.isdir(p) else "missing"
            raise FileNotFoundError(
                f"load_exported_base: {p} is {what}; export the base with "
                "resfit_jax.bc.export.export_base (or experiments/train_bc.py --export)."
            )
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        if not isinstance(meta, dict) or not {"obs_dim", "action_dim", "chunk_size"} <= set(meta):
            raise ValueError("missing obs_dim / action_dim / chunk_size")
        sizes = {k: meta[k] for k in ("obs_dim", "action_dim", "chunk_size")}
        bad = {k: v for k, v in sizes.items() if not (type(v) is int and v >= 1)}
        if meta.get("execution_horizon") is not None:
            h = meta["execution_horizon"]
            if not (type(h) is int and 1 <= h <= meta["chunk_size"]):
                bad["execution_horizon"] = h
        if bad:
            raise ValueError(f"sizes must be positive integers, got {bad}")
    except ValueError as e:
        raise ValueError(
            f"load_exported_base: {meta_path} is damaged ({e}); export the base "
            "again from its checkpoint (resfit_jax.bc.export.export_base)."
        ) from None
    if meta.get("format_version") != EXPORT_FORMAT_VERSION:
        raise ValueError(
            f"load_exported_base: format_version {meta.get('format_version')} in "
            f"{meta_path}; this library reads version {EXPORT_FORMAT_VERSION}."
        )
    if obs_dim is not None and meta["obs_dim"] != obs_dim:
        raise ValueError(
            f"Exported base in {directory} expects observations of size "
            f"{meta['obs_dim']}, but the task's observation size is {obs_dim}. "
            f"It was trained for task {meta.get('task')!r}."
        )
    if action_dim is not None and meta["action_dim"] != action_dim:
        raise ValueError(
            f"Exported base in {directory} outputs actions of size "
            f"{meta['action_dim']}, but the task's action size is {action_dim}. "
            f"It was trained for task {meta.get('task')!r}."
        )
    with open(art_path, "rb") as f:
        try:
            exported = export.deserialize(bytearray(f.read()))
        except Exception as e:
            raise ValueError(
                f"load_exported_base: cannot deserialize {art_path} (corrupted, "
                f"or outside this JAX's compatibility window): {e}"
            ) from e

    cameras = meta.get("cameras") or {}

    def predict(obs):
        if cameras:  # a pixel base: {"state": [..., O], camera: ...}
            if not isinstance(obs, dict) or set(obs) != {"state", *cameras}:
                raise ValueError(
                    f"Exported base in {directory} takes observations "
                    f"{{'state', {', '.join(map(repr, cameras))}}}; got "
                    f"{sorted(obs) if isinstance(obs, dict) else 'an array'}."
                )
            lead = obs["state"].shape[:-1]
            flat = {
                "state": obs["state"].reshape(-1, obs["state"].shape[-1]).astype(jnp.float32),
                **{c: obs[c].reshape((-1,) + tuple(v)) for c, v in cameras.items()},
            }
            out = exported.call(flat)
        else:
            lead = obs.shape[:-1]
            out = exported.call(obs.reshape(-1, obs.shape[-1]).astype(jnp.float32))
        return out.reshape(lead + out.shape[1:])

    return ChunkedBase(
        predict,
        int(meta["action_dim"]),
        int(meta["chunk_size"]),
        execution_horizon if execution_horizon is not None else meta.get("execution_horizon"),
        temporal_ensemble,
    )
