"""The demos as semi-MDP decision windows (``replay.decisions`` holds the online writers):
any demo step may start a window, so the demo buffer holds one window per demo step."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from resfit_jax.replay.nstep import Transition

DEMO_RELABELS = ("offset", "base")


def demo_windows(
    padded: dict[str, jax.Array],
    base: Any,
    normalizer: Any,
    features: Any,
    every: int,
    gamma: float,
    bootstrap_truncation: bool,
    relabel: str = "offset",
    bound: float = 1.0,
    mc_bound: bool = False,
    slope: bool = False,
    mask: jax.Array | None = None,
) -> tuple[Transition, jax.Array]:
    """Jittable: one decision window per demo step (any step may start one, so k-fold more
    offline windows than an online run's decisions over the same steps).

    padded: ``demos.pad_episodes`` arrays (observation [N, T+1, ...], action [N, T, A] raw,
    reward / terminal [N, T], length [N]). At every frame t the base is queried from a fresh
    state (a decision starts a chunk), giving the learner's observation (the frame plus the
    base's chunk ``features``) and its plan p_t,0..k-1 (normalized). The window covers
    k' = min(k, length - t) demo steps: R = sum_{j<k'} gamma^j r_{t+j}, discount gamma^k',
    next_obs / next_base_action at frame t + k', nonterminal 0 where the episode's terminal
    step falls inside (a time-limit end bootstraps with ``bootstrap_truncation``). Its
    action is clip(p_t,0 + o) with o the held offset closest to the demo's actions
    (mean_j (a_{t+j} - p_t,j), clipped to +-``bound``; ``relabel="offset"``) or the base's
    own first action (``relabel="base"``, r = 0). ``mc_bound``: each window also carries
    the discounted return-to-go from t to the end of a successful (terminal) demo as
    ``mc_return`` (-inf for a demo that ends by its time limit).
    ``slope`` (offset + slope windows, ``base.features.Offsets``): the window's coefficients
    are the least-squares fit of o + s * (2j / (k - 1) - 1) to a_{t+j} - p_t,j over its k'
    steps (s = 0 for a one-step window), each clipped to +-``bound``; actions and base
    actions are then in decision coordinates, (clip(p_t,0 + o), s) against (p_t,0, 0).
    ``mask`` [A] (``residual_dims``): o and s are 0 outside the residual's entries.

    Returns (transitions [N, T], valid [N, T]).
    """
    from resfit_jax.observations import append_state

    if relabel not in DEMO_RELABELS:
        raise ValueError(f"demo relabel must be one of {DEMO_RELABELS} (got {relabel!r}).")
    obs, act = padded["observation"], padded["action"]
    num, t_max = act.shape[0], act.shape[1]
    norm = normalizer.normalize_action

    def fresh(o):  # the base deciding at frame o [N, ...]: learner obs, plan [N, k, A]
        a, st = base.step(base.init_state(num), o)
        x = o if features is None else append_state(o, features(st, normalizer))
        plan = norm(st.chunk[:, :every]).at[:, 0].set(norm(a))
        return x, plan

    frames = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), obs)  # [T+1, N, ...]
    x, plan = jax.lax.map(fresh, frames)
    x = jax.tree.map(lambda v: jnp.swapaxes(v, 0, 1), x)  # [N, T+1, ...]
    plan = jnp.swapaxes(plan, 0, 1)  # [N, T+1, k, A]

    length = padded["length"]
    t = jnp.arange(t_max)[None, :]  # [1, T]
    k_eff = jnp.minimum(every, length[:, None] - t)  # [N, T] (<= 0 past the end)
    valid = t < length[:, None]
    j = jnp.arange(every)
    idx = jnp.broadcast_to(jnp.clip(t[..., None] + j, 0, t_max - 1), (num, t_max, every))
    flat = idx.reshape(num, -1)  # [N, T * k]
    inside = j[None, None, :] < k_eff[..., None]  # [N, T, k]
    rew = jnp.take_along_axis(padded["reward"], flat, axis=1).reshape(idx.shape)
    ret = jnp.sum(jnp.where(inside, gamma ** j.astype(jnp.float32) * rew, 0.0), axis=-1)
    ends = t + k_eff >= length[:, None]  # the window reaches the episode's end
    last_term = jnp.take_along_axis(padded["terminal"], jnp.maximum(length - 1, 0)[:, None], 1)
    terminated = ends & last_term
    if bootstrap_truncation:
        nonterminal = ~terminated
    else:
        nonterminal = ~ends
    demo_a = norm(act)  # [N, T, A]
    window_a = jnp.take_along_axis(demo_a, flat[..., None], axis=1).reshape(
        idx.shape + demo_a.shape[-1:]
    )  # [N, T, k, A]
    p = plan[:, :t_max]  # [N, T, k, A]
    w = inside[..., None].astype(jnp.float32)
    if slope:
        offset, rate = _offset_and_slope(window_a - p, w, every)
    else:
        offset = jnp.sum((window_a - p) * w, axis=2) / jnp.maximum(w.sum(axis=2), 1.0)
    if mask is not None:  # the residual corrects these entries only
        offset = offset * mask
        if slope:
            rate = rate * mask
    a_b = p[:, :, 0]
    if relabel == "offset":
        action = jnp.clip(a_b + jnp.clip(offset, -bound, bound), -1.0, 1.0)
    else:
        action = a_b
    next_a_b = plan[:, :, 0]
    if slope:  # decision coordinates: (action, slope) against (base, 0)
        zero = jnp.zeros_like(a_b)
        rate = jnp.clip(rate, -bound, bound) if relabel == "offset" else zero
        action = jnp.concatenate([action, jnp.clip(rate, -1.0, 1.0)], axis=-1)
        a_b = jnp.concatenate([a_b, zero], axis=-1)
        next_a_b = jnp.concatenate([next_a_b, jnp.zeros_like(next_a_b)], axis=-1)
    nxt = jnp.clip(t + jnp.maximum(k_eff, 0), 0, t_max)  # [N, T] frame of the next decision
    at_next = lambda v: jnp.take_along_axis(v, nxt.reshape(nxt.shape + (1,) * (v.ndim - 2)), axis=1)
    mc = None
    if mc_bound:  # G_t = r_t + gamma G_t+1 over each demo, from its end backwards
        live = jnp.swapaxes(valid, 0, 1)
        _, g = jax.lax.scan(
            lambda c, xs: (jnp.where(xs[1], xs[0] + gamma * c, 0.0),) * 2,
            jnp.zeros((num,), jnp.float32),
            (jnp.swapaxes(padded["reward"], 0, 1).astype(jnp.float32), live),
            reverse=True,
        )
        mc = jnp.where(last_term, jnp.swapaxes(g, 0, 1), -jnp.inf)
    trans = Transition(
        obs=jax.tree.map(lambda v: v[:, :t_max], x),
        base_action=a_b,
        action=action,
        reward=ret,
        discount=gamma ** jnp.maximum(k_eff, 1).astype(jnp.float32),
        nonterminal=nonterminal.astype(jnp.float32),
        next_obs=jax.tree.map(at_next, x),
        next_base_action=at_next(next_a_b),
        mc_return=mc,
    )
    return trans, valid


def _offset_and_slope(d: jax.Array, w: jax.Array, every: int) -> tuple[jax.Array, jax.Array]:
    """Weighted least squares of d [..., k, A] ~ o + s * c_j, c_j = 2j / (k - 1) - 1, over
    the steps with weight w [..., k, 1]: (o, s) [..., A]; s = 0 where one step is weighted."""
    c = (2.0 * jnp.arange(every, dtype=jnp.float32) / (every - 1) - 1.0)[:, None]  # [k, 1]
    sw, sc, scc = w.sum(-2), (w * c).sum(-2), (w * c * c).sum(-2)
    sd, scd = (w * d).sum(-2), (w * c * d).sum(-2)
    det = sw * scc - sc * sc
    ok = det > 1e-6
    safe = jnp.where(ok, det, 1.0)
    o = jnp.where(ok, (scc * sd - sc * scd) / safe, sd / jnp.maximum(sw, 1.0))
    s = jnp.where(ok, (sw * scd - sc * sd) / safe, 0.0)
    return o, s


def demo_decision_buffer(
    episodes: Any,
    base: Any,
    normalizer: Any,
    features: Any,
    every: int,
    gamma: float,
    bootstrap_truncation: bool,
    relabel: str = "offset",
    bound: float = 1.0,
    mc_bound: bool = False,
    slope: bool = False,
    mask: Any = None,
) -> tuple[Any, Any]:
    """Host entry point: demo episodes -> (ReplayBuffer sized to fit, a filled ReplayState of
    ``demo_windows``: one window per demo step)."""
    from resfit_jax.replay.buffer import ReplayBuffer
    from resfit_jax.replay.demos import pad_episodes

    padded = pad_episodes(episodes)
    capacity = int(padded["length"].sum())
    buffer = ReplayBuffer(capacity)

    def build(p, nz):
        trans, valid = demo_windows(
            p,
            base,
            nz,
            features,
            every,
            gamma,
            bootstrap_truncation,
            relabel,
            bound,
            mc_bound,
            slope,
            mask,
        )
        column = lambda i: jax.tree.map(lambda x: x[:, i], trans)
        spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[2:], x.dtype), trans)
        state = buffer.init(spec)
        state, _ = jax.lax.scan(
            lambda s, i: (buffer.add(s, column(i), valid[:, i]), None),
            state,
            jnp.arange(valid.shape[1]),
        )
        return state

    state = jax.jit(build)(jax.tree.map(jnp.asarray, padded), normalizer)
    if int(state.size) != capacity:
        raise AssertionError(
            f"demo decision windows: stored {int(state.size)} windows for {capacity} demo steps."
        )
    return buffer, state


def demo_buffer(
    episodes: Any,
    base: Any,
    normalizer: Any,
    replay: Any,
    features: Any = None,
    offsets: Any = None,
    relabel: str = "offset",
    bound: float = 1.0,
    mc_bound: bool = False,
    dims: tuple[int, ...] = (),
) -> tuple[Any, Any] | None:
    """The demo buffer of a run (``replay``: its ``ReplayConfig``): decision windows
    (``demo_decision_buffer``) with semi-MDP ``offsets``, else the relabelled n-step
    transitions of ``replay.demos.offline_buffer``; None when batches take no demos.
    ``dims``: the learner's ``residual_dims`` (the demos' corrections on those entries
    only; the other entries are the base's)."""
    import numpy as np

    from resfit_jax.agents.residual_td3.losses import dims_mask
    from resfit_jax.replay.demos import offline_buffer

    if replay.offline_fraction <= 0:
        return None
    mask = None
    if dims:  # the env's action entries the residual corrects
        mask = dims_mask(tuple(dims), int(np.shape(episodes[0].action)[-1]))
    if offsets is not None and offsets.semi_mdp:
        return demo_decision_buffer(
            episodes,
            base,
            normalizer,
            features,
            offsets.every,
            replay.gamma,
            replay.bootstrap_truncation,
            relabel,
            bound,
            mc_bound,
            offsets.slope,
            mask,
        )
    return offline_buffer(episodes, base, normalizer, replay.demo_writer(), features, offsets, mask)
