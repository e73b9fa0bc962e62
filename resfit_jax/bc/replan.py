"""Replanned chunk labels for distillation: at every training frame, the chunk the improved
policy (a chunked base + its residual) would execute had it decided there.

    chunks = jax.jit(lambda o: replanned_chunks(improved, o))(obs)  # [N, O] -> [N, K, A] raw
    data, shift = relabel_replanned(improved, data, extra_rows=n)  # a chunk_dataset, relabelled

The label is the base's own chunk at the frame plus the residual's correction over the
chunk's executed steps (its first H; later positions keep the base's prediction), so a
base fine-tuned on these labels starts exactly one correction away from them, where the
executed actions after a frame (``bc.data.chunk_dataset``) differ from the base's own chunk
there by its fit error and by the chunk boundaries it did not choose.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


def correction(improved, obs: jax.Array) -> jax.Array:
    """Jittable: [N, H, A] raw correction of ``improved`` (a ``base.residual.ResidualPolicy``
    over a ``ChunkedBase``) to the first H actions of the base's chunk, deciding at each of
    the N observations ``obs`` [N, O]. Exact for a residual that decides once per executed
    chunk (the semi-MDP residual with k = H); one that decides more often is asked at the
    frame's observation for every step."""
    base = improved.base
    if getattr(base, "temporal_ensemble", None) is not None or not hasattr(base, "horizon"):
        raise ValueError(
            "Replanned labels need a chunked base that executes its chunks open loop "
            "(no temporal ensembling); use labels='executed'."
        )
    plain = dataclasses.replace(improved, learner=None, learner_state=None)
    n, h = obs.shape[0], base.horizon

    def actions(policy):  # [H, N, A]: the first H actions from a fresh state at obs
        def step(state, _):
            a, state = policy.step(state, obs)
            return state, a

        return jax.lax.scan(step, policy.init_state(n), None, length=h)[1]

    return jnp.swapaxes(actions(improved) - actions(plain), 0, 1)


def replanned_chunks(improved, obs: jax.Array, own: jax.Array | None = None) -> jax.Array:
    """Jittable: [N, K, A] raw chunks of ``improved`` deciding at each of the N observations
    ``obs`` [N, O]: the base's own chunk there (``own`` [N, K, A] when already predicted)
    plus ``correction`` over its first H positions."""
    own = improved.base.predict(obs) if own is None else own
    return own.at[:, : improved.base.horizon].add(correction(improved, obs))


def relabel_replanned(
    improved, data: dict, extra_rows: int = 0, batch: int = 4096
) -> tuple[dict, dict]:
    """``data`` (a ``bc.data.chunk_dataset``, host arrays) with every frame's chunk replaced
    by ``replanned_chunks`` and every position valid, and how far each label set lies from
    the base's own chunk (mean L2 norm per valid position, raw units), on the last
    ``extra_rows`` frames (the improved policy's episodes) and on the others (the demos)."""
    if isinstance(data["obs"], dict):
        raise ValueError("Replanned labels support state observations only.")
    n = data["obs"].shape[0]
    size = min(batch, n)

    def plan(o):  # the replanned chunks and the base's own, one prediction
        own = improved.base.predict(o)
        return replanned_chunks(improved, o, own), own

    plan = jax.jit(plan)
    chunks, own = [], []
    for i in range(0, n, size):
        o = data["obs"][i : i + size]
        pad = size - o.shape[0]
        c, b = jax.device_get(plan(np.concatenate([o, np.repeat(o[-1:], pad, 0)])))
        chunks.append(c[: size - pad])
        own.append(b[: size - pad])
    chunks, own = np.concatenate(chunks), np.concatenate(own)
    mask = np.asarray(data["mask"], bool)
    every = np.ones_like(mask)

    def shift(labels, rows, valid):
        d = np.linalg.norm(labels[rows] - own[rows], axis=-1)[valid[rows]]
        return float(d.mean()) if d.size else None

    parts = {"demos": slice(0, n - extra_rows), "rollouts": slice(n - extra_rows, n)}
    stats = {}
    for part, rows in parts.items():
        stats[f"executed_{part}"] = shift(data["chunk"], rows, mask)
        stats[f"replanned_{part}"] = shift(chunks, rows, every)
    relabelled = {"obs": data["obs"], "chunk": chunks.astype(np.float32), "mask": every}
    return relabelled, stats
