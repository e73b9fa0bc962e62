"""Host-callback bases: any numpy-in / numpy-out callable (ONNX Runtime, PyTorch, ...) as a
jittable ``BasePolicy`` through ``jax.pure_callback``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from resfit_jax.base.policy import ChunkedBase, FunctionBase

_LAST_ERROR: list[BaseException] = []  # the last error a host base raised in a callback


@contextlib.contextmanager
def host_errors_surfaced():
    """Inside a jitted call an error of a host base reaches the caller wrapped in JAX's
    runtime error (INTERNAL: ...); within this block it is raised as itself, with its own
    type and message (the run loops wrap their compiled calls in it)."""
    _LAST_ERROR.clear()
    try:
        yield
    except jax.errors.JaxRuntimeError as e:
        if _LAST_ERROR:
            raise _LAST_ERROR[-1] from e
        raise


def host_callback_predictor(
    fn: Callable, obs_dim: int, action_dim: int, chunk_size: int | None = None
) -> Callable[[jax.Array], jax.Array]:
    """Wrap ``fn(obs np.float32 [b, O]) -> np [b, A]`` (or [b, K, A] when ``chunk_size``) as a
    jittable predictor through ``jax.pure_callback``.

    One host call per step for the whole batch; under ``jax.vmap`` (e.g. over seeds) the
    extra axes are flattened into the batch (vmap_method="expand_dims"), so it is still one
    call. ``fn`` is checked once on a zero batch at construction, so shape or dtype mistakes
    fail here with a clear message rather than inside the compiled rollout.
    """
    import numpy as np

    out_tail = (action_dim,) if chunk_size is None else (chunk_size, action_dim)
    name = getattr(fn, "__qualname__", None) or type(fn).__name__

    def checked(x: np.ndarray) -> np.ndarray:
        try:
            y = np.asarray(fn(x))
        except Exception as e:
            raise RuntimeError(f"host base {name!r} raised {type(e).__name__}: {e}") from e
        if y.shape != (x.shape[0],) + out_tail:
            raise ValueError(
                f"host base: the callable returned shape {y.shape} for a batch of "
                f"{x.shape[0]} observations; expected {(x.shape[0],) + out_tail}."
            )
        if not np.issubdtype(y.dtype, np.floating):
            raise ValueError(
                f"host base: the callable returned dtype {y.dtype}; expected a float array."
            )
        if not np.all(np.isfinite(y)):
            raise FloatingPointError(
                f"host base {name!r} returned NaN/inf actions for a batch "
                f"of {x.shape[0]} observations (finite inputs: "
                f"{bool(np.all(np.isfinite(x)))})."
            )
        return y.astype(np.float32)

    checked(np.zeros((2, obs_dim), np.float32))

    def host(obs):
        obs = np.asarray(obs, np.float32)
        lead = obs.shape[:-1]
        try:
            return checked(obs.reshape(-1, obs_dim)).reshape(lead + out_tail)
        except Exception as e:  # kept for host_errors_surfaced (the base's own error,
            # not the wrapper that names the base), then raised to JAX
            _LAST_ERROR[:] = [e.__cause__ if isinstance(e.__cause__, Exception) else e]
            raise

    def predict(obs):
        if obs.shape[-1] != obs_dim:
            raise ValueError(f"host base: observation size {obs.shape[-1]}, expected {obs_dim}.")
        shape = jax.ShapeDtypeStruct(obs.shape[:-1] + out_tail, jnp.float32)
        return jax.pure_callback(host, shape, obs.astype(jnp.float32), vmap_method="expand_dims")

    return predict


def host_callback_base(
    fn: Callable,
    obs_dim: int,
    action_dim: int,
    chunk_size: int | None = None,
    execution_horizon: int | None = None,
) -> ChunkedBase | FunctionBase:
    """A BasePolicy around a host callable: per-step actions (``chunk_size`` None) give a
    FunctionBase; chunks give a ChunkedBase with the usual queue."""
    predict = host_callback_predictor(fn, obs_dim, action_dim, chunk_size)
    if chunk_size is None:
        return FunctionBase(predict, action_dim)
    return ChunkedBase(predict, action_dim, chunk_size, execution_horizon)
