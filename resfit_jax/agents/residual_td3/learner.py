"""Residual TD3 (ResFiT): config, learner state and pure init / act / update functions.

    learner = make_learner(config, obs_spec, action_dim)
    state = learner.init(key, normalizer)                          # normalizer: optional
    r, aux = learner.act(state, obs, base_action, key, deterministic=False)
    state, metrics = learner.update(state, online, offline)        # [UTD, B_on|B_off, ...]
    state, metrics = learner.critic_warmup(state, online, offline) # [N, B_on|B_off, ...]

All actions are in the normalized space of the state's ``Normalizer`` ([-1, 1]).
Observations are a pytree of float vectors (one per sample: [D_i]) and, for pixel tasks,
camera images (uint8 [H, W, C]; ``encoders``: per-camera encoders trained by the critic
loss, DrQ shifts in updates). State fields are flattened,
concatenated in tree order and standardized with ``state.normalizer`` inside the networks,
so replay stores raw observations and a checkpoint of the state carries the statistics its
params were trained under. Everything here is jittable and vmappable (e.g. over seeds:
``jax.vmap(learner.init)(keys)``); the learner carries its own RNG in ``LearnerState.rng``.

One ``update`` = UTD critic steps in ``lax.scan`` (each on its own batch row), then one delayed
actor step on the last row. The losses are in ``losses.py``; how batches are sampled (UTD,
batch size, demo fraction, n-step returns) is the replay's business (``replay.ReplayConfig``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from resfit_jax.agents import checks
from resfit_jax.agents.gradients import gradient_update, make_optimizer
from resfit_jax.agents.residual_td3.config import ResidualTD3Config
from resfit_jax.agents.residual_td3.losses import ResidualTD3Losses, make_losses, residual_mask
from resfit_jax.agents.residual_td3.metrics import actor_metrics, critic_metrics
from resfit_jax.agents.residual_td3.networks import ResidualTD3Networks, make_networks
from resfit_jax.agents.residual_td3.state import LearnerState
from resfit_jax.encoders import ObservationEncoder, state_dim
from resfit_jax.normalization import Normalizer, StateStandardizer
from resfit_jax.replay import Transition
from resfit_jax.sharding import mean_grads, shard_index

PyTree = Any


@dataclasses.dataclass(frozen=True)
class ResidualTD3:
    """Pure functions of the residual TD3 learner, closed over its config (build with
    ``make_learner``). Implements ``resfit_jax.learner.Learner``."""

    config: ResidualTD3Config
    obs_spec: PyTree
    action_dim: int
    networks: ResidualTD3Networks
    losses: ResidualTD3Losses
    actor_tx: optax.GradientTransformation
    critic_tx: optax.GradientTransformation
    default_normalizer: Normalizer | None = None
    obs_encoder: ObservationEncoder | None = None
    axis_name: Any = None  # data-parallel shards: gradients averaged over them (sharding)
    env_action_dim: int | None = None  # the env's action size, what the run's normalizer
    # scales, where a decision is larger than one action (offset + slope windows: 2A)

    @property
    def obs_dim(self) -> int:
        """Size of the flattened state fields (what the normalizer standardizes)."""
        return state_dim(self.obs_spec)

    @property
    def pixels(self) -> bool:
        return self.obs_encoder is not None and self.obs_encoder.cameras > 0

    @property
    def actor(self):
        return self.networks.actor

    @property
    def critic(self):
        return self.networks.critic

    def features(self, state: LearnerState, obs: PyTree) -> jax.Array:
        """Observation pytree [*batch, ...] -> features [*batch, F] (standardized flat state;
        with cameras, the camera encoders' features first)."""
        return self.losses.features(state.normalizer, obs, state.encoder_params)

    # ------------------------------------------------------------------------------- init
    def init(self, key: jax.Array, normalizer: Normalizer | None = None) -> LearnerState:
        """Fresh learner state. key: a PRNG key (typed or raw uint32 [2]); normalizer: the
        run's statistics (default: identity, i.e. actions already in [-1, 1])."""
        if normalizer is None:
            normalizer = self.default_normalizer or Normalizer.identity(
                self.obs_dim, self.env_action_dim or self.action_dim
            )
        checks.check_normalizer(normalizer, self.obs_dim, self.env_action_dim or self.action_dim)
        key = checks.typed_key(key)
        k_actor, k_critic, k_state = jax.random.split(key, 3)
        feats = jnp.zeros((1, self.obs_dim), jnp.float32)
        act = jnp.zeros((1, self.action_dim), jnp.float32)
        encoder = {}
        if self.pixels:  # a key of its own: state learners unchanged
            encoder = self.obs_encoder.init(jax.random.fold_in(k_critic, 1))
            feats = jnp.zeros((1, self.obs_encoder.feature_dim), jnp.float32)
        actor_params = self.actor.init(k_actor, feats, act)
        critic_params = self.critic.init(k_critic, feats, act, act)
        return LearnerState(
            encoder_params=encoder,
            encoder_opt_state=self.critic_tx.init(encoder) if self.pixels else {},
            actor_params=actor_params,
            critic_params=critic_params,
            # copies, so the state has no aliased buffers and can be donated to a jitted update
            target_actor_params=jax.tree.map(jnp.copy, actor_params),
            target_critic_params=jax.tree.map(jnp.copy, critic_params),
            actor_opt_state=self.actor_tx.init(actor_params),
            critic_opt_state=self.critic_tx.init(critic_params),
            normalizer=jax.tree.map(jnp.asarray, normalizer),
            rng=k_state,
            critic_steps=jnp.zeros((), jnp.int32),
            actor_steps=jnp.zeros((), jnp.int32),
        )

    # -------------------------------------------------------------------------------- act
    def act(
        self,
        state: LearnerState,
        obs: PyTree,
        base_action: jax.Array,
        key: jax.Array,
        deterministic: bool = False,
        std: float | jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Residual for a batch: obs [*B, ...], base_action [*B, A] -> r [*B, A].

        Exploration adds N(0, std) (default config.exploration_std) to the mean and clamps the
        residual to [-1, 1]. aux["action"] = clip(base_action + r, -1, 1), the action to
        execute (normalized); aux["residual_mean"] is the deterministic residual. With the
        value gate, r is the gated residual g * r and aux["gate"] [*B] holds g.
        A sample whose observation holds NaN or inf gets residual 0 (the base acts alone)
        and aux["obs_finite"] [*B] False marks it. A non-finite base action raises
        (``checks.finite_base_rows``); unchecked, its row gets residual 0 and
        aux["base_finite"] [*B] False.
        """
        batch_shape = tuple(jnp.shape(base_action)[:-1])
        checks.check_action(self.action_dim, base_action, batch_shape, "act: base_action")
        checks.check_obs(self.obs_spec, obs, batch_shape, "act")
        mean = self.actor.apply(state.actor_params, self.features(state, obs), base_action)
        if deterministic:
            r = mean
        else:
            sigma = self.config.exploration_std if std is None else std
            r = jnp.clip(
                mean + sigma * jax.random.normal(checks.typed_key(key), mean.shape), -1.0, 1.0
            )
        mean, r = self.losses.keep(mean), self.losses.keep(r)  # residual_dims only
        aux = {"residual_mean": mean}
        if self.config.gate_tau > float("-inf"):
            cfg = self.config
            heads = (
                jnp.arange(cfg.num_min_critics)
                if key is None
                else jax.random.choice(
                    jax.random.fold_in(checks.typed_key(key), 1),
                    cfg.num_critics,
                    (cfg.num_min_critics,),
                    replace=False,
                )
            )
            flat = lambda x: x.reshape((-1,) + x.shape[len(batch_shape) :])
            g = self.losses.gate(
                state.critic_params,
                flat(self.features(state, obs)),
                flat(base_action),
                flat(r),
                heads,
            ).reshape(batch_shape)
            r = g[..., None] * r
            aux["gate"] = g
        if self.config.residual_mask:  # hold mode: the residual acts where the flag is 1
            m = residual_mask(obs)
            r, aux["residual_mean"] = r * m, mean * m
        finite = checks.finite_rows(obs, batch_shape)
        base_ok = checks.finite_base_rows(base_action, batch_shape, "act", self.config.check_finite)
        r = jnp.where((finite & base_ok)[..., None], r, 0.0)
        aux["obs_finite"], aux["base_finite"] = finite, base_ok
        aux["action"] = jnp.clip(base_action + r, -1.0, 1.0)
        return r, aux

    def keep_residual(self, r: jax.Array) -> jax.Array:
        """r [*B, A] with the entries outside ``config.residual_dims`` set to 0 (the loop's
        warm-up noise goes through it)."""
        return self.losses.keep(r)

    def q_values(self, state: LearnerState, obs: PyTree, action: jax.Array, base_action=None):
        """All online heads [K, B]: obs [B, ...], action [B, A] (combined, normalized; the
        base action [B, A] too with ``advantage_head``)."""
        feats = self.features(state, obs)
        return self.critic.apply(state.critic_params, feats, action, base_action)

    def td_target(
        self, state: LearnerState, batch: Transition, key: jax.Array, noise_std: float | jax.Array
    ) -> jax.Array:
        """y [B] for a batch [B, ...] (see ``losses``)."""
        return self.losses.td_target(
            state.target_actor_params,
            state.target_critic_params,
            state.normalizer,
            batch,
            key,
            noise_std,
            state.encoder_params,
        )

    # ----------------------------------------------------------------------------- update
    def _critic_step(
        self, state: LearnerState, batch: Transition, key: jax.Array, noise_std: float
    ) -> tuple[LearnerState, dict[str, jax.Array]]:
        args = (
            state.target_actor_params,
            state.target_critic_params,
            state.normalizer,
            batch,
            key,
            noise_std,
        )
        if self.pixels:
            state, loss, aux, grads = self._critic_and_encoder_step(state, args)
            params, opt_state = state.critic_params, state.critic_opt_state
        else:
            step = gradient_update(self.losses.critic_loss, self.critic_tx, self.axis_name)
            params, opt_state, loss, aux, grads = step(
                state.critic_params, state.critic_opt_state, *args
            )
        state = state.replace(
            critic_params=params,
            critic_opt_state=opt_state,
            target_critic_params=optax.incremental_update(
                params, state.target_critic_params, self.config.tau
            ),
            critic_steps=state.critic_steps + 1,
        )
        return state, critic_metrics(loss, aux, grads)

    def _critic_and_encoder_step(self, state: LearnerState, args: tuple):
        """One critic step that also trains the camera encoders (their own AdamW state and
        gradient clip, the critic's learning rate). Returns (state, loss, aux, grads)."""
        loss_fn = lambda cp, ep: self.losses.critic_loss(cp, *args, ep)
        (loss, aux), (g_c, g_e) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
            state.critic_params, state.encoder_params
        )
        g_c, g_e = mean_grads((g_c, g_e), self.axis_name)
        up_c, opt_c = self.critic_tx.update(g_c, state.critic_opt_state, state.critic_params)
        up_e, opt_e = self.critic_tx.update(g_e, state.encoder_opt_state, state.encoder_params)
        state = state.replace(
            critic_params=optax.apply_updates(state.critic_params, up_c),
            critic_opt_state=opt_c,
            encoder_opt_state=opt_e,
            encoder_params=optax.apply_updates(state.encoder_params, up_e),
        )
        return state, loss, aux, g_c

    def _augment(self, batch: Transition, key: jax.Array) -> Transition:
        """DrQ random shift of the camera fields of obs and next obs (independent shifts; each
        data-parallel shard draws its own)."""
        if self.axis_name is not None:
            key = jax.random.fold_in(key, shard_index(self.axis_name))
        k_obs, k_next = jax.random.split(key)
        pad = self.config.augment_pad
        return batch.replace(
            obs=self.obs_encoder.augment(k_obs, batch.obs, pad),
            next_obs=self.obs_encoder.augment(k_next, batch.next_obs, pad),
        )

    def _actor_step(
        self, state: LearnerState, batch: Transition, weights: jax.Array | None = None
    ) -> tuple[LearnerState, dict[str, jax.Array]]:
        step = gradient_update(self.losses.actor_loss, self.actor_tx, self.axis_name)
        params, opt_state, loss, aux, grads = step(
            state.actor_params,
            state.actor_opt_state,
            state.critic_params,
            state.normalizer,
            batch,
            weights,
            state.encoder_params,
        )
        state = state.replace(
            actor_params=params,
            actor_opt_state=opt_state,
            target_actor_params=optax.incremental_update(
                params, state.target_actor_params, self.config.tau
            ),
            actor_steps=state.actor_steps + 1,
        )
        return state, actor_metrics(loss, aux, grads)

    def _join(self, online: Transition, offline: Transition | None, where: str) -> Transition:
        return checks.join_batches(self.obs_spec, self.action_dim, online, offline, where)

    def _finite(self, batch: Transition, losses: dict[str, jax.Array], where: str) -> jax.Array:
        """The update's ``nonfinite_mask`` metric; raises in the update if check_finite."""
        mask = checks.nonfinite_mask(batch, losses)
        if self.config.check_finite:
            checks.check_finite(mask, where, "learner.check_finite")
        return mask

    def update(
        self, state: LearnerState, online: Transition, offline: Transition | None
    ) -> tuple[LearnerState, dict[str, jax.Array]]:
        """UTD critic steps (lax.scan, one batch row each) then one actor step on the last row.

        online: Transition [UTD, B_on, ...]; offline: [UTD, B_off, ...] or None (no demos).
        Metrics are averaged over the critic steps.
        """
        batch = self._join(online, offline, "update")
        num_steps = batch.reward.shape[0]
        rng, k_scan = jax.random.split(state.rng)
        if self.pixels:
            rng, k_aug = jax.random.split(rng)
            batch = self._augment(batch, k_aug)
        noise_std = self.config.exploration_std if self.config.target_noise else 0.0
        step = lambda s, xs: self._critic_step(s, xs[0], xs[1], noise_std)
        state, cm = jax.lax.scan(step, state, (batch, jax.random.split(k_scan, num_steps)))
        last = jax.tree.map(lambda x: x[-1], batch)
        weights = None
        if offline is not None and self.config.actor_demo_weight != 1.0:
            n_on, n_off = online.reward.shape[1], offline.reward.shape[1]
            weights = jnp.concatenate(
                [jnp.ones((n_on,)), jnp.full((n_off,), self.config.actor_demo_weight)]
            )
        state, am = self._actor_step(state, last, weights)
        metrics = {k: v.mean() for k, v in cm.items()} | am
        metrics["nonfinite_mask"] = self._finite(
            batch,
            {"critic_loss": cm["critic_loss"], "actor_loss": am["actor_loss"]},
            "ResidualTD3.update",
        )
        return state.replace(rng=rng), metrics

    def critic_warmup(
        self, state: LearnerState, online: Transition, offline: Transition | None
    ) -> tuple[LearnerState, dict[str, jax.Array]]:
        """Critic-only steps, one per leading row of [N, B_on|B_off, ...]; no target noise."""
        batch = self._join(online, offline, "critic_warmup")
        rng, k_scan = jax.random.split(state.rng)
        if self.pixels:
            rng, k_aug = jax.random.split(rng)
            batch = self._augment(batch, k_aug)
        step = lambda s, xs: self._critic_step(s, xs[0], xs[1], 0.0)
        state, cm = jax.lax.scan(
            step, state, (batch, jax.random.split(k_scan, batch.reward.shape[0]))
        )
        metrics = {k: v.mean() for k, v in cm.items()}
        metrics["nonfinite_mask"] = self._finite(
            batch, {"critic_loss": cm["critic_loss"]}, "ResidualTD3.critic_warmup"
        )
        return state.replace(rng=rng), metrics


def make_learner(
    config: ResidualTD3Config,
    obs_spec: PyTree,
    action_dim: int,
    obs_normalizer: StateStandardizer | None = None,
    axis_name: Any = None,
    env_action_dim: int | None = None,
) -> ResidualTD3:
    """Build the learner's pure functions.

    obs_spec: observation dimension (int) or a pytree of ShapeDtypeStruct of float vectors
    (no batch axis). action_dim: size of the (normalized) action. The normalization is part
    of the state: pass a ``Normalizer`` to ``init``. ``obs_normalizer`` is deprecated (it
    becomes the default observation statistics of ``init``). ``axis_name``: the named axes
    of data-parallel shards (``sharding.GRAD_AXES``); updates then average gradients over
    them and must run inside shard_map / a named vmap. ``env_action_dim``: the env's action
    size where one decision holds more entries than an action (the run's normalizer scales
    the env's actions; default ``action_dim``).
    """
    action_dim = checks.learner_sizes(config, ResidualTD3Config, action_dim, "make_learner")
    if env_action_dim is not None:
        env_action_dim = checks.learner_sizes(
            config, ResidualTD3Config, env_action_dim, "make_learner (env_action_dim)"
        )
    spec = checks.as_obs_spec(obs_spec, pixels=True)
    default = checks.deprecated_obs_normalizer(obs_normalizer, spec, env_action_dim or action_dim)
    networks = make_networks(config, int(action_dim))
    obs_encoder = ObservationEncoder(spec, config.encoder, config.camera_feature_dim)
    return ResidualTD3(
        config=config,
        obs_spec=spec,
        action_dim=int(action_dim),
        networks=networks,
        losses=make_losses(networks, config, obs_encoder, axis_name, env_action_dim),
        obs_encoder=obs_encoder,
        actor_tx=make_optimizer(config.actor_lr, config.weight_decay, config.max_grad_norm),
        critic_tx=make_optimizer(config.critic_lr, config.weight_decay, config.max_grad_norm),
        default_normalizer=default,
        axis_name=axis_name,
        env_action_dim=env_action_dim,
    )
