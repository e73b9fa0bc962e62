"""The critic's calibration on a semi-MDP run: what it predicts a correction is worth against
what the correction does, measured by paired counterfactual rollouts (jittable).

    rec = record_decisions(task, policy, keys, every)          # pi's episodes + its decisions
    alt = run_without_window(task, policy, keys, every, d)     # pi, decision d left to the base
    pred = predicted_advantage(learner, learner_state, rec)    # [K, D, N] heads' advantage

For an episode of pi (base + deterministic residual) alive at decision d (env step d * k),
the critic's prediction for the correction r pi makes there is Q(s, a_b + r) - Q(s, a_b):
the return of taking r for this window and following pi after it, against taking the base's
plan for this window and following pi after it. Both are measurable exactly: the env and
the policy are deterministic, so the episode from the same start with the residual zeroed
during window d only (``WindowMasked``) shares every step before d * k with pi's, and the
difference of the two discounted returns from d * k is the correction's measured effect.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from resfit_jax.base.residual import ResidualPolicy
from resfit_jax.sim.evaluation import scan_episodes

PyTree = Any


def check_semi_mdp(policy: ResidualPolicy) -> int:
    """The decision period k of ``policy``; ValueError unless it is a semi-MDP residual with
    held offsets (``residual.decision_steps`` > 1, offset windows)."""
    offsets = policy.offsets
    if policy.learner is None or offsets is None or not offsets.semi_mdp:
        raise ValueError(
            "calibration needs a semi-MDP residual run (residual.decision_steps > 1, e.g. "
            "--recipe=chunk): its critic values one correction held over a decision window."
        )
    if offsets.slope:
        raise ValueError(
            "calibration supports offset windows only (residual.window=offset), not "
            "offset + slope windows."
        )
    return int(offsets.every)


@dataclasses.dataclass(frozen=True)
class WindowMasked:
    """``policy`` (a semi-MDP ``ResidualPolicy``) with its correction replaced by the base's
    own action during env steps [start, start + every) of each episode; ``start`` may be
    traced. Before the window it acts as ``policy``; after it, too (the next decision point
    chooses a new offset, and the base's state does not depend on the residual)."""

    policy: ResidualPolicy
    start: Any
    every: int

    @property
    def action_dim(self) -> int:
        return self.policy.action_dim

    def init_state(self, num_envs: int) -> PyTree:
        return self.policy.init_state(num_envs), jnp.zeros((num_envs,), jnp.int32)

    def reset(self, state: PyTree, done: jax.Array) -> PyTree:
        inner, t = state
        return self.policy.reset(inner, done), jnp.where(done, 0, t)

    def step(self, state: PyTree, obs: PyTree) -> tuple[jax.Array, PyTree]:
        inner, t = state
        p = self.policy
        raw_b, _ = p.base.step(inner[0], obs)  # the base's own action (deterministic)
        plain = p.normalizer.unnormalize_action(p.normalizer.normalize_action(raw_b))
        action, inner = p.step(inner, obs)
        masked = (t >= self.start) & (t < self.start + self.every)
        return jnp.where(masked[:, None], plain, action), (inner, t + 1)


@dataclasses.dataclass(frozen=True)
class DecisionRecorder:
    """``policy`` unchanged, recording at each decision d (env step d * every) what its
    learner saw: the learner's observation [E, D, O] and the base action it corrected
    [E, D, A] (normalized). After an episode ends it may fill the slots of decisions past
    the end (from the frozen observation); those decisions are not alive."""

    policy: ResidualPolicy
    every: int
    decisions: int
    obs_size: int

    @property
    def action_dim(self) -> int:
        return self.policy.action_dim

    def init_state(self, num_envs: int) -> PyTree:
        e, d = num_envs, self.decisions
        return (
            self.policy.init_state(num_envs),
            jnp.zeros((e,), jnp.int32),
            jnp.zeros((e, d, self.obs_size)),
            jnp.zeros((e, d, self.action_dim)),
        )

    def reset(self, state: PyTree, done: jax.Array) -> PyTree:
        return (self.policy.reset(state[0], done),) + tuple(state[1:])

    def step(self, state: PyTree, obs: PyTree) -> tuple[jax.Array, PyTree]:
        inner, t, xs, bs = state
        p = self.policy
        raw_b, bstate = p.base.step(inner[0], obs)
        a_b = p.normalizer.normalize_action(raw_b)
        offset = p.offsets.reset(inner[1], bstate)  # zero at a decision point
        x = p.learner_obs(obs, bstate, offset)
        slot = jnp.clip(t // self.every, 0, self.decisions - 1)
        here = ((t % self.every) == 0) & (t // self.every < self.decisions)
        onehot = (jax.nn.one_hot(slot, self.decisions) * here[:, None])[..., None]  # [E, D, 1]
        xs = xs * (1.0 - onehot) + x[:, None, :] * onehot
        bs = bs * (1.0 - onehot) + p.offsets.effective(a_b, offset)[:, None, :] * onehot
        action, inner = p.step(inner, obs)
        return action, (inner, t + 1, xs, bs)


def _returns(rewards: jax.Array, alive: jax.Array, gamma: float) -> jax.Array:
    """rewards, alive [T, N] -> discounted return-to-go from every step [T, N]."""

    def back(g, x):
        r, a = x
        g = jnp.where(a, r + gamma * g, 0.0)
        return g, g

    _, g = jax.lax.scan(back, jnp.zeros(rewards.shape[1:]), (rewards, alive), reverse=True)
    return g


def _episodes(task: Any, policy: Any, keys: jax.Array, gamma: float) -> tuple[dict, PyTree]:
    """``evaluation.scan_episodes`` with rewards recorded: (success [N], length [N],
    return_to_go [T, N]; the policy's final state)."""
    s, (reward, alive), pstate = scan_episodes(
        task,
        policy,
        keys,
        lambda s, a, s2, done: (s2.reward.astype(jnp.float32), ~done),
        policy_state=True,
    )
    out = {
        "success": s.info["success"],
        "length": s.info["steps"],
        "return_to_go": _returns(reward, alive, gamma),
    }
    return out, pstate


def num_decisions(task: Any, every: int) -> int:
    """Decision points in an episode of ``task`` (env steps 0, k, 2k, ... < horizon)."""
    return -(-int(task.horizon) // int(every))


def record_decisions(
    task: Any, policy: ResidualPolicy, keys: jax.Array, every: int, gamma: float
) -> dict[str, jax.Array]:
    """Jittable: pi's episodes from ``keys`` [N]: success [N], length [N], return_to_go
    [T, N], and at every decision d: learner obs [D, N, O], base action [D, N, A]."""

    def learner_obs(obs):
        raw, bstate = policy.base.step(policy.base.init_state(1), obs)
        offset = jnp.zeros((1, policy.offsets.decision_size(policy.action_dim)))
        return policy.learner_obs(obs, bstate, offset)

    obs_spec = jax.ShapeDtypeStruct((1,) + tuple(task.observation_spec.shape), jnp.float32)
    obs_size = int(jax.eval_shape(learner_obs, obs_spec).shape[-1])
    rec = DecisionRecorder(policy, every, num_decisions(task, every), obs_size)
    out, (_, _, xs, bs) = _episodes(task, rec, keys, gamma)
    return out | {"obs": jnp.swapaxes(xs, 0, 1), "base_action": jnp.swapaxes(bs, 0, 1)}


def run_without_window(
    task: Any, policy: ResidualPolicy, keys: jax.Array, every: int, decision: Any, gamma: float
) -> dict[str, jax.Array]:
    """Jittable: the episodes of ``policy`` from ``keys`` [N] with decision ``decision``'s
    window left to the base (``WindowMasked``): success [N], length [N], return_to_go
    [T, N]."""
    out, _ = _episodes(task, WindowMasked(policy, decision * every, every), keys, gamma)
    return out


def predicted_advantage(
    learner: Any, learner_state: PyTree, obs: jax.Array, base_action: jax.Array
) -> dict[str, jax.Array]:
    """Jittable: the actor's deterministic correction at each recorded decision and what the
    critic says of it. obs [D, N, O], base_action [D, N, A] -> advantage [K, D, N] (each
    head's Q_k(s, a_b + r) - Q_k(s, a_b)), q and q_base [D, N] (head means of Q(s, a_b + r)
    and Q(s, a_b)), size [D, N] (mean_i |r_i|, normalized units)."""
    d, n = base_action.shape[:2]
    flat_obs = obs.reshape((d * n,) + obs.shape[2:])
    flat_b = base_action.reshape(d * n, -1)
    key = jnp.zeros((2,), jnp.uint32)
    _, aux = learner.act(learner_state, flat_obs, flat_b, key, deterministic=True)
    action = aux["action"]
    q = learner.q_values(learner_state, flat_obs, action, flat_b)  # [K, D * N]
    q_b = learner.q_values(learner_state, flat_obs, flat_b, flat_b)
    return {
        "advantage": (q - q_b).reshape((-1, d, n)),
        "q": q.mean(0).reshape(d, n),
        "q_base": q_b.mean(0).reshape(d, n),
        "size": jnp.abs(action - flat_b).mean(-1).reshape(d, n),
    }
