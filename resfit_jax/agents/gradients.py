"""Shared optimisation helpers of the agents: the optimizer and one loss + optimizer step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from resfit_jax.sharding import mean_grads

PyTree = Any


def make_optimizer(
    lr: float, weight_decay: float, max_grad_norm: float
) -> optax.GradientTransformation:
    """AdamW (b1 0.9, b2 0.999, eps 1e-8) after a global-norm gradient clip."""
    return optax.chain(
        optax.clip_by_global_norm(max_grad_norm),
        optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay),
    )


def gradient_update(
    loss_fn: Callable[..., tuple[jax.Array, Any]], tx: optax.GradientTransformation, axis_name=None
) -> Callable:
    """Wrap ``loss_fn(params, *args) -> (loss, aux)`` into one optimizer step:

        params, opt_state, loss, aux, grads = step(params, opt_state, *args)

    With ``axis_name`` (data-parallel shards, ``sharding``) the gradients are averaged over
    the shards before the optimizer sees them; ``grads`` are the averaged ones.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(params: PyTree, opt_state: PyTree, *args):
        (loss, aux), grads = grad_fn(params, *args)
        grads = mean_grads(grads, axis_name)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, aux, grads

    return step
