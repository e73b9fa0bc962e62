"""Residual PPO (the ResiP recipe, Ankile et al. 2024): config, state and pure functions.

    ppo = make_ppo(config, obs_spec, action_dim, num_iterations)
    state = ppo.init(key, normalizer)
    r, aux = ppo.act(state, obs, base_action, key)              # aux: sample, log_prob, value
    v = ppo.value(state, obs, base_action)                      # [B]
    state, metrics = ppo.update(state, rollout)                 # one PPO iteration's update

The residual is Gaussian, r = action_scale * u with u ~ N(mean(s, a_b), exp(log_std)^2), and
the executed action is clip(a_b + r, -1, 1) in the run's normalized action space; the mean is
exactly 0 at initialisation. ``update`` computes GAE on the rollout [T, E], then runs
``update_epochs`` passes of ``num_minibatches`` shuffled minibatches of the clipped
surrogate + value loss, and stops early once a minibatch's approximate KL to the rollout
policy exceeds ``target_kl`` (as ResiP does: the check follows each minibatch step).
Learning rates follow a cosine over ``num_iterations`` PPO iterations; the actor's is 0 for
the first ``actor_warmup_iterations`` (the value function trains alone first).

Everything is jittable and vmappable (seeds). ``act(..., deterministic=True)`` gives the
mean residual, so ``ResidualPolicy`` evaluates a PPO state like a ResFiT one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from resfit_jax.agents import checks
from resfit_jax.agents.residual_ppo.config import ResidualPPOConfig
from resfit_jax.agents.residual_ppo.losses import (
    PPOBatch,
    ResidualPPOLosses,
    gae,
    gaussian_log_prob,
    make_losses,
)
from resfit_jax.agents.residual_ppo.networks import ResidualPPONetworks, make_networks
from resfit_jax.normalization import Normalizer

PyTree = Any
# the bits of the update's ``nonfinite_mask`` (checks.raise_if_nonfinite(mask, ..., fields=))
FINITE_FIELDS = (
    "rollout.obs",
    "rollout.base_action",
    "rollout.reward",
    "rollout.value",
    "rollout.next_value",
    "pg_loss",
    "value_loss",
)


@struct.dataclass
class PPOState:
    """rng: a typed PRNG key; iteration: PPO iterations done (drives the lr schedule)."""

    actor_params: PyTree
    critic_params: PyTree
    actor_opt_state: PyTree
    critic_opt_state: PyTree
    normalizer: Normalizer
    rng: jax.Array
    iteration: jax.Array
    grad_steps: jax.Array


class Rollout(NamedTuple):
    """One rollout [T, E, ...] from ``act`` + ``residual_env_step``: learner obs, base action,
    Gaussian sample u, its log-prob and V(s) at collection, reward, V(s') of the true next
    observation (0 where it diverged), and the episode flags."""

    obs: PyTree
    base_action: jax.Array
    sample: jax.Array
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array
    next_value: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    done: jax.Array


def _optimizer(
    max_grad_norm: float, eps: float, weight_decay: float
) -> optax.GradientTransformation:
    adamw = optax.inject_hyperparams(optax.adamw)(
        learning_rate=0.0, b1=0.9, b2=0.999, eps=eps, weight_decay=weight_decay
    )
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), adamw)


def _with_lr(opt_state: PyTree, lr: jax.Array) -> PyTree:
    clip_state, adam_state = opt_state
    hp = dict(adam_state.hyperparams, learning_rate=jnp.asarray(lr, jnp.float32))
    return (clip_state, adam_state._replace(hyperparams=hp))


@dataclasses.dataclass(frozen=True)
class ResidualPPO:
    config: ResidualPPOConfig
    obs_spec: PyTree
    action_dim: int
    num_iterations: int
    networks: ResidualPPONetworks
    losses: ResidualPPOLosses
    tx: optax.GradientTransformation

    @property
    def obs_dim(self) -> int:
        return checks.obs_dim(self.obs_spec)

    def features(self, state: PPOState, obs: PyTree) -> jax.Array:
        return self.losses.features(state.normalizer, obs)

    def init(self, key: jax.Array, normalizer: Normalizer | None = None) -> PPOState:
        if normalizer is None:
            normalizer = Normalizer.identity(self.obs_dim, self.action_dim)
        checks.check_normalizer(normalizer, self.obs_dim, self.action_dim)
        k_actor, k_critic, k_state = jax.random.split(checks.typed_key(key), 3)
        feats = jnp.zeros((1, self.obs_dim), jnp.float32)
        act = jnp.zeros((1, self.action_dim), jnp.float32)
        actor_params = self.networks.actor.init(k_actor, feats, act)
        critic_params = self.networks.critic.init(k_critic, feats, act)
        return PPOState(
            actor_params=actor_params,
            critic_params=critic_params,
            actor_opt_state=self.tx.init(actor_params),
            critic_opt_state=self.tx.init(critic_params),
            normalizer=jax.tree.map(jnp.asarray, normalizer),
            rng=k_state,
            iteration=jnp.zeros((), jnp.int32),
            grad_steps=jnp.zeros((), jnp.int32),
        )

    # ------------------------------------------------------------------------------ act
    def act(
        self,
        state: PPOState,
        obs: PyTree,
        base_action: jax.Array,
        key: jax.Array,
        deterministic: bool = False,
        std: Any = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Residual for obs [*B, ...], base_action [*B, A] -> r [*B, A] (= scale * u).

        aux: action = clip(a_b + r, -1, 1) (to execute), residual_mean, sample u [*B, A],
        log_prob [*B] of u, value [*B]. A sample with a non-finite observation gets r = 0; a
        non-finite base action raises eagerly, and under jit gets r = 0 (aux["base_finite"]).
        ``std`` is accepted for the Learner protocol and ignored (the policy's own std).
        """
        del std
        batch_shape = tuple(jnp.shape(base_action)[:-1])
        checks.check_action(self.action_dim, base_action, batch_shape, "act: base_action")
        checks.check_obs(self.obs_spec, obs, batch_shape, "act")
        feats = self.features(state, obs)
        mean, log_std = self.networks.actor.apply(state.actor_params, feats, base_action)
        if deterministic:
            u = mean
        else:
            u = mean + jnp.exp(log_std) * jax.random.normal(checks.typed_key(key), mean.shape)
        finite = checks.finite_rows(obs, batch_shape)
        base_ok = checks.finite_base_rows(base_action, batch_shape, "act", check=False)
        u = jnp.where((finite & base_ok)[..., None], u, 0.0)
        r = self.config.action_scale * u
        aux = {
            "action": jnp.clip(base_action + r, -1.0, 1.0),
            "residual_mean": self.config.action_scale * mean,
            "sample": u,
            "log_prob": gaussian_log_prob(u, mean, log_std),
            "value": jnp.where(
                finite, self.networks.critic.apply(state.critic_params, feats, base_action), 0.0
            ),
            "obs_finite": finite,
            "base_finite": base_ok,
        }
        return r, aux

    def value(self, state: PPOState, obs: PyTree, base_action: jax.Array) -> jax.Array:
        """V [*B] of learner obs [*B, ...] with the base action there."""
        return self.networks.critic.apply(
            state.critic_params, self.features(state, obs), base_action
        )

    # --------------------------------------------------------------------------- update
    def learning_rates(self, iteration: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(actor lr, critic lr) of a PPO iteration (cosine to 0 over num_iterations)."""
        cfg = self.config
        frac = jnp.clip(iteration / max(self.num_iterations, 1), 0.0, 1.0)
        scale = 0.5 * (1.0 + jnp.cos(math.pi * frac)) if cfg.cosine_decay else 1.0
        actor = jnp.where(iteration < cfg.actor_warmup_iterations, 0.0, cfg.actor_lr * scale)
        return actor, cfg.critic_lr * scale

    def advantages(self, rollout: Rollout) -> tuple[jax.Array, jax.Array]:
        """GAE advantages and value targets [T, E] of a rollout."""
        cfg = self.config
        ends = rollout.terminated if cfg.bootstrap_truncation else rollout.done
        return gae(
            rollout.reward,
            rollout.value,
            rollout.next_value,
            1.0 - ends.astype(jnp.float32),
            rollout.done.astype(jnp.float32),
            cfg.gamma,
            cfg.gae_lambda,
        )

    def update(self, state: PPOState, rollout: Rollout) -> tuple[PPOState, dict[str, jax.Array]]:
        """GAE, then up to update_epochs x num_minibatches gradient steps with the KL stop.

        Metrics: the mean of each loss term over the steps taken, ``grad_steps`` (taken),
        ``stopped_early``, the final approx_kl and the explained variance of the values."""
        cfg = self.config
        adv, targets = self.advantages(rollout)
        t, e = rollout.reward.shape
        n = t * e
        flat = lambda x: x.reshape((n,) + x.shape[2:])
        data = PPOBatch(
            jax.tree.map(flat, rollout.obs),
            flat(rollout.base_action),
            flat(rollout.sample),
            flat(rollout.log_prob),
            flat(adv),
            flat(targets),
        )
        mb = n // cfg.num_minibatches
        max_steps = cfg.update_epochs * cfg.num_minibatches
        lr_actor, lr_critic = self.learning_rates(state.iteration)
        grad_fn = jax.value_and_grad(self.losses.loss, has_aux=True)
        rng, k_perm = jax.random.split(state.rng)
        zeros = {
            k: jnp.zeros(())
            for k in ("pg_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")
        }

        def step(carry):
            i, params, opt_states, stop, sums, last_kl = carry
            epoch, j = i // cfg.num_minibatches, i % cfg.num_minibatches
            perm = jax.random.permutation(jax.random.fold_in(k_perm, epoch), n)
            idx = jax.lax.dynamic_slice_in_dim(perm, j * mb, mb)
            batch = jax.tree.map(lambda x: x[idx], data)
            (_, aux), grads = grad_fn(params, state.normalizer, batch)
            new_params, new_opt = [], []
            for p, g, o, lr in zip(params, grads, opt_states, (lr_actor, lr_critic)):
                upd, o = self.tx.update(g, _with_lr(o, lr), p)
                new_params.append(optax.apply_updates(p, upd))
                new_opt.append(o)
            sums = jax.tree.map(lambda s, v: s + v, sums, aux)
            kl_stop = (cfg.target_kl is not None) & (aux["approx_kl"] > (cfg.target_kl or 0.0))
            return (i + 1, tuple(new_params), tuple(new_opt), kl_stop, sums, aux["approx_kl"])

        def more(carry):
            i, _, _, stop, _, _ = carry
            return (i < max_steps) & ~stop

        init = (
            jnp.zeros((), jnp.int32),
            (state.actor_params, state.critic_params),
            (state.actor_opt_state, state.critic_opt_state),
            jnp.zeros((), bool),
            zeros,
            jnp.zeros(()),
        )
        steps, params, opt_states, stopped, sums, last_kl = jax.lax.while_loop(more, step, init)
        var_r = jnp.var(targets)
        metrics = {k: v / jnp.maximum(steps, 1) for k, v in sums.items()}
        metrics |= {
            "grad_steps": steps,
            "stopped_early": stopped.astype(jnp.float32),
            "last_approx_kl": last_kl,
            "actor_lr": lr_actor,
            "critic_lr": lr_critic,
            "advantage_mean": adv.mean(),
            "value_mean": rollout.value.mean(),
            "explained_variance": jnp.where(
                var_r > 0, 1.0 - jnp.var(targets - rollout.value) / var_r, 0.0
            ),
            "log_std_mean": params[0]["params"]["log_std"].mean(),
            "nonfinite_mask": checks.nonfinite_bits(
                dict(
                    zip(
                        FINITE_FIELDS,
                        (
                            rollout.obs,
                            rollout.base_action,
                            rollout.reward,
                            rollout.value,
                            rollout.next_value,
                            sums["pg_loss"],
                            sums["value_loss"],
                        ),
                    )
                )
            ),
        }
        state = state.replace(
            actor_params=params[0],
            critic_params=params[1],
            actor_opt_state=opt_states[0],
            critic_opt_state=opt_states[1],
            rng=rng,
            iteration=state.iteration + 1,
            grad_steps=state.grad_steps + steps,
        )
        return state, metrics


def make_ppo(
    config: ResidualPPOConfig, obs_spec: PyTree, action_dim: int, num_iterations: int
) -> ResidualPPO:
    """Build residual PPO's pure functions. obs_spec: an int or a pytree of ShapeDtypeStruct
    (no batch axis); num_iterations: the run's PPO iterations (the lr schedule's length)."""
    action_dim = checks.learner_sizes(config, ResidualPPOConfig, action_dim, "make_ppo")
    networks = make_networks(config, int(action_dim))
    return ResidualPPO(
        config=config,
        obs_spec=checks.as_obs_spec(obs_spec),
        action_dim=int(action_dim),
        num_iterations=int(num_iterations),
        networks=networks,
        losses=make_losses(networks, config),
        tx=_optimizer(config.max_grad_norm, config.adam_eps, config.weight_decay),
    )
