"""Residual TD3 (ResFiT): config, learner state and pure init / act / update functions.

    learner = make_learner(config, obs_spec, action_dim, obs_normalizer=None)
    state = learner.init(key)
    r, aux = learner.act(state, obs, base_action, key, deterministic=False)
    state, metrics = learner.update(state, online, offline)        # [UTD, B_on|B_off, ...]
    state, metrics = learner.critic_warmup(state, online, offline) # [N, B_on|B_off, ...]

All actions are in the normalized space of ``normalization.ActionScaler`` ([-1, 1]).
Observations are a pytree of float vectors (one per sample: [D_i]); they are flattened,
concatenated in tree order and standardized with ``obs_normalizer`` inside the networks, so
replay stores raw observations. Everything here is jittable and vmappable (e.g. over seeds:
``jax.vmap(learner.init)(keys)``); the learner carries its own RNG in ``LearnerState.rng``.

One ``update`` = UTD critic steps in ``lax.scan`` (each on its own batch row), then one delayed
actor step on the last row. TD target (per transition):
    y = R + discount * nonterminal * min_{j in S} Q'_j(s', clip(a_b' + r~', -1, 1)),
    r~' = clip(mu'(s', a_b') + clip(N(0, sigma), -c, c), -1, 1),
S a random subset of ``num_min_critics`` target heads drawn per critic step. The actor
maximises the mean over all K online heads of Q(s, clip(a_b + mu(s, a_b), -1, 1)), minus
``residual_penalty * mean((mu / action_scale)^2)`` when that option is on (default 0).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from resfit_jax.networks import EnsembleCritic, ResidualActor
from resfit_jax.normalization import StateStandardizer
from resfit_jax.replay import Transition

PyTree = Any
CRITIC_LOSSES = ("mse", "release")


@dataclasses.dataclass(frozen=True)
class ResidualTD3Config:
    """Learner hyperparameters. Defaults are the paper's (single-arm tasks).

    ``critic_loss``: "mse" = mean over heads of each head's MSE to the shared target
    (standard); "release" = the reference code's mean_b((mean_k |Q_k - y|)^2).
    ``bootstrap_truncation``: True bootstraps through time-limit truncation (correct);
    False treats it as terminal, like the reference release. Used by the n-step writer.
    """

    # networks
    actor_hidden_dims: tuple[int, ...] = (1024, 1024)
    critic_hidden_dims: tuple[int, ...] = (1024, 1024)
    num_critics: int = 10
    num_min_critics: int = 2
    layer_norm: bool = True
    action_scale: float = 0.1
    # actor loss += residual_penalty * mean((r / action_scale)^2): holds the residual at 0
    # where the critic's action gradient is weak (0 = the paper's objective)
    residual_penalty: float = 0.0
    # optimisation (AdamW, global-norm clip per module group)
    actor_lr: float = 1e-6
    critic_lr: float = 1e-4
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    tau: float = 0.005
    # exploration and target-policy smoothing (normalized action units)
    exploration_std: float = 0.05
    target_noise: bool = True
    target_noise_clip: float = 0.3
    # returns
    gamma: float = 0.99
    n_step: int = 3
    bootstrap_truncation: bool = True
    critic_loss: str = "mse"
    # batches: each critic step sees batch_size samples, offline_fraction of them demos
    utd: int = 4
    batch_size: int = 256
    offline_fraction: float = 0.5
    # raise a clear error when a batch or a loss is not finite
    check_finite: bool = True

    def __post_init__(self):
        errors = []
        if self.num_critics < 1:
            errors.append(f"num_critics must be >= 1 (got {self.num_critics})")
        if not 1 <= self.num_min_critics <= self.num_critics:
            errors.append(f"num_min_critics must be in [1, num_critics={self.num_critics}] "
                          f"(got {self.num_min_critics})")
        if self.critic_loss not in CRITIC_LOSSES:
            errors.append(f"critic_loss must be one of {CRITIC_LOSSES} (got {self.critic_loss!r})")
        if self.utd < 1:
            errors.append(f"utd must be >= 1 (got {self.utd})")
        if not 0.0 <= self.offline_fraction < 1.0:
            errors.append(f"offline_fraction must be in [0, 1) (got {self.offline_fraction})")
        if not 0.0 < self.action_scale <= 1.0:
            errors.append(f"action_scale must be in (0, 1] (got {self.action_scale})")
        if self.residual_penalty < 0.0:
            errors.append(f"residual_penalty must be >= 0 (got {self.residual_penalty})")
        if not 0.0 <= self.tau <= 1.0:
            errors.append(f"tau must be in [0, 1] (got {self.tau})")
        if self.batch_size < 2:
            errors.append(f"batch_size must be >= 2 (got {self.batch_size})")
        if errors:
            raise ValueError("ResidualTD3Config: " + "; ".join(errors) + ".")

    @property
    def offline_batch_size(self) -> int:
        return int(round(self.batch_size * self.offline_fraction))

    @property
    def online_batch_size(self) -> int:
        return self.batch_size - self.offline_batch_size

    @classmethod
    def paper(cls, **overrides) -> "ResidualTD3Config":
        """Paper scale: 2x1024 actor and critic, K=10 heads, batch 256 (128 + 128), UTD 4."""
        return cls(**overrides)

    @classmethod
    def cpu(cls, **overrides) -> "ResidualTD3Config":
        """CPU scale for a 2-core laptop: 2x256 networks, K=10 heads, batch 256, UTD 4.

        The actor lr is raised to 1e-4 because CPU runs use ~100x fewer env steps than the
        paper; the residual stays bounded by action_scale, and the critic warm-up still
        anchors Q before the actor moves. All other settings are the paper's.
        """
        base = dict(actor_hidden_dims=(256, 256), critic_hidden_dims=(256, 256), actor_lr=1e-4)
        base.update(overrides)
        return cls(**base)


PRESETS: dict[str, Callable[..., ResidualTD3Config]] = {
    "paper": ResidualTD3Config.paper,
    "cpu": ResidualTD3Config.cpu,
}


@struct.dataclass
class LearnerState:
    """Everything the learner owns. rng is a raw uint32 key [2] (legacy format, orbax-friendly)."""

    actor_params: PyTree
    critic_params: PyTree
    target_actor_params: PyTree
    target_critic_params: PyTree
    actor_opt_state: PyTree
    critic_opt_state: PyTree
    rng: jax.Array
    critic_steps: jax.Array
    actor_steps: jax.Array


def _raw_key(key: jax.Array) -> jax.Array:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return key


def _as_obs_spec(obs_spec: PyTree) -> PyTree:
    """int D -> one flat vector; otherwise a pytree whose leaves have .shape/.dtype."""
    if isinstance(obs_spec, (int, np.integer)):
        return jax.ShapeDtypeStruct((int(obs_spec),), jnp.float32)
    leaves = jax.tree.leaves(obs_spec)
    if not leaves:
        raise ValueError("obs_spec is empty: give the observation dimension (int) or a pytree "
                         "of jax.ShapeDtypeStruct, one per observation field (no batch axis).")
    spec = jax.tree.map(lambda s: jax.ShapeDtypeStruct(tuple(s.shape), s.dtype), obs_spec)
    for path, s in jax.tree_util.tree_leaves_with_path(spec):
        name = jax.tree_util.keystr(path) or "obs"
        if len(s.shape) != 1 or not jnp.issubdtype(s.dtype, jnp.floating):
            raise ValueError(
                f"obs_spec{name}: the state learner takes float vectors [D]; got shape {s.shape} "
                f"dtype {s.dtype}. Flatten the field, or use an image encoder for pixel fields.")
    return spec


@dataclasses.dataclass(frozen=True)
class ResidualTD3:
    """Pure functions of the residual TD3 learner, closed over its config (build with make_learner)."""

    config: ResidualTD3Config
    obs_spec: PyTree
    action_dim: int
    obs_normalizer: StateStandardizer
    actor: nn.Module
    critic: nn.Module
    actor_tx: optax.GradientTransformation
    critic_tx: optax.GradientTransformation

    # ------------------------------------------------------------------ shapes and features
    @property
    def obs_dim(self) -> int:
        return int(sum(s.shape[0] for s in jax.tree.leaves(self.obs_spec)))

    def _check_obs(self, obs: PyTree, batch_shape: tuple[int, ...], where: str) -> None:
        try:
            pairs = jax.tree.map(lambda s, x: (s, x), self.obs_spec, obs)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: observation structure does not match obs_spec "
                             f"{jax.tree.structure(self.obs_spec)} ({e}).") from None
        for path, (s, x) in jax.tree_util.tree_leaves_with_path(
                pairs, is_leaf=lambda p: isinstance(p, tuple) and len(p) == 2
                and isinstance(p[0], jax.ShapeDtypeStruct)):
            want = tuple(batch_shape) + tuple(s.shape)
            if tuple(jnp.shape(x)) != want:
                raise ValueError(f"{where}: observation{jax.tree_util.keystr(path)} has shape "
                                 f"{tuple(jnp.shape(x))}, expected {want} (batch {tuple(batch_shape)} "
                                 f"+ obs_spec {tuple(s.shape)}).")

    def _check_action(self, a: jax.Array, batch_shape: tuple[int, ...], where: str) -> None:
        want = tuple(batch_shape) + (self.action_dim,)
        if tuple(jnp.shape(a)) != want:
            hint = ""
            if jnp.ndim(a) >= 1 and jnp.shape(a)[-1] != self.action_dim:
                hint = (f" The action size {jnp.shape(a)[-1]} does not match the learner's "
                        f"action_dim {self.action_dim}: the base policy and the task must agree.")
            raise ValueError(f"{where} has shape {tuple(jnp.shape(a))}, expected {want}.{hint}")

    def features(self, obs: PyTree) -> jax.Array:
        """Observation pytree [*batch, ...] -> standardized flat features [*batch, D]."""
        leaves = jax.tree.leaves(obs)
        spec_leaves = jax.tree.leaves(self.obs_spec)
        flat = [x.reshape(x.shape[: x.ndim - 1] + (-1,)).astype(jnp.float32)
                for x, s in zip(leaves, spec_leaves)]
        x = flat[0] if len(flat) == 1 else jnp.concatenate(flat, axis=-1)
        return self.obs_normalizer.normalize(x)

    # ------------------------------------------------------------------------------- init
    def init(self, key: jax.Array) -> LearnerState:
        """Fresh learner state. key: a PRNG key (typed or raw uint32 [2])."""
        key = _raw_key(key)
        k_actor, k_critic, k_state = jax.random.split(key, 3)
        feats = jnp.zeros((1, self.obs_dim), jnp.float32)
        act = jnp.zeros((1, self.action_dim), jnp.float32)
        actor_params = self.actor.init(k_actor, feats, act)
        critic_params = self.critic.init(k_critic, feats, act)
        return LearnerState(
            actor_params=actor_params,
            critic_params=critic_params,
            # copies, so the state has no aliased buffers and can be donated to a jitted update
            target_actor_params=jax.tree.map(jnp.copy, actor_params),
            target_critic_params=jax.tree.map(jnp.copy, critic_params),
            actor_opt_state=self.actor_tx.init(actor_params),
            critic_opt_state=self.critic_tx.init(critic_params),
            rng=k_state,
            critic_steps=jnp.zeros((), jnp.int32),
            actor_steps=jnp.zeros((), jnp.int32),
        )

    # -------------------------------------------------------------------------------- act
    def act(self, state: LearnerState, obs: PyTree, base_action: jax.Array, key: jax.Array,
            deterministic: bool = False, std: float | jax.Array | None = None
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Residual for a batch: obs [*B, ...], base_action [*B, A] -> r [*B, A].

        Exploration adds N(0, std) (default config.exploration_std) to the mean and clamps the
        residual to [-1, 1]. aux["action"] = clip(base_action + r, -1, 1), the action to
        execute (normalized); aux["residual_mean"] is the deterministic residual.
        """
        batch_shape = tuple(jnp.shape(base_action)[:-1])
        self._check_action(base_action, batch_shape, "act: base_action")
        self._check_obs(obs, batch_shape, "act")
        mean = self.actor.apply(state.actor_params, self.features(obs), base_action)
        if deterministic:
            r = mean
        else:
            sigma = self.config.exploration_std if std is None else std
            r = jnp.clip(mean + sigma * jax.random.normal(_raw_key(key), mean.shape), -1.0, 1.0)
        return r, {"residual_mean": mean, "action": jnp.clip(base_action + r, -1.0, 1.0)}

    def q_values(self, state: LearnerState, obs: PyTree, action: jax.Array) -> jax.Array:
        """All online heads: obs [B, ...], action [B, A] (combined, normalized) -> [K, B]."""
        return self.critic.apply(state.critic_params, self.features(obs), action)

    # ----------------------------------------------------------------------------- update
    def td_target(self, state: LearnerState, batch: Transition, key: jax.Array,
                  noise_std: float | jax.Array) -> jax.Array:
        """y [B] = R + discount * nonterminal * min over a random head subset of target Q at
        (s', clip(a_b' + clip(mu'(s', a_b') + clip(N(0, noise_std), +-c), -1, 1), -1, 1))."""
        cfg = self.config
        k_subset, k_noise = jax.random.split(key)
        next_feats = self.features(batch.next_obs)
        next_mean = self.actor.apply(state.target_actor_params, next_feats, batch.next_base_action)
        noise = jnp.clip(noise_std * jax.random.normal(k_noise, next_mean.shape),
                         -cfg.target_noise_clip, cfg.target_noise_clip)
        next_r = jnp.clip(next_mean + noise, -1.0, 1.0)
        next_action = jnp.clip(batch.next_base_action + next_r, -1.0, 1.0)
        heads = jax.random.choice(k_subset, cfg.num_critics, (cfg.num_min_critics,), replace=False)
        subset = jax.tree.map(lambda p: p[heads], state.target_critic_params)
        next_q = self.critic.apply(subset, next_feats, next_action).min(axis=0)
        return jax.lax.stop_gradient(batch.reward + batch.discount * batch.nonterminal * next_q)

    def _critic_step(self, state: LearnerState, batch: Transition, key: jax.Array,
                     noise_std: float) -> tuple[LearnerState, dict[str, jax.Array]]:
        cfg = self.config
        feats = self.features(batch.obs)
        target = self.td_target(state, batch, key, noise_std)

        def loss_fn(params):
            q = self.critic.apply(params, feats, batch.action)                    # [K, B]
            if cfg.critic_loss == "mse":
                loss = jnp.mean(jnp.square(q - target[None]))
            else:
                loss = jnp.mean(jnp.square(jnp.mean(jnp.abs(q - target[None]), axis=0)))
            return loss, q

        (loss, q), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.critic_params)
        updates, opt_state = self.critic_tx.update(grads, state.critic_opt_state, state.critic_params)
        params = optax.apply_updates(state.critic_params, updates)
        state = state.replace(
            critic_params=params,
            critic_opt_state=opt_state,
            target_critic_params=optax.incremental_update(params, state.target_critic_params, cfg.tau),
            critic_steps=state.critic_steps + 1,
        )
        metrics = {
            "critic_loss": loss,
            "q_mean": q.mean(),
            "q_min": q.min(),
            "q_max": q.max(),
            "q_head_std": q.std(axis=0).mean(),
            "target_q_mean": target.mean(),
            "td_error_abs": jnp.abs(q.mean(axis=0) - target).mean(),
            "critic_grad_norm": optax.tree.norm(grads),
        }
        return state, metrics

    def _actor_step(self, state: LearnerState, batch: Transition
                    ) -> tuple[LearnerState, dict[str, jax.Array]]:
        feats = self.features(batch.obs)
        critic_params = jax.lax.stop_gradient(state.critic_params)

        def loss_fn(params):
            r = self.actor.apply(params, feats, batch.base_action)
            action = jnp.clip(batch.base_action + r, -1.0, 1.0)
            q = self.critic.apply(critic_params, feats, action)
            penalty = jnp.mean(jnp.square(r / self.config.action_scale))
            return -q.mean() + self.config.residual_penalty * penalty, (r, q.mean())

        (loss, (r, q_pi)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.actor_params)
        updates, opt_state = self.actor_tx.update(grads, state.actor_opt_state, state.actor_params)
        params = optax.apply_updates(state.actor_params, updates)
        state = state.replace(
            actor_params=params,
            actor_opt_state=opt_state,
            target_actor_params=optax.incremental_update(
                params, state.target_actor_params, self.config.tau),
            actor_steps=state.actor_steps + 1,
        )
        metrics = {"actor_loss": loss, "actor_q": q_pi, "actor_grad_norm": optax.tree.norm(grads),
                   "residual_abs_mean": jnp.abs(r).mean(), "residual_abs_max": jnp.abs(r).max()}
        return state, metrics

    def _join(self, online: Transition, offline: Transition | None, where: str) -> Transition:
        """Validate [N, B_on, ...] (+ [N, B_off, ...]) and concatenate along the batch axis."""
        if not isinstance(online, Transition):
            raise TypeError(f"{where}: online batch must be a replay.Transition, got {type(online)}.")
        parts = [("online", online)] + ([("offline", offline)] if offline is not None else [])
        steps = None
        for name, b in parts:
            if jnp.ndim(b.reward) != 2:
                raise ValueError(f"{where}: {name} reward has shape {jnp.shape(b.reward)}; batches "
                                 "must be [steps, batch, ...] (e.g. [UTD, B/2]).")
            n, bs = jnp.shape(b.reward)
            if steps is not None and n != steps:
                raise ValueError(f"{where}: online has {steps} steps but offline has {n}; both need "
                                 "the same leading (UTD) size.")
            steps = n
            for field in ("discount", "nonterminal"):
                if jnp.shape(getattr(b, field)) != (n, bs):
                    raise ValueError(f"{where}: {name} {field} has shape {jnp.shape(getattr(b, field))},"
                                     f" expected {(n, bs)}.")
            for field in ("base_action", "action", "next_base_action"):
                self._check_action(getattr(b, field), (n, bs), f"{where}: {name} {field}")
            self._check_obs(b.obs, (n, bs), f"{where}: {name} obs")
            self._check_obs(b.next_obs, (n, bs), f"{where}: {name} next_obs")
        if offline is None:
            return online
        return jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=1), online, offline)

    def _check_finite(self, batch: Transition, losses: dict[str, jax.Array], where: str) -> None:
        if not self.config.check_finite:
            return
        batch_flags = {}
        for path, x in jax.tree_util.tree_leaves_with_path(batch):
            if jnp.issubdtype(x.dtype, jnp.floating):
                batch_flags["batch" + jax.tree_util.keystr(path)] = jnp.all(jnp.isfinite(x))
        loss_flags = {name: jnp.all(jnp.isfinite(v)) for name, v in losses.items()}

        def raise_if_bad(batch_flags, loss_flags):
            bad_batch = [k for k, v in batch_flags.items() if not np.all(v)]
            bad_loss = [k for k, v in loss_flags.items() if not np.all(v)]
            if bad_batch:
                raise FloatingPointError(
                    f"{where}: non-finite values (NaN/inf) in {', '.join(bad_batch)}. Check the "
                    "env observations, rewards and base actions feeding the replay: a NaN batch "
                    "poisons every parameter. (Set ResidualTD3Config.check_finite=False to skip.)")
            if bad_loss:
                raise FloatingPointError(
                    f"{where}: non-finite {', '.join(bad_loss)} on a finite batch: the update "
                    "diverged. Lower the learning rates or check the observation normalizer "
                    "(tiny std). (Set ResidualTD3Config.check_finite=False to skip.)")

        jax.debug.callback(raise_if_bad, batch_flags, loss_flags)

    def update(self, state: LearnerState, online: Transition, offline: Transition | None
               ) -> tuple[LearnerState, dict[str, jax.Array]]:
        """UTD critic steps (lax.scan, one batch row each) then one actor step on the last row.

        online: Transition [UTD, B_on, ...]; offline: [UTD, B_off, ...] or None (no demos).
        Metrics are averaged over the critic steps.
        """
        batch = self._join(online, offline, "update")
        num_steps = batch.reward.shape[0]
        rng, k_scan = jax.random.split(state.rng)
        noise_std = self.config.exploration_std if self.config.target_noise else 0.0
        step = lambda s, xs: self._critic_step(s, xs[0], xs[1], noise_std)
        state, cm = jax.lax.scan(step, state, (batch, jax.random.split(k_scan, num_steps)))
        last = jax.tree.map(lambda x: x[-1], batch)
        state, am = self._actor_step(state, last)
        metrics = {k: v.mean() for k, v in cm.items()} | am
        self._check_finite(batch, {"critic_loss": cm["critic_loss"], "actor_loss": am["actor_loss"]},
                           "ResidualTD3.update")
        return state.replace(rng=rng), metrics

    def critic_warmup(self, state: LearnerState, online: Transition, offline: Transition | None
                      ) -> tuple[LearnerState, dict[str, jax.Array]]:
        """Critic-only steps, one per leading row of [N, B_on|B_off, ...]; no target noise."""
        batch = self._join(online, offline, "critic_warmup")
        rng, k_scan = jax.random.split(state.rng)
        step = lambda s, xs: self._critic_step(s, xs[0], xs[1], 0.0)
        state, cm = jax.lax.scan(step, state, (batch, jax.random.split(k_scan, batch.reward.shape[0])))
        self._check_finite(batch, {"critic_loss": cm["critic_loss"]}, "ResidualTD3.critic_warmup")
        return state.replace(rng=rng), {k: v.mean() for k, v in cm.items()}


def _optimizer(lr: float, weight_decay: float, max_grad_norm: float) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(max_grad_norm),
                       optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay))


def make_learner(config: ResidualTD3Config, obs_spec: PyTree, action_dim: int,
                 obs_normalizer: StateStandardizer | None = None) -> ResidualTD3:
    """Build the learner's pure functions.

    obs_spec: observation dimension (int) or a pytree of ShapeDtypeStruct of float vectors
    (no batch axis). action_dim: size of the (normalized) action. obs_normalizer: a
    ``StateStandardizer`` over the flattened observation (identity if None).
    """
    if int(action_dim) < 1:
        raise ValueError(f"action_dim must be >= 1, got {action_dim}.")
    spec = _as_obs_spec(obs_spec)
    obs_dim = int(sum(s.shape[0] for s in jax.tree.leaves(spec)))
    if obs_normalizer is None:
        obs_normalizer = StateStandardizer.identity(obs_dim)
    elif obs_normalizer.dim != obs_dim:
        raise ValueError(f"obs_normalizer has dimension {obs_normalizer.dim} but the flattened "
                         f"observation has {obs_dim}; fit it on the same observations.")
    actor = ResidualActor(action_dim=int(action_dim), hidden_dims=tuple(config.actor_hidden_dims),
                          action_scale=config.action_scale, layer_norm=config.layer_norm)
    critic = EnsembleCritic(num_heads=config.num_critics,
                            hidden_dims=tuple(config.critic_hidden_dims), layer_norm=config.layer_norm)
    return ResidualTD3(
        config=config, obs_spec=spec, action_dim=int(action_dim), obs_normalizer=obs_normalizer,
        actor=actor, critic=critic,
        actor_tx=_optimizer(config.actor_lr, config.weight_decay, config.max_grad_norm),
        critic_tx=_optimizer(config.critic_lr, config.weight_decay, config.max_grad_norm),
    )
