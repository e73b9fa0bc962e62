"""Residual TD3 losses as pure functions (brax style): the first argument of each loss is
the params it differentiates; everything else (other params, the normalizer, the batch, a
key) is explicit.

    losses = make_losses(networks, config, obs_encoder)
    y            = losses.td_target(target_actor_params, target_critic_params, normalizer,
                                    batch, key, noise_std)                      # [B]
    loss, aux    = losses.critic_loss(critic_params, target_actor_params,
                                      target_critic_params, normalizer, batch, key, noise_std)
    loss, aux    = losses.actor_loss(actor_params, critic_params, normalizer, batch)

Pixel observations (``encoders.ObservationEncoder`` with cameras): every loss also takes
``encoder_params``. The camera encoders are trained through the critic loss only
(differentiate ``critic_loss`` with respect to them); the TD target and the actor loss see
their features through ``stop_gradient``, so the actor's own first layer is a projection of
detached features (DrQ-v2's split).

TD target (per transition):
    y = R + discount * nonterminal * min_{j in S} Q'_j(s', clip(a_b' + r~', -1, 1)),
    r~' = clip(mu'(s', a_b') + clip(N(0, sigma), -c, c), -1, 1),
S a random subset of ``num_min_critics`` target heads; with a Monte-Carlo bound in the batch
(``Transition.mc_return``) y = max(y, mc_return) (MCAC). The actor maximises the mean over all
K heads of Q(s, clip(a_b + mu(s, a_b), -1, 1)), minus ``residual_penalty *
mean((mu / action_scale)^2)`` when that option is on.

Value gate (``gate_tau`` > -inf; rule "agree" compares each head's paired advantage, see
``gate``): the residual is executed only where a pessimistic estimate
says it helps, a = clip(a_b + g * r) with g = 1[P(s, a_b + r) - P(s, a_b) > tau]; P is the min
over a random subset of ``num_min_critics`` heads ("min") or mean - gate_k * std over all
heads ("lcb"). The same rule (with the target critic and the target's head subset) picks the
next action in the TD target. With gate_tau = -inf nothing is gated and no code of the gate
runs.

Correction entries (``residual_dims``): r, r~' and the actor's r are multiplied by a 0 / 1
mask over the action's entries (``dims_mask``), so the residual corrects those entries only.

Residual mask (``residual_mask``): the last raw entry m of the state vector (0 or 1) gates
the residual: r~' is multiplied by m(s') in the target, and the actor loss averages over
the samples with m(s) = 1 only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from resfit_jax.agents.residual_td3.config import ResidualTD3Config
from resfit_jax.agents.residual_td3.networks import ResidualTD3Networks
from resfit_jax.encoders import ObservationEncoder
from resfit_jax.normalization import Normalizer
from resfit_jax.observations import state_of
from resfit_jax.replay import Transition
from resfit_jax.sharding import local_draw

PyTree = Any


def residual_mask(obs: PyTree) -> jax.Array:
    """[*B, 1]: the last raw entry of the state vector (where the residual acts)."""
    return state_of(obs)[..., -1:].astype(jnp.float32)


def dims_mask(dims: tuple[int, ...], action_dim: int, env_action_dim: int | None = None):
    """[action_dim] float32, 1 at the env action entries ``dims`` (() -> None: all entries),
    repeated over the decision's blocks where one decision holds action_dim / env_action_dim
    blocks of env_action_dim entries (offset + slope windows)."""
    if not dims:
        return None
    env_dim = int(env_action_dim or action_dim)
    bad = [int(d) for d in dims if not 0 <= int(d) < env_dim]
    if bad:
        raise ValueError(
            f"residual_dims {tuple(dims)}: entries {bad} are outside the action's "
            f"{env_dim} entries (0 .. {env_dim - 1}); name entries of the env's action."
        )
    mask = jnp.zeros((env_dim,), jnp.float32).at[jnp.asarray(dims)].set(1.0)
    return jnp.tile(mask, int(action_dim) // env_dim)


def flatten_obs(obs: PyTree) -> jax.Array:
    """Observation pytree [*batch, D_i] -> one float32 vector [*batch, sum D_i] (tree order)."""
    flat = [
        x.reshape(x.shape[: x.ndim - 1] + (-1,)).astype(jnp.float32) for x in jax.tree.leaves(obs)
    ]
    return flat[0] if len(flat) == 1 else jnp.concatenate(flat, axis=-1)


@dataclasses.dataclass(frozen=True)
class ResidualTD3Losses:
    features: Callable[[Normalizer, PyTree], jax.Array]
    td_target: Callable[..., jax.Array]
    critic_loss: Callable[..., tuple[jax.Array, dict]]
    actor_loss: Callable[..., tuple[jax.Array, dict]]
    gate: Callable[..., jax.Array]
    keep: Callable[[jax.Array], jax.Array]  # residual [*B, A] -> its correction entries only


def make_losses(
    networks: ResidualTD3Networks,
    config: ResidualTD3Config,
    obs_encoder: ObservationEncoder | None = None,
    axis_name=None,
    env_action_dim: int | None = None,
) -> ResidualTD3Losses:
    """``axis_name``: data-parallel shards; per-sample target noise is then drawn at the
    global batch shape (``sharding.local_draw``). ``env_action_dim``: the env's action size
    where a decision holds more entries (for ``residual_dims``)."""
    actor, critic = networks.actor, networks.critic
    gated = config.gate_tau > float("-inf")
    mask = dims_mask(tuple(config.residual_dims), actor.action_dim, env_action_dim)

    def keep(r: jax.Array) -> jax.Array:
        return r if mask is None else r * mask

    def pessimistic(q: jax.Array, heads: jax.Array) -> jax.Array:
        """q [K, B] -> [B]: min over the given heads, or mean - k * std over all."""
        if config.gate_rule == "min":
            return q[heads].min(axis=0)
        return q.mean(axis=0) - config.gate_k * q.std(axis=0)

    def gate(
        critic_params,
        feats: jax.Array,
        base_action: jax.Array,
        residual: jax.Array,
        heads: jax.Array,
    ) -> jax.Array:
        """g [B] in {0, 1}: 1 where the residual beats the base by more than gate_tau.
        "min" / "lcb": P(s, clip(a_b + r)) - P(s, a_b) with P pessimistic over heads;
        "agree": min over all K heads of the paired advantage Q_k(s, clip(a_b + r)) - Q_k(s, a_b)
        (every head must say the residual helps)."""
        with_r = critic.apply(
            critic_params, feats, jnp.clip(base_action + residual, -1.0, 1.0), base_action
        )
        without = critic.apply(critic_params, feats, base_action, base_action)
        if config.gate_rule == "agree":
            adv = (with_r - without).min(axis=0)
        else:
            adv = pessimistic(with_r, heads) - pessimistic(without, heads)
        return (adv > config.gate_tau).astype(residual.dtype)

    def features(normalizer: Normalizer, obs: PyTree, encoder_params: PyTree = None) -> jax.Array:
        """Observation pytree [*B, ...] -> features [*B, F]: standardized flat state (and,
        with cameras, the camera encoders' features first)."""
        if obs_encoder is None or not obs_encoder.cameras:
            return normalizer.obs.normalize(flatten_obs(obs))
        return obs_encoder(encoder_params, normalizer, obs)

    def td_target(
        target_actor_params,
        target_critic_params,
        normalizer: Normalizer,
        batch: Transition,
        key: jax.Array,
        noise_std,
        encoder_params=None,
    ) -> jax.Array:
        k_subset, k_noise = jax.random.split(key)
        next_feats = jax.lax.stop_gradient(features(normalizer, batch.next_obs, encoder_params))
        next_mean = actor.apply(target_actor_params, next_feats, batch.next_base_action)
        noise = jnp.clip(
            noise_std * local_draw(jax.random.normal, k_noise, next_mean.shape, axis_name),
            -config.target_noise_clip,
            config.target_noise_clip,
        )
        next_r = keep(jnp.clip(next_mean + noise, -1.0, 1.0))
        heads = jax.random.choice(
            k_subset, config.num_critics, (config.num_min_critics,), replace=False
        )
        if gated:
            next_r = (
                gate(target_critic_params, next_feats, batch.next_base_action, next_r, heads)[
                    :, None
                ]
                * next_r
            )
        if config.residual_mask:
            next_r = next_r * residual_mask(batch.next_obs)
        next_action = jnp.clip(batch.next_base_action + next_r, -1.0, 1.0)
        subset = jax.tree.map(lambda p: p[heads], target_critic_params)
        next_q = critic.apply(subset, next_feats, next_action, batch.next_base_action).min(axis=0)
        y = batch.reward + batch.discount * batch.nonterminal * next_q
        if batch.mc_return is not None:  # MCAC: never below the return the data achieved
            y = jnp.maximum(y, batch.mc_return)
        return jax.lax.stop_gradient(y)

    def critic_loss(
        critic_params,
        target_actor_params,
        target_critic_params,
        normalizer: Normalizer,
        batch: Transition,
        key: jax.Array,
        noise_std,
        encoder_params=None,
    ):
        """Per-head MSE ("mse") or the release's mean_b((mean_k |Q_k - y|)^2) ("release")."""
        target = td_target(
            target_actor_params,
            target_critic_params,
            normalizer,
            batch,
            key,
            noise_std,
            encoder_params,
        )
        q = critic.apply(
            critic_params,
            features(normalizer, batch.obs, encoder_params),
            batch.action,
            batch.base_action,
        )  # [K, B]
        if config.critic_loss == "mse":
            loss = jnp.mean(jnp.square(q - target[None]))
        else:
            loss = jnp.mean(jnp.square(jnp.mean(jnp.abs(q - target[None]), axis=0)))
        return loss, {"q": q, "target": target}

    def actor_loss(
        actor_params,
        critic_params,
        normalizer: Normalizer,
        batch: Transition,
        weights: jax.Array | None = None,
        encoder_params=None,
    ):
        """-mean Q over heads and samples (``weights`` [B]: a weighted mean over samples);
        with ``actor_pessimism`` = c, per sample -(mean_k Q_k - c * std_k of the heads'
        advantage of r, Q_k(s, a_b + r) - Q_k(s, a_b))."""
        feats = jax.lax.stop_gradient(features(normalizer, batch.obs, encoder_params))
        r = keep(actor.apply(actor_params, feats, batch.base_action))
        if config.residual_mask:  # learn only where the residual acts
            m = residual_mask(batch.obs)
            r = r * m
            weights = m[:, 0] if weights is None else weights * m[:, 0]
        action = jnp.clip(batch.base_action + r, -1.0, 1.0)
        frozen = jax.lax.stop_gradient(critic_params)
        q = critic.apply(frozen, feats, action, batch.base_action)
        penalty = jnp.mean(jnp.square(r / config.action_scale))
        mean = lambda x: (
            x.mean() if weights is None else (x * weights).sum() / jnp.maximum(weights.sum(), 1e-6)
        )
        q_pi = q.mean() if weights is None else mean(q.mean(axis=0))
        # the action gap: what the critic says the residual changes, |Q(s, a_b + r) - Q(s, a_b)|
        # (head means; compare with the TD error and the head spread)
        q_base = critic.apply(frozen, feats, batch.base_action, batch.base_action)
        advantage = q - jax.lax.stop_gradient(q_base)  # [K, B]: each head's advantage of r
        paired = jax.lax.stop_gradient(advantage)
        aux = {
            "residual": r,
            "q": q_pi,
            "gap": mean(jnp.abs(paired.mean(axis=0))),
            "gap_head_std": mean(paired.std(axis=0)),  # how much the heads disagree on it
        }
        objective = q_pi
        if config.actor_pessimism > 0:  # sqrt(var + eps): a finite gradient at r = 0
            spread = jnp.sqrt(jnp.var(advantage, axis=0) + 1e-8)
            objective = q_pi - config.actor_pessimism * mean(spread)
        return -objective + config.residual_penalty * penalty, aux

    return ResidualTD3Losses(features, td_target, critic_loss, actor_loss, gate, keep)
