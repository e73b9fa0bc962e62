"""Base + residual as one ``BasePolicy`` (raw observations in, raw actions out).

    policy = ResidualPolicy(base, normalizer, learner, learner_state)   # deterministic residual
    policy = ResidualPolicy(base, normalizer)                           # the base alone

The base's raw action is normalized and clipped to [-1, 1] with the run's ``Normalizer``;
the executed action is unnormalize(clip(a_b + r, -1, 1)) with the learner's mean residual.
Without a learner the action is the base's, clipped to the same range, so the base alone
and base + residual are compared on the same action space. Evaluation (``sim.evaluation``)
and deployment use it; build it inside a jitted function to evaluate new params without a
recompile.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from resfit_jax.base.policy import BasePolicy
from resfit_jax.normalization import Normalizer

PyTree = Any
_EVAL_KEY = jnp.zeros((2,), jnp.uint32)  # the mean residual needs no randomness


@dataclasses.dataclass(frozen=True)
class ResidualPolicy:
    base: BasePolicy
    normalizer: Normalizer
    learner: Any = None
    learner_state: PyTree = None
    features: Any = None  # base_features.BaseFeatures appended for the learner
    offsets: Any = None  # base_features.Offsets: lasting corrections as in sim.loop
    # (state carries the offset [E, A] next to the base's state)

    @property
    def action_dim(self) -> int:
        return self.base.action_dim

    @property
    def _offsets(self) -> bool:
        return self.offsets is not None and self.learner is not None

    def init_state(self, num_envs: int) -> PyTree:
        if self._offsets:
            size = self.offsets.decision_size(self.action_dim)
            return self.base.init_state(num_envs), jnp.zeros((num_envs, size))
        return self.base.init_state(num_envs)

    def reset(self, state: PyTree, done: jax.Array) -> PyTree:
        if self._offsets:
            return self.base.reset(state[0], done), jnp.where(done[:, None], 0.0, state[1])
        return self.base.reset(state, done)

    def learner_obs(self, obs: PyTree, state: PyTree, offset: jax.Array | None = None) -> PyTree:
        """What the learner sees at obs, given the base state after its step there."""
        x = obs if self.features is None else self.features.augment(obs, state, self.normalizer)
        return x if offset is None else self.offsets.observe(x, offset, state)

    def step(self, state: PyTree, obs: PyTree) -> tuple[jax.Array, PyTree]:
        offset = None
        if self._offsets:
            state, offset = state
        raw, state = self.base.step(state, obs)
        a_b = self.normalizer.normalize_action(raw)
        if self.learner is None:
            return self.normalizer.unnormalize_action(a_b), state
        if offset is not None and self.offsets.slope:
            return self._window_step(obs, state, offset, a_b)
        base_action = a_b
        if offset is not None:
            offset = self.offsets.reset(offset, state)
            base_action = self.offsets.effective(a_b, offset)
        _, aux = self.learner.act(
            self.learner_state,
            self.learner_obs(obs, state, offset),
            base_action,
            _EVAL_KEY,
            deterministic=True,
        )
        action = aux["action"]
        if offset is not None and self.offsets.hold:  # decide at decision points only
            action = jnp.where(self.offsets.acts(state) > 0, action, base_action)
        if offset is not None:
            state = (state, self.offsets.after_step(offset, a_b, action, state))
        return self.normalizer.unnormalize_action(action), state

    def _window_step(
        self, obs: PyTree, state: PyTree, coef: jax.Array, a_b: jax.Array
    ) -> tuple[jax.Array, PyTree]:
        """Offset + slope windows: decide the coefficients at decision points, hold them and
        execute the ramp's value at each step (as ``sim.loop``)."""
        offsets = self.offsets
        coef = offsets.reset(coef, state)
        decision_base = offsets.decision_base(jnp.clip(a_b, -1.0, 1.0))
        _, aux = self.learner.act(
            self.learner_state, self.learner_obs(obs, state, coef), decision_base, _EVAL_KEY, True
        )
        decides = offsets.decides(state)[:, None]
        coef = jnp.where(decides, aux["action"] - decision_base, coef)
        action = jnp.clip(a_b + offsets.window_residual(coef, state), -1.0, 1.0)
        return self.normalizer.unnormalize_action(action), (state, coef)
