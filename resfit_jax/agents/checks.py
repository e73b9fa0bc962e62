"""Input checks shared by the agents: observation specs, batch shapes and finiteness.

Shape checks run at trace time (plain Python on static shapes) and raise ``ValueError``
naming the field and the expected shape.

Finiteness: every update reports ``nonfinite_mask`` (an int32 bitmask over
``FINITE_FIELDS``, computed on device) in its metrics. Loops check it once per jitted chunk
on the host (``raise_if_nonfinite``), so the hot path has no device-to-host sync; a learner
used on its own can also raise inside each update (``check_finite``, a host callback). Both
raise ``FloatingPointError`` naming the non-finite field or loss.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resfit_jax.replay import Transition

PyTree = Any


def typed_key(key: jax.Array) -> jax.Array:
    """A raw uint32 key [..., 2] -> the typed PRNG key it holds (the default impl, so both
    draw the same numbers); a typed key unchanged. Learner states hold typed keys."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return key
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer) or jnp.shape(key)[-1:] != (2,):
        raise ValueError(
            f"expected a PRNG key (jax.random.key(seed), or a raw uint32 [2] key), got "
            f"{key!r:.60}; exploration and init draw random numbers (deterministic act needs "
            "none)."
        )
    return jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))


def learner_sizes(config: Any, config_type: type, action_dim: Any, where: str) -> int:
    """The action size as an int, after checking the builder's arguments: ``config`` is a
    ``config_type`` and ``action_dim`` a whole number >= 1 (ValueError / TypeError)."""
    if not isinstance(config, config_type):
        raise TypeError(
            f"{where} needs a {config_type.__name__} (got {type(config).__name__}); "
            f"{config_type.__name__}() holds the recipe's defaults."
        )
    if isinstance(action_dim, bool) or not isinstance(action_dim, (int, np.integer)):
        raise ValueError(f"{where}: action_dim must be an int (got {action_dim!r}).")
    if action_dim < 1:
        raise ValueError(f"{where}: action_dim must be >= 1, got {action_dim}.")
    return int(action_dim)


def as_obs_spec(obs_spec: PyTree, pixels: bool = False) -> PyTree:
    """int D -> one flat vector; otherwise a pytree whose leaves have .shape/.dtype: float
    vectors [D], and with ``pixels`` also camera fields uint8 [H, W, C] (``encoders``)."""
    if isinstance(obs_spec, bool) or isinstance(obs_spec, float):
        raise ValueError(
            f"obs_spec must be an int or a pytree of ShapeDtypeStruct, got {obs_spec!r}."
        )
    if isinstance(obs_spec, (int, np.integer)):
        if obs_spec < 1:
            raise ValueError(f"obs_spec: the observation dimension must be >= 1, got {obs_spec}.")
        return jax.ShapeDtypeStruct((int(obs_spec),), jnp.float32)
    leaves = jax.tree.leaves(obs_spec)
    if not leaves:
        raise ValueError(
            "obs_spec is empty: give the observation dimension (int) or a pytree "
            "of jax.ShapeDtypeStruct, one per observation field (no batch axis)."
        )
    spec = jax.tree.map(lambda s: jax.ShapeDtypeStruct(tuple(s.shape), s.dtype), obs_spec)
    for path, s in jax.tree_util.tree_leaves_with_path(spec):
        name = jax.tree_util.keystr(path) or "obs"
        if pixels and len(s.shape) == 3 and s.dtype == jnp.uint8:
            continue
        if pixels and len(s.shape) == 3:
            raise ValueError(
                f"obs_spec{name}: a camera field must be uint8 [H, W, C]; got "
                f"dtype {s.dtype}. Store images as uint8 (0-255)."
            )
        if len(s.shape) != 1 or not jnp.issubdtype(s.dtype, jnp.floating):
            if pixels:
                raise ValueError(
                    f"obs_spec{name}: fields are float vectors [D] or camera "
                    f"images uint8 [H, W, C]; got shape {s.shape} dtype {s.dtype}."
                )
            raise ValueError(
                f"obs_spec{name}: the state learner takes float vectors [D]; got shape {s.shape} "
                f"dtype {s.dtype}. Flatten the field, or use an image encoder for pixel fields."
            )
    return spec


def obs_dim(spec: PyTree) -> int:
    return int(sum(s.shape[0] for s in jax.tree.leaves(spec)))


def deprecated_obs_normalizer(obs_normalizer: Any, spec: PyTree, action_dim: int) -> Any:
    """``make_learner(obs_normalizer=...)`` (deprecated): a default ``Normalizer`` with those
    observation statistics and identity actions, with a warning; None when not given."""
    if obs_normalizer is None:
        return None
    import warnings

    from resfit_jax.encoders import state_dim
    from resfit_jax.normalization import Normalizer

    warnings.warn(
        "make_learner(obs_normalizer=...) is deprecated: pass a "
        "normalization.Normalizer to learner.init instead.",
        DeprecationWarning,
        stacklevel=3,
    )
    dim = state_dim(spec)
    if obs_normalizer.dim != dim:
        raise ValueError(
            f"obs_normalizer has dimension {obs_normalizer.dim} but the "
            f"flattened observation has {dim}; fit it on the same observations."
        )
    return Normalizer(obs=obs_normalizer, action=Normalizer.identity(dim, int(action_dim)).action)


def check_normalizer(normalizer: Any, obs_dim: int, action_dim: int) -> None:
    """A clear error when a ``Normalizer``'s sizes do not match the learner's."""
    if normalizer.obs.mean.shape[-1] != obs_dim:
        raise ValueError(
            f"The normalizer's observation size {normalizer.obs.mean.shape[-1]} "
            f"does not match the flattened observation ({obs_dim}); fit it on the "
            "same observations."
        )
    if normalizer.action.center.shape[-1] != action_dim:
        raise ValueError(
            f"The normalizer's action size {normalizer.action.center.shape[-1]} "
            f"does not match action_dim {action_dim}."
        )


def check_obs(spec: PyTree, obs: PyTree, batch_shape: tuple[int, ...], where: str) -> None:
    try:
        pairs = jax.tree.map(lambda s, x: (s, x), spec, obs)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{where}: observation structure does not match obs_spec "
            f"{jax.tree.structure(spec)} ({e})."
        ) from None
    for path, (s, x) in jax.tree_util.tree_leaves_with_path(
        pairs,
        is_leaf=lambda p: isinstance(p, tuple)
        and len(p) == 2
        and isinstance(p[0], jax.ShapeDtypeStruct),
    ):
        want = tuple(batch_shape) + tuple(s.shape)
        if tuple(jnp.shape(x)) != want:
            raise ValueError(
                f"{where}: observation{jax.tree_util.keystr(path)} has shape "
                f"{tuple(jnp.shape(x))}, expected {want} (batch {tuple(batch_shape)} "
                f"+ obs_spec {tuple(s.shape)})."
            )


def check_action(action_dim: int, a: jax.Array, batch_shape: tuple[int, ...], where: str) -> None:
    want = tuple(batch_shape) + (action_dim,)
    if tuple(jnp.shape(a)) != want:
        hint = ""
        if jnp.ndim(a) >= 1 and jnp.shape(a)[-1] != action_dim:
            hint = (
                f" The action size {jnp.shape(a)[-1]} does not match the learner's "
                f"action_dim {action_dim}: the base policy and the task must agree."
            )
        raise ValueError(f"{where} has shape {tuple(jnp.shape(a))}, expected {want}.{hint}")


def join_batches(
    spec: PyTree, action_dim: int, online: Transition, offline: Transition | None, where: str
) -> Transition:
    """Validate [N, B_on, ...] (+ [N, B_off, ...]) and concatenate along the batch axis."""
    if not isinstance(online, Transition):
        raise TypeError(f"{where}: online batch must be a replay.Transition, got {type(online)}.")
    parts = [("online", online)] + ([("offline", offline)] if offline is not None else [])
    steps = None
    for name, b in parts:
        if jnp.ndim(b.reward) != 2:
            raise ValueError(
                f"{where}: {name} reward has shape {jnp.shape(b.reward)}; batches "
                "must be [steps, batch, ...] (e.g. [UTD, B/2])."
            )
        n, bs = jnp.shape(b.reward)
        if steps is not None and n != steps:
            raise ValueError(
                f"{where}: online has {steps} steps but offline has {n}; both need "
                "the same leading (UTD) size."
            )
        steps = n
        for field in ("discount", "nonterminal"):
            if jnp.shape(getattr(b, field)) != (n, bs):
                raise ValueError(
                    f"{where}: {name} {field} has shape {jnp.shape(getattr(b, field))},"
                    f" expected {(n, bs)}."
                )
        for field in ("base_action", "action", "next_base_action"):
            check_action(action_dim, getattr(b, field), (n, bs), f"{where}: {name} {field}")
        check_obs(spec, b.obs, (n, bs), f"{where}: {name} obs")
        check_obs(spec, b.next_obs, (n, bs), f"{where}: {name} next_obs")
    if offline is None:
        return online
    if (online.mc_return is None) != (offline.mc_return is None):
        raise ValueError(
            f"{where}: only one of the online and offline batches has mc_return; build both "
            "buffers with the same Monte-Carlo bound setting."
        )
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=1), online, offline)


BATCH_FIELDS = (
    "obs",
    "base_action",
    "action",
    "reward",
    "discount",
    "nonterminal",
    "next_obs",
    "next_base_action",
)
LOSS_FIELDS = ("critic_loss", "actor_loss")
FINITE_FIELDS = tuple(f"batch.{f}" for f in BATCH_FIELDS) + LOSS_FIELDS


def finite_rows(obs: PyTree, batch_shape: tuple[int, ...]) -> jax.Array:
    """[*B] bool: every value of the sample's observation (all leaves) is finite."""
    return jnp.stack(
        [
            jnp.all(jnp.isfinite(x.reshape(batch_shape + (-1,))), axis=-1)
            for x in jax.tree.leaves(obs)
        ]
    ).all(axis=0)


def finite_base_rows(
    base_action: jax.Array, batch_shape: tuple[int, ...], where: str, check: bool = True
) -> jax.Array:
    """[*B] bool: the sample's base action [*B, A] is finite. A residual cannot correct a
    NaN or inf base action, so a concrete (eager) call raises ValueError naming the rows;
    inside jit / vmap, ``check`` adds a host callback that raises the same (as an update's
    ``check_finite``), and the caller sets those rows' residual to 0."""
    finite = jnp.all(jnp.isfinite(base_action), axis=-1)
    if not isinstance(finite, jax.core.Tracer):
        _raise_if_base_nonfinite(finite, where)
    elif check:
        jax.debug.callback(lambda f: _raise_if_base_nonfinite(f, where), finite)
    return finite


def _raise_if_base_nonfinite(finite, where: str) -> None:
    bad = np.flatnonzero(~np.asarray(finite, bool).reshape(-1))
    if bad.size:
        rows = bad[:8].tolist() + (["..."] if bad.size > 8 else [])
        raise ValueError(
            f"{where}: the base action is NaN or inf in batch rows {rows} (of "
            f"{np.size(finite)}): a residual cannot correct a non-finite base action. Check "
            "the base policy's checkpoint, normalizer and the observations it was given."
        )


def nonfinite_bits(named: dict[str, PyTree]) -> jax.Array:
    """int32 bitmask: bit i set when the i-th entry of ``named`` (a pytree; its floating
    leaves are checked) holds a NaN or inf."""
    bits = []
    for value in named.values():
        leaves = [x for x in jax.tree.leaves(value) if jnp.issubdtype(x.dtype, jnp.floating)]
        bits.append(
            jnp.stack([~jnp.all(jnp.isfinite(x)) for x in leaves]).any()
            if leaves
            else jnp.zeros((), bool)
        )
    weights = jnp.left_shift(1, jnp.arange(len(bits), dtype=jnp.int32))
    return jnp.sum(jnp.where(jnp.stack(bits), weights, 0)).astype(jnp.int32)


def nonfinite_mask(batch: Transition, losses: dict[str, jax.Array]) -> jax.Array:
    """``nonfinite_bits`` over ``FINITE_FIELDS``: the batch's fields, then the losses."""
    named = {f"batch.{name}": getattr(batch, name) for name in BATCH_FIELDS}
    named |= {name: losses.get(name, jnp.zeros(())) for name in LOSS_FIELDS}
    return nonfinite_bits(named)


def raise_if_nonfinite(
    mask, where: str, switch: str | None = None, fields: tuple[str, ...] = FINITE_FIELDS
) -> None:
    """Host side: FloatingPointError naming the fields flagged in ``mask`` (any shape, e.g.
    [S] over seeds: the bits of all entries together). ``fields`` name the bits; those
    starting with "batch." or "rollout." are data, the others losses."""
    m = int(np.bitwise_or.reduce(np.asarray(mask, np.int64).reshape(-1))) if np.size(mask) else 0
    if m == 0:
        return
    bad = [name for i, name in enumerate(fields) if m >> i & 1]
    bad_batch = [b for b in bad if b.startswith(("batch.", "rollout."))]
    skip = f" (Set {switch}=False to skip.)" if switch else ""
    if bad_batch:
        raise FloatingPointError(
            f"{where}: non-finite values (NaN/inf) in {', '.join(bad_batch)}. Check the "
            "env observations, rewards and base actions feeding the replay: a NaN batch "
            f"poisons every parameter.{skip}"
        )
    raise FloatingPointError(
        f"{where}: non-finite {', '.join(bad)} on a finite batch: the update diverged. Lower "
        f"the learning rates or check the observation normalizer (tiny std).{skip}"
    )


def check_finite(mask: jax.Array, where: str, switch: str = "check_finite") -> None:
    """Inside a jitted function: a host callback that raises ``raise_if_nonfinite``."""
    jax.debug.callback(lambda m: raise_if_nonfinite(m, where, switch), mask)
