"""Losses of residual PPO: Gaussian log-probabilities, GAE over episode ends, and the
clipped surrogate + value loss (pure functions; the first argument of a loss is what is
differentiated).

GAE on a rollout [T, E] with auto-reset envs (each step knows its true next observation):

    delta_t = r_t + gamma * m_t * V(s'_t) - V(s_t)          m_t = 0 where s'_t is terminal
    A_t     = delta_t + gamma * lambda * (1 - d_t) * A_t+1   d_t = 1 where the episode ended
    R_t     = A_t + V(s_t)                                   (the value target)

With time-outs treated as done (the recipe's default) m_t = 0 at every episode end; with
``bootstrap_truncation`` the value of the final observation of a timed-out episode counts.
A rollout that stops mid-episode bootstraps from V(s'_T-1) through delta, as usual.

The diagonal Gaussian is written out (four lines) rather than taken from distrax: distrax
pulls a nightly TensorFlow Probability, which this project dropped (DESIGN.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from resfit_jax.agents.residual_td3.losses import flatten_obs
from resfit_jax.normalization import Normalizer

PyTree = Any
_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(x: jax.Array, mean: jax.Array, log_std: jax.Array) -> jax.Array:
    """log N(x; mean, diag(exp(log_std)^2)) summed over the last axis: [..., A] -> [...]."""
    z = (x - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * jnp.square(z) - log_std - 0.5 * _LOG_2PI, axis=-1)


def gaussian_entropy(log_std: jax.Array) -> jax.Array:
    """Entropy of the diagonal Gaussian: log_std [A] -> scalar."""
    return jnp.sum(log_std + 0.5 * (_LOG_2PI + 1.0))


def gae(
    reward: jax.Array,
    value: jax.Array,
    next_value: jax.Array,
    nonterminal: jax.Array,
    done: jax.Array,
    gamma: float,
    lam: float,
) -> tuple[jax.Array, jax.Array]:
    """Advantages and value targets [T, E] (see the module docstring; time axis first)."""
    delta = reward + gamma * nonterminal * next_value - value

    def back(carry, xs):
        d, cont = xs
        a = d + gamma * lam * cont * carry
        return a, a

    _, adv = jax.lax.scan(back, jnp.zeros_like(delta[0]), (delta, 1.0 - done), reverse=True)
    return adv, adv + value


class PPOBatch(NamedTuple):
    """Flat samples [N, ...] of one update: learner obs, base action, the Gaussian sample u
    (the executed residual is action_scale * u), its log-prob under the rollout policy, the
    advantage and the value target."""

    obs: PyTree
    base_action: jax.Array
    sample: jax.Array
    log_prob: jax.Array
    advantage: jax.Array
    value_target: jax.Array


class ResidualPPOLosses(NamedTuple):
    features: Callable[..., jax.Array]
    loss: Callable[..., tuple[jax.Array, dict]]


def make_losses(networks, config) -> ResidualPPOLosses:
    actor, critic = networks.actor, networks.critic

    def features(normalizer: Normalizer, obs: PyTree) -> jax.Array:
        """Observation pytree [*B, ...] -> standardized flat features [*B, D]."""
        return normalizer.obs.normalize(flatten_obs(obs))

    def loss(
        params: tuple[PyTree, PyTree], normalizer: Normalizer, batch: PPOBatch
    ) -> tuple[jax.Array, dict]:
        """Clipped surrogate + vf_coef * 0.5 MSE(V, R) - ent_coef * entropy, on (actor, critic)
        params. Advantages are normalized over the minibatch (``normalize_advantages``)."""
        actor_params, critic_params = params
        feats = features(normalizer, batch.obs)
        mean, log_std = actor.apply(actor_params, feats, batch.base_action)
        if not config.learn_log_std:
            log_std = jax.lax.stop_gradient(log_std)
        log_prob = gaussian_log_prob(batch.sample, mean, log_std)
        log_ratio = log_prob - batch.log_prob
        ratio = jnp.exp(log_ratio)
        adv = batch.advantage
        if config.normalize_advantages:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        pg = -jnp.mean(
            jnp.minimum(
                ratio * adv, jnp.clip(ratio, 1.0 - config.clip_eps, 1.0 + config.clip_eps) * adv
            )
        )
        v = critic.apply(critic_params, feats, batch.base_action)
        v_loss = 0.5 * jnp.mean(jnp.square(v - batch.value_target))
        entropy = gaussian_entropy(log_std)
        total = pg + config.vf_coef * v_loss - config.ent_coef * entropy
        aux = {
            "pg_loss": pg,
            "value_loss": v_loss,
            "entropy": entropy,
            # the k3 estimator of KL(old || new) (ResiP, CleanRL): >= 0, low variance
            "approx_kl": jnp.mean((ratio - 1.0) - log_ratio),
            "clip_fraction": jnp.mean((jnp.abs(ratio - 1.0) > config.clip_eps).astype(jnp.float32)),
        }
        return total, aux

    return ResidualPPOLosses(features, loss)
