"""IBRL (imitation bootstrapped RL): config and learner, on residual TD3's machinery.

    learner = make_ibrl(IBRLConfig(...), obs_spec, action_dim)
    r, aux = learner.act(state, obs, base_action, key)     # aux["action"]: the chosen action

The base's action a_b and the RL actor's own action a_rl compete (``losses.choose``); the
executed action is the winner, so the loops' ``clip(a_b + r)`` with r = winner - a_b runs it
unchanged. aux["gate"] [*B] is 1 where the RL proposal was taken (logged as ``gate_open``).
State, update, critic warm-up and checkpoints are residual TD3's (same ``LearnerState``).
Recipe: TD3 actor loss without a BC term, lr 1e-4, tau 0.01,
exploration std 0.1, 5 heads with min over 2, soft selection with beta 10 on state tasks.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from resfit_jax.agents import checks
from resfit_jax.agents.gradients import make_optimizer
from resfit_jax.agents.ibrl.config import IBRLConfig
from resfit_jax.agents.ibrl.losses import make_ibrl_losses
from resfit_jax.agents.residual_td3.learner import LearnerState, ResidualTD3
from resfit_jax.agents.residual_td3.networks import make_networks
from resfit_jax.encoders import ObservationEncoder


@dataclasses.dataclass(frozen=True)
class IBRL(ResidualTD3):
    """Residual TD3 with IBRL's act and losses (build with ``make_ibrl``)."""

    def act(
        self,
        state: LearnerState,
        obs,
        base_action: jax.Array,
        key: jax.Array,
        deterministic: bool = False,
        std: float | jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """obs [*B, ...], base_action [*B, A] -> r [*B, A] = chosen - base_action.

        The actor's proposal gets N(0, std) exploration (default config.exploration_std)
        unless ``deterministic``; the target critic's min over ``num_min_critics`` heads
        (drawn from ``key``) picks with ``config.rule`` (greedy when deterministic). A
        sample with a non-finite observation runs the base action (r = 0)."""
        cfg = self.config
        batch_shape = tuple(jnp.shape(base_action)[:-1])
        checks.check_action(self.action_dim, base_action, batch_shape, "act: base_action")
        checks.check_obs(self.obs_spec, obs, batch_shape, "act")
        flat = lambda x: x.reshape((-1,) + x.shape[len(batch_shape) :])
        feats = flat(self.features(state, obs))
        a_b = flat(base_action)
        mean = self.losses.proposal(state.actor_params, feats)
        k_noise, k_heads, k_rule = jax.random.split(checks.typed_key(key), 3)
        if deterministic:
            a_rl = mean
        else:
            sigma = (
                cfg.exploration_std
                if std is None
                else flat(jnp.broadcast_to(jnp.asarray(std, mean.dtype), batch_shape + (1,)))
            )
            a_rl = jnp.clip(mean + sigma * jax.random.normal(k_noise, mean.shape), -1.0, 1.0)
        heads = jax.random.choice(k_heads, cfg.num_critics, (cfg.num_min_critics,), replace=False)
        chosen, _, took = self.losses.pick(
            state.target_critic_params, feats, a_b, a_rl, heads, None if deterministic else k_rule
        )
        unflat = lambda x: x.reshape(batch_shape + x.shape[1:])
        chosen, took, mean = unflat(chosen), unflat(took), unflat(mean)
        finite = checks.finite_rows(obs, batch_shape)
        base_ok = checks.finite_base_rows(base_action, batch_shape, "act", cfg.check_finite)
        action = jnp.where((finite & base_ok)[..., None], chosen, base_action)
        return action - base_action, {
            "action": action,
            "residual_mean": mean - base_action,
            "rl_action": mean,
            "gate": took * finite * base_ok,
            "obs_finite": finite,
            "base_finite": base_ok,
        }


def make_ibrl(config: IBRLConfig, obs_spec, action_dim: int, axis_name=None) -> IBRL:
    """Build IBRL's pure functions (obs_spec and axis_name as for ``make_learner``)."""
    action_dim = checks.learner_sizes(config, IBRLConfig, action_dim, "make_ibrl")
    networks = make_networks(config, int(action_dim))
    spec = checks.as_obs_spec(obs_spec, pixels=True)
    obs_encoder = ObservationEncoder(spec, config.encoder, config.camera_feature_dim)
    return IBRL(
        config=config,
        obs_spec=spec,
        action_dim=int(action_dim),
        networks=networks,
        losses=make_ibrl_losses(networks, config, int(action_dim), obs_encoder, axis_name),
        obs_encoder=obs_encoder,
        axis_name=axis_name,
        actor_tx=make_optimizer(config.actor_lr, config.weight_decay, config.max_grad_norm),
        critic_tx=make_optimizer(config.critic_lr, config.weight_decay, config.max_grad_norm),
    )
