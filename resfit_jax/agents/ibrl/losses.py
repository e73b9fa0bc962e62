"""IBRL losses (Hu et al. 2024) as pure functions, in the layout of residual TD3's losses.

Two proposals compete at every state: the frozen base's a_b and the RL actor's own action
a_rl = tanh(MLP(s)) (a full action, not a correction). A pessimistic critic value
P(s, a) = min over a random subset S of ``num_min_critics`` heads picks between them:

    choose(P_b, P_rl) = 1[P_rl > P_b]                        rule "greedy"
                      ~ Bernoulli(softmax(beta * [P_b, P_rl])[1])   rule "soft"

TD target: y = R + discount * nonterminal * P'(s', a*), a* = the chosen one of
{a_b', clip(mu'(s') + clip(N(0, sigma), -c, c), -1, 1)} under the target critic's P'.
The actor maximises the mean over all K heads of Q(s, mu(s)) (TD3, no BC term).
The actor sees the observation only; its base-action input is zeros (the residual actor
module is reused with a full-range output).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from resfit_jax.agents.ibrl.config import IBRLConfig
from resfit_jax.agents.residual_td3.losses import ResidualTD3Losses, flatten_obs
from resfit_jax.agents.residual_td3.networks import ResidualTD3Networks
from resfit_jax.encoders import ObservationEncoder
from resfit_jax.normalization import Normalizer
from resfit_jax.replay import Transition
from resfit_jax.sharding import local_draw, shard_index


def choose(
    p_base: jax.Array, p_rl: jax.Array, rule: str, beta: float, key: jax.Array | None
) -> jax.Array:
    """[B] float in {0, 1}: 1 where the RL proposal is taken. p_*: pessimistic Q [B].
    "greedy" (or key None): the larger value; "soft": sampled with probability
    softmax(beta * [p_base, p_rl])[1] = sigmoid(beta * (p_rl - p_base))."""
    if rule == "greedy" or key is None:
        return (p_rl > p_base).astype(p_rl.dtype)
    prob = jax.nn.sigmoid(beta * (p_rl - p_base))
    return (jax.random.uniform(key, p_rl.shape) < prob).astype(p_rl.dtype)


@dataclasses.dataclass(frozen=True)
class IBRLLosses(ResidualTD3Losses):
    """Residual TD3's loss bundle plus the two IBRL pieces the learner's act uses:
    proposal(actor_params, feats [B, F]) -> a_rl [B, A];
    pick(critic_params, feats, a_b, a_rl, heads, key) -> (action [B, A], P [B], took_rl [B])."""

    proposal: Callable[..., jax.Array] = None
    pick: Callable[..., tuple] = None


def make_ibrl_losses(
    networks: ResidualTD3Networks,
    config: IBRLConfig,
    action_dim: int,
    obs_encoder: ObservationEncoder | None = None,
    axis_name=None,
) -> IBRLLosses:
    """With camera fields (``obs_encoder``), as in residual TD3: the critic loss trains the
    encoders; the TD target and the actor see their features through ``stop_gradient``."""
    actor, critic = networks.actor, networks.critic

    def features(normalizer: Normalizer, obs, encoder_params=None) -> jax.Array:
        """Standardized flat state (with cameras, the camera encoders' features first)."""
        if obs_encoder is None or not obs_encoder.cameras:
            return normalizer.obs.normalize(flatten_obs(obs))
        return obs_encoder(encoder_params, normalizer, obs)

    def proposal(actor_params, feats: jax.Array) -> jax.Array:
        """The RL actor's action [B, A] in [-1, 1] from features [B, F]."""
        return actor.apply(
            actor_params, feats, jnp.zeros(feats.shape[:-1] + (action_dim,), feats.dtype)
        )

    def pick(critic_params, feats, base_action, rl_action, heads, key):
        """(chosen action [B, A], chosen P [B], took_rl [B]) under the heads' min."""
        subset = jax.tree.map(lambda p: p[heads], critic_params)
        p_b = critic.apply(subset, feats, base_action).min(axis=0)
        p_rl = critic.apply(subset, feats, rl_action).min(axis=0)
        took = choose(p_b, p_rl, config.rule, config.beta, key)
        chosen = jnp.where(took[..., None] > 0, rl_action, base_action)
        return chosen, jnp.where(took > 0, p_rl, p_b), took

    def td_target(
        target_actor_params,
        target_critic_params,
        normalizer: Normalizer,
        batch: Transition,
        key: jax.Array,
        noise_std,
        encoder_params=None,
    ) -> jax.Array:
        k_subset, k_noise, k_rule = jax.random.split(key, 3)
        if axis_name is not None:  # data-parallel shards: each its own soft choices
            k_rule = jax.random.fold_in(k_rule, shard_index(axis_name))
        next_feats = jax.lax.stop_gradient(features(normalizer, batch.next_obs, encoder_params))
        next_mean = proposal(target_actor_params, next_feats)
        noise = jnp.clip(
            noise_std * local_draw(jax.random.normal, k_noise, next_mean.shape, axis_name),
            -config.target_noise_clip,
            config.target_noise_clip,
        )
        next_rl = jnp.clip(next_mean + noise, -1.0, 1.0)
        heads = jax.random.choice(
            k_subset, config.num_critics, (config.num_min_critics,), replace=False
        )
        _, next_q, _ = pick(
            target_critic_params, next_feats, batch.next_base_action, next_rl, heads, k_rule
        )
        return jax.lax.stop_gradient(batch.reward + batch.discount * batch.nonterminal * next_q)

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
            critic_params, features(normalizer, batch.obs, encoder_params), batch.action
        )
        return jnp.mean(jnp.square(q - target[None])), {"q": q, "target": target}

    def actor_loss(
        actor_params,
        critic_params,
        normalizer: Normalizer,
        batch: Transition,
        weights: jax.Array | None = None,
        encoder_params=None,
    ):
        feats = jax.lax.stop_gradient(features(normalizer, batch.obs, encoder_params))
        a = proposal(actor_params, feats)
        q = critic.apply(jax.lax.stop_gradient(critic_params), feats, a)
        q_pi = q.mean() if weights is None else (q.mean(axis=0) * weights).sum() / weights.sum()
        # "residual": how far the RL proposal is from the base's action (the metric's meaning)
        return -q_pi, {"residual": a - batch.base_action, "q": q_pi}

    def gate(*_):
        raise NotImplementedError("IBRL has no value gate; it picks between two proposals.")

    return IBRLLosses(
        features,
        td_target,
        critic_loss,
        actor_loss,
        gate,
        keep=lambda r: r,  # IBRL's actor proposes whole actions: no correction entries
        proposal=proposal,
        pick=pick,
    )
