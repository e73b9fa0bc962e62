"""The numbers one critic or actor step of residual TD3 reports (scalars, per step).

critic: loss, Q statistics over heads and batch, the spread between heads, the TD error
|mean_k Q_k - y| and the gradient norm. actor: loss, Q at the policy's action, the gradient
norm, the residual's size, and (residual TD3's loss, not IBRL's) the action gap
|Q(s, a_b + r) - Q(s, a_b)| with the heads' disagreement on it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def critic_metrics(loss: jax.Array, aux: dict[str, jax.Array], grads: Any) -> dict[str, jax.Array]:
    """aux: "q" [K, B] (every head), "target" [B]."""
    q, target = aux["q"], aux["target"]
    return {
        "critic_loss": loss,
        "q_mean": q.mean(),
        "q_min": q.min(),
        "q_max": q.max(),
        "q_head_std": q.std(axis=0).mean(),
        "target_q_mean": target.mean(),
        "td_error_abs": jnp.abs(q.mean(axis=0) - target).mean(),
        "critic_grad_norm": optax.tree.norm(grads),
    }


def actor_metrics(loss: jax.Array, aux: dict[str, jax.Array], grads: Any) -> dict[str, jax.Array]:
    """aux: "q" (scalar), "residual" [B, A], optionally "gap" and "gap_head_std"."""
    r = aux["residual"]
    metrics = {
        "actor_loss": loss,
        "actor_q": aux["q"],
        "actor_grad_norm": optax.tree.norm(grads),
        "residual_abs_mean": jnp.abs(r).mean(),
        "residual_abs_max": jnp.abs(r).max(),
    }
    if "gap" in aux:
        metrics |= {"action_gap": aux["gap"], "action_gap_head_std": aux["gap_head_std"]}
    return metrics
