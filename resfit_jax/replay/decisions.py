"""Semi-MDP replay: one ``Transition`` per residual decision instead of one per env step.

The residual decides every k env steps (``base.features.Offsets.decisions``) and holds its
correction in between. The writer turns the env steps of each decision's window into one
transition

    (obs, base_action, action) at the decision,
    reward      R = sum_{j < k'} gamma^j r_{t+j}        (k' <= k env steps of the window),
    discount    gamma^k',
    nonterminal 0 where the episode terminated inside the window (success), 1 where it runs
                on or (with ``bootstrap_truncation``) hit the time limit,
    next_obs, next_base_action  at the next decision (the true last observation at an end),

and, with ``n`` > 1, composes n consecutive decisions of an episode into one n-decision
return (R_1 + gamma^k1 R_2 + ..., discount gamma^(k1 + k2 + ...)), as ``NStepWriter`` does
over env steps. Decision points come from the caller as flags (``opens``: this step starts
a decision; ``closes``: the next step starts one), so windows may differ in length; an
episode end always closes a window. With every step a decision the writer is ``NStepWriter``.
The demos as decision windows: ``replay.decision_demos``.

Shapes as ``NStepWriter``: per-step inputs [E, ...]; candidates [E, n] with a mask.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from resfit_jax.replay.nstep import Transition

PyTree = Any


@struct.dataclass
class DecisionState:
    """The open window of every stream and its last ``n`` closed decisions.

    Open window: obs (pytree [E, ...]), base_action, action [E, A] at its decision,
    ret [E] (discounted reward so far), steps [E] int32 (env steps so far).
    Closed decisions, oldest first, right-aligned: d_obs (pytree [E, n, ...]),
    d_base_action, d_action [E, n, A], d_ret [E, n], d_steps [E, n] int32; count [E] int32:
    how many of those belong to the current episode.
    """

    obs: PyTree
    base_action: jax.Array
    action: jax.Array
    ret: jax.Array
    steps: jax.Array
    d_obs: PyTree
    d_base_action: jax.Array
    d_action: jax.Array
    d_ret: jax.Array
    d_steps: jax.Array
    count: jax.Array


@dataclasses.dataclass(frozen=True)
class DecisionWriter:
    """Decision-window transitions for E parallel streams; ``n``: decisions per return."""

    n: int = 1
    gamma: float = 0.99
    bootstrap_truncation: bool = True

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"DecisionWriter.n must be >= 1, got {self.n}.")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"DecisionWriter.gamma must be in (0, 1], got {self.gamma}.")

    def init(self, num_envs: int, obs_spec: PyTree, action_dim: int) -> DecisionState:
        e, n = num_envs, self.n
        zeros, act = _zeros(obs_spec, action_dim)
        return DecisionState(
            **_open_window(num_envs, obs_spec, action_dim),
            d_obs=zeros((e, n)),
            d_base_action=act((e, n)),
            d_action=act((e, n)),
            d_ret=jnp.zeros((e, n), jnp.float32),
            d_steps=jnp.zeros((e, n), jnp.int32),
            count=jnp.zeros((e,), jnp.int32),
        )

    def step(
        self,
        state: DecisionState,
        obs: PyTree,
        base_action: jax.Array,
        action: jax.Array,
        reward: jax.Array,
        next_obs: PyTree,
        next_base_action: jax.Array,
        terminated: jax.Array,
        truncated: jax.Array,
        opens: jax.Array | None = None,
        closes: jax.Array | None = None,
    ) -> tuple[DecisionState, Transition, jax.Array]:
        """Push one env step of every stream; return (state, candidates [E, n], valid [E, n]).

        ``opens`` [E] bool: this step is a decision (its obs / base_action / action start the
        window); ``closes`` [E] bool: the next step is one (``next_obs`` is the next
        decision's). None: every step. Other arguments as ``NStepWriter.step``.
        """
        n, e = self.n, reward.shape[0]
        every = jnp.ones((e,), bool)
        opens = every if opens is None else opens.astype(bool)
        closes = every if closes is None else closes.astype(bool)
        terminated = terminated.astype(bool)
        done = terminated | truncated.astype(bool)
        at = lambda m, a, b: jax.tree.map(
            lambda x, y: jnp.where(m.reshape(m.shape + (1,) * (x.ndim - 1)), x, y), a, b
        )
        w = _advance_window(self.gamma, state, opens, obs, base_action, action, reward)
        w_obs, w_ba, w_a, ret, steps = (
            w[k] for k in ("obs", "base_action", "action", "ret", "steps")
        )
        # a window closes at the next decision or at the episode's end: push it
        close = closes | done
        push = lambda win, x: jnp.concatenate([win[:, 1:], x[:, None].astype(win.dtype)], axis=1)
        pushed = lambda win, x: at(close, jax.tree.map(push, win, x), win)
        d_obs = pushed(state.d_obs, w_obs)
        d_ba, d_a = pushed(state.d_base_action, w_ba), pushed(state.d_action, w_a)
        d_ret, d_steps = pushed(state.d_ret, ret), pushed(state.d_steps, steps)
        count = jnp.where(close, jnp.minimum(state.count + 1, n), state.count)

        slot = jnp.arange(n)
        in_episode = slot[None, :] >= (n - count)[:, None]  # [E, n]
        d_ret_in = jnp.where(in_episode, d_ret, 0.0)
        d_steps_in = jnp.where(in_episode, d_steps, 0)

        def backward(carry, xs):  # G_j = R_j + gamma^(k_j) G_{j+1}, right to left
            r, k = xs
            g = r + self.gamma ** k.astype(jnp.float32) * carry
            return g, g

        _, g = jax.lax.scan(
            backward, jnp.zeros((e,), jnp.float32), (d_ret_in.T, d_steps_in.T), reverse=True
        )
        if n == 1:  # one decision: its own return (no 0 * carry term)
            g = d_ret_in.T
        total_steps = jnp.cumsum(d_steps_in[:, ::-1], axis=1)[:, ::-1]  # [E, n]
        full = count == n
        valid = close[:, None] & jnp.where(
            done[:, None], in_episode, (slot[None, :] == 0) & full[:, None]
        )
        if self.bootstrap_truncation:
            nonterminal = jnp.where(done, ~terminated, True)
        else:
            nonterminal = ~done
        bcast = lambda x: jnp.broadcast_to(x[:, None], (e, n) + x.shape[1:])
        cands = Transition(
            obs=d_obs,
            base_action=d_ba,
            action=d_a,
            reward=g.T,
            discount=self.gamma ** total_steps.astype(jnp.float32),
            nonterminal=bcast(nonterminal.astype(jnp.float32)),
            next_obs=jax.tree.map(bcast, next_obs),
            next_base_action=bcast(next_base_action),
        )
        new = DecisionState(
            obs=w_obs,
            base_action=w_ba,
            action=w_a,
            ret=ret,
            steps=steps,
            d_obs=d_obs,
            d_base_action=d_ba,
            d_action=d_a,
            d_ret=d_ret,
            d_steps=d_steps,
            count=jnp.where(done, 0, count),
        )
        return new, cands, valid


# ------------------------------------------------------------------- Monte-Carlo bound
@struct.dataclass
class EpisodeDecisionState:
    """The open window (as ``DecisionState``) and the current episode's closed decisions,
    in order: e_obs / e_next_obs (pytrees [E, M, ...]), e_base_action, e_action,
    e_next_base_action [E, M, A], e_ret [E, M], e_steps [E, M] int32; count [E] int32."""

    obs: PyTree
    base_action: jax.Array
    action: jax.Array
    ret: jax.Array
    steps: jax.Array
    e_obs: PyTree
    e_base_action: jax.Array
    e_action: jax.Array
    e_ret: jax.Array
    e_steps: jax.Array
    e_next_obs: PyTree
    e_next_base_action: jax.Array
    count: jax.Array


@dataclasses.dataclass(frozen=True)
class EpisodeDecisionWriter:
    """Decision windows with a Monte-Carlo lower bound (MCAC, Wilcox et al. 2022): the
    writer keeps each episode's decisions (at most ``max_decisions``) and emits them when
    the episode ends, each with ``mc_return`` = the discounted return-to-go from its
    decision to the episode's end where the episode terminated (succeeded), -inf where it
    hit the time limit (the observed return then says nothing about the unobserved tail).
    Transitions are otherwise those of ``DecisionWriter(n=1)``. An episode longer than
    ``max_decisions`` decisions flushes its decisions early, with -inf (no data is lost).

    Candidates [E, max_decisions] with a mask; one decision per return (n = 1)."""

    max_decisions: int
    gamma: float = 0.99
    bootstrap_truncation: bool = True

    def __post_init__(self):
        if self.max_decisions < 1:
            raise ValueError(f"max_decisions must be >= 1, got {self.max_decisions}.")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}.")

    def init(self, num_envs: int, obs_spec: PyTree, action_dim: int) -> EpisodeDecisionState:
        e, m = num_envs, self.max_decisions
        zeros, act = _zeros(obs_spec, action_dim)
        return EpisodeDecisionState(
            **_open_window(num_envs, obs_spec, action_dim),
            e_obs=zeros((e, m)),
            e_base_action=act((e, m)),
            e_action=act((e, m)),
            e_ret=jnp.zeros((e, m), jnp.float32),
            e_steps=jnp.zeros((e, m), jnp.int32),
            e_next_obs=zeros((e, m)),
            e_next_base_action=act((e, m)),
            count=jnp.zeros((e,), jnp.int32),
        )

    def step(
        self,
        state: EpisodeDecisionState,
        obs: PyTree,
        base_action: jax.Array,
        action: jax.Array,
        reward: jax.Array,
        next_obs: PyTree,
        next_base_action: jax.Array,
        terminated: jax.Array,
        truncated: jax.Array,
        opens: jax.Array | None = None,
        closes: jax.Array | None = None,
    ) -> tuple[EpisodeDecisionState, Transition, jax.Array]:
        """As ``DecisionWriter.step``; candidates [E, max_decisions]."""
        m, e = self.max_decisions, reward.shape[0]
        every = jnp.ones((e,), bool)
        opens = every if opens is None else opens.astype(bool)
        closes = every if closes is None else closes.astype(bool)
        terminated = terminated.astype(bool)
        done = terminated | truncated.astype(bool)
        w = _advance_window(self.gamma, state, opens, obs, base_action, action, reward)
        close = closes | done
        put = close[:, None] & (jnp.arange(m)[None, :] == state.count[:, None])  # [E, M]
        store = lambda win, x: jax.tree.map(
            lambda a, b: jnp.where(put.reshape(put.shape + (1,) * (a.ndim - 2)), b[:, None], a),
            win,
            x,
        )
        e_obs, e_next_obs = store(state.e_obs, w["obs"]), store(state.e_next_obs, next_obs)
        e_ba, e_a = store(state.e_base_action, w["base_action"]), store(state.e_action, w["action"])
        e_nba = store(state.e_next_base_action, next_base_action)
        e_ret, e_steps = store(state.e_ret, w["ret"]), store(state.e_steps, w["steps"])
        count = state.count + close.astype(jnp.int32)
        flush = done | (count == m)
        slot = jnp.arange(m)[None, :]
        mine = slot < count[:, None]
        last = slot == (count - 1)[:, None]

        def backward(carry, xs):  # return-to-go over the episode's decisions
            r, k, keep = xs
            g = jnp.where(keep, r + self.gamma ** k.astype(jnp.float32) * carry, 0.0)
            return g, g

        _, g = jax.lax.scan(
            backward, jnp.zeros((e,), jnp.float32), (e_ret.T, e_steps.T, mine.T), reverse=True
        )
        mc = jnp.where((done & terminated)[:, None], g.T, -jnp.inf)
        if self.bootstrap_truncation:
            end_nonterminal = ~terminated
        else:
            end_nonterminal = ~done
        nonterminal = jnp.where(last & done[:, None], end_nonterminal[:, None], True)
        cands = Transition(
            obs=e_obs,
            base_action=e_ba,
            action=e_a,
            reward=e_ret,
            discount=self.gamma ** e_steps.astype(jnp.float32),
            nonterminal=nonterminal.astype(jnp.float32),
            next_obs=e_next_obs,
            next_base_action=e_nba,
            mc_return=mc,
        )
        new = EpisodeDecisionState(
            **w,
            e_obs=e_obs,
            e_base_action=e_ba,
            e_action=e_a,
            e_ret=e_ret,
            e_steps=e_steps,
            e_next_obs=e_next_obs,
            e_next_base_action=e_nba,
            count=jnp.where(flush, 0, count),
        )
        return new, cands, flush[:, None] & mine


def _zeros(obs_spec: PyTree, action_dim: int):
    """(observations, actions) of zeros with a given leading shape."""
    obs = lambda lead: jax.tree.map(lambda s: jnp.zeros(lead + tuple(s.shape), s.dtype), obs_spec)
    return obs, lambda lead: jnp.zeros(lead + (action_dim,), jnp.float32)


def _open_window(num_envs: int, obs_spec: PyTree, action_dim: int) -> dict:
    """The open-window fields of a writer state, empty."""
    obs, act = _zeros(obs_spec, action_dim)
    e = (num_envs,)
    return {
        "obs": obs(e),
        "base_action": act(e),
        "action": act(e),
        "ret": jnp.zeros(e, jnp.float32),
        "steps": jnp.zeros(e, jnp.int32),
    }


def _advance_window(gamma, state, opens, obs, base_action, action, reward) -> dict:
    """The open window after one env step (restarted where ``opens``): obs, base_action,
    action at its decision, ret (discounted reward so far), steps."""
    ret = jnp.where(opens, 0.0, state.ret)
    steps = jnp.where(opens, 0, state.steps)
    sel = lambda a, b: jax.tree.map(
        lambda x, y: jnp.where(opens.reshape(opens.shape + (1,) * (x.ndim - 1)), x, y), a, b
    )
    return {
        "obs": sel(obs, state.obs),
        "base_action": sel(base_action, state.base_action),
        "action": sel(action, state.action),
        "ret": ret + gamma ** steps.astype(jnp.float32) * reward,
        "steps": steps + 1,
    }
