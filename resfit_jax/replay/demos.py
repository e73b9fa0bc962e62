"""The demo (offline) buffer and the run's normalization, built from RLDS demo episodes.

``fit_normalizer(episodes, ...)`` is the one way a run fits its ``Normalizer``.
The buffer holds the demos relabelled with the frozen base's own actions.

Each stored n-step transition holds the demo's action (normalized) as ``action`` and the base
policy's action on the same demo frame as ``base_action``, so the critic learns the value of
the demonstrated combined action and the target uses the base's action on the next frame.

The base runs over every demo episode from a fresh state (its chunk queue starts empty at
each demo's first frame: the fix of the public release, which carried queues across demo
boundaries). Reward is the episode's own sparse reward (1 on the final transition of a
successful demo) and the transition is terminal only there; a failed demo (kept with
``keep_failures`` at collection time) ends as a time-limit truncation.

All N episodes are processed as N parallel streams inside one jitted ``lax.scan`` over time
(padded to the longest episode), with the same ``NStepWriter`` the online loop uses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from resfit_jax.base.policy import BasePolicy
from resfit_jax.data.rlds import Episode
from resfit_jax.normalization import Normalizer
from resfit_jax.observations import append_state, state_of
from resfit_jax.replay import NStepWriter, ReplayBuffer, ReplayState, transition_spec


def fit_normalizer(
    episodes: Sequence[Episode], action_scale: float, margin: float = 0.0, min_std: float = 2e-4
) -> Normalizer:
    """Action scaling (demo [min, max], widened by 1 + margin and 1 + action_scale) and obs
    standardization (std floored at ``min_std``, raw units), from demo episodes."""
    actions = np.concatenate([ep.action[:-1] for ep in episodes])
    obs = np.concatenate([ep.observation for ep in episodes])
    return Normalizer.fit(actions, obs, action_scale, margin=margin, min_std=min_std)


def with_feature_stats(
    normalizer: Normalizer,
    episodes: Sequence[Episode],
    base: BasePolicy,
    features,
    min_std: float = 2e-4,
    offsets=None,
) -> Normalizer:
    """The normalizer with the learner's extra inputs (the base's chunk features, the
    persistent offset) appended to its observation statistics, measured on the demo frames."""
    import dataclasses as dc

    from resfit_jax.normalization import StateStandardizer

    padded = pad_episodes(episodes)
    d = state_of(padded["observation"]).shape[-1]
    obs, _, _ = jax.jit(lambda p, nz: learner_frames(p, base, nz, features, offsets))(
        jax.tree.map(jnp.asarray, padded), normalizer
    )
    f = np.asarray(state_of(obs))[..., d:]
    frames = np.concatenate([f[i, : n + 1] for i, n in enumerate(padded["length"])])
    stats = StateStandardizer.fit(frames, min_std)
    obs = dc.replace(
        normalizer.obs,
        mean=jnp.concatenate([normalizer.obs.mean, stats.mean]),
        std=jnp.concatenate([normalizer.obs.std, stats.std]),
    )
    return normalizer.replace(obs=obs)


def with_time_feature(episodes: Sequence[Episode], horizon: int) -> list[Episode]:
    """Episodes whose observations [T + 1, D] gain the elapsed fraction t / horizon as a last
    column [T + 1, D + 1], as ``envs.core.TimeFeature`` adds it online."""
    out = []
    for ep in episodes:
        t = np.arange(ep.observation.shape[0], dtype=np.float32)[:, None] / float(horizon)
        out.append(
            dataclasses.replace(
                ep, observation=np.concatenate([ep.observation, t], axis=1).astype(np.float32)
            )
        )
    return out


def pad_episodes(episodes: Sequence[Episode], max_len: int | None = None) -> dict[str, np.ndarray]:
    """Stack episodes, padded to the longest (or to ``max_len`` actions): observation
    [N, T+1, O] (with cameras, ``Episode.obs``'s dict, each field [N, T+1, ...]), action
    [N, T, A], reward [N, T], terminal [N, T] (is_terminal of the frame after each action),
    length [N]. Padding repeats an episode's last frame."""
    if not episodes:
        raise ValueError("offline buffer: no demo episodes given.")
    for ep in episodes:
        ep.validate()
    dims = {(ep.observation.shape[1], ep.action.shape[1]) for ep in episodes}
    if len(dims) != 1:
        raise ValueError(f"offline buffer: demo episodes have mixed (obs, action) sizes {dims}.")
    cams = {tuple(sorted(ep.camera_shapes.items())) for ep in episodes}
    if len(cams) != 1:
        raise ValueError(f"offline buffer: demo episodes have mixed cameras {cams}.")
    ((_, a),) = dims
    n, t = len(episodes), max(ep.num_actions for ep in episodes)
    if max_len is not None:
        if t > max_len:
            raise ValueError(
                f"offline buffer: an episode has {t} actions, more than max_len={max_len}."
            )
        t = int(max_len)
    out = {
        "observation": jax.tree.map(
            lambda x: np.zeros((n, t + 1) + x.shape[1:], x.dtype), episodes[0].obs
        ),
        "action": np.zeros((n, t, a), np.float32),
        "reward": np.zeros((n, t), np.float32),
        "terminal": np.zeros((n, t), bool),
        "length": np.zeros((n,), np.int32),
    }
    for i, ep in enumerate(episodes):
        m = ep.num_actions
        for dst, src in zip(jax.tree.leaves(out["observation"]), jax.tree.leaves(ep.obs)):
            dst[i, : m + 1] = src
            dst[i, m + 1 :] = src[-1]
        out["action"][i, :m] = ep.action[:m]
        out["reward"][i, :m] = ep.reward[:m]
        out["terminal"][i, :m] = ep.is_terminal[1 : m + 1]
        out["length"][i] = m
    return out


def _frame_spec(obs) -> object:
    """The spec of one frame of padded observations [N, T+1, ...]."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[2:], x.dtype), obs)


def _time_major(obs):
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), obs)


def base_actions(
    padded: dict[str, jax.Array],
    base: BasePolicy,
    features=None,
    normalizer: Normalizer | None = None,
    with_refills: bool = False,
):
    """Jittable: the base's raw action at every frame [N, T+1, A], each episode run from a
    fresh base state (queue empty at its first frame). With ``features``
    (``base_features.BaseFeatures``) returns (actions, features [N, T+1, F]); with
    ``with_refills`` also the frames where the base started a new chunk [N, T+1] bool."""
    from resfit_jax.base.features import refilled

    obs = padded["observation"]
    if base.action_dim != padded["action"].shape[-1]:
        raise ValueError(
            f"offline buffer: the base's action size ({base.action_dim}) does not "
            f"match the episodes' ({padded['action'].shape[-1]})."
        )
    bstate = base.init_state(state_of(obs).shape[0])

    def body(bstate, o):
        a, bstate = base.step(bstate, o)
        return bstate, (
            a,
            None if features is None else features(bstate, normalizer),
            refilled(bstate) if with_refills else None,
        )

    _, (a, f, refill) = jax.lax.scan(body, bstate, _time_major(obs))
    swap = lambda x: None if x is None else jnp.swapaxes(x, 0, 1)
    if with_refills:
        return swap(a), swap(f), swap(refill)
    return swap(a) if features is None else (swap(a), swap(f))


def demo_offsets(
    base_action: jax.Array, action: jax.Array, refill: jax.Array, offsets
) -> tuple[jax.Array, jax.Array]:
    """Persistent offsets along demo episodes, as the online loop keeps them
    (``base_features.Offsets``).

    base_action [N, T+1, A] and action [N, T, A] normalized, refill [N, T+1] bool. Returns
    (effective base actions clip(a_b + o) [N, T+1, A], the offset o seen at each frame
    [N, T+1, A]): o is reset where the base starts a chunk and is otherwise what the previous
    demo action added to the base's action ("accumulate"), or what the demo action added at
    the chunk's first frame ("hold"), bounded to +-bound."""
    from resfit_jax.base.features import offset_update

    def body(carry, xs):
        a_b, a, re = xs
        o = jnp.where(re[:, None], 0.0, carry)
        kept = offset_update(offsets.bound, a_b, a)
        if offsets.hold:
            kept = jnp.where(re[:, None], kept, o)
        return kept, (jnp.clip(a_b + o, -1.0, 1.0), o)

    padded_act = jnp.concatenate([action, jnp.zeros_like(action[:, :1])], axis=1)
    xs = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), (base_action, padded_act, refill))
    _, (eff, off) = jax.lax.scan(body, jnp.zeros_like(base_action[:, 0]), xs)
    return jnp.swapaxes(eff, 0, 1), jnp.swapaxes(off, 0, 1)


def add_episodes(
    state: ReplayState,
    padded: dict[str, jax.Array],
    base_action: jax.Array,
    normalizer: Normalizer,
    writer: NStepWriter,
    buffer: ReplayBuffer,
    base_normalized: bool = False,
    every: int = 1,
) -> ReplayState:
    """Jittable: insert padded episodes' n-step transitions into ``state``.

    base_action: raw base actions [N, T+1, A] at every frame (``base_actions`` or, for robot
    episodes, the ones actually used; already normalized with ``base_normalized``). Each
    episode ends at its ``length``: terminal where ``padded["terminal"]`` is set on the last
    action, else a time-limit truncation. ``every`` k > 1: ``writer`` is a semi-MDP decision
    writer (``replay.decisions``) and frames 0, k, 2k, ... of each episode are its decisions
    (a robot episode's base starts a fresh chunk at frame 0).
    """
    obs, act = padded["observation"], padded["action"]
    n, t = act.shape[0], act.shape[1]
    norm = normalizer.normalize_action
    nb = base_action if base_normalized else norm(base_action)
    spec = _frame_spec(obs)
    at = lambda j: jax.tree.map(lambda x: x[:, j], obs)
    wstate = writer.init(n, spec, act.shape[-1])

    def body(carry, i):
        rstate, wstate = carry
        active = i < padded["length"]
        last = i == padded["length"] - 1
        terminal = last & padded["terminal"][:, i]
        flags = {}
        if every > 1:
            flags = {
                "opens": jnp.full((n,), i % every == 0),
                "closes": jnp.full((n,), (i + 1) % every == 0),
            }
        wstate, cands, valid = writer.step(
            wstate,
            at(i),
            nb[:, i],
            norm(act[:, i]),
            padded["reward"][:, i],
            at(i + 1),
            nb[:, i + 1],
            terminal,
            last & ~terminal,
            **flags,
        )
        rstate = buffer.add(rstate, cands, valid & active[:, None])
        return (rstate, wstate), None

    (state, _), _ = jax.lax.scan(body, (state, wstate), jnp.arange(t))
    return state


def learner_frames(
    padded: dict[str, jax.Array],
    base: BasePolicy,
    normalizer: Normalizer,
    features=None,
    offsets=None,
):
    """Jittable: (observations, base actions, normalized?) of demo frames as the learner sees
    them online: observations [N, T+1, D (+F) (+A) (+1)] gain the base's chunk features and
    the persistent offset (``offsets``; with hold, also the "residual acts" flag), appended
    to the state vector; base actions are then the effective ones."""
    obs = padded["observation"]
    if offsets is None or not offsets.observed:  # semi-MDP decisions append no offset
        if features is None:
            return obs, base_actions(padded, base), False
        a_b, f = base_actions(padded, base, features, normalizer)
        return append_state(obs, f), a_b, False
    a_b, f, refill = base_actions(padded, base, features, normalizer, with_refills=True)
    eff, off = demo_offsets(
        normalizer.normalize_action(a_b),
        normalizer.normalize_action(padded["action"]),
        refill,
        offsets,
    )
    flag = [refill[..., None].astype(jnp.float32)] if offsets.hold else []
    return append_state(obs, *([] if f is None else [f]), off, *flag), eff, True


def relabel_demos(
    padded: dict[str, jax.Array],
    base: BasePolicy,
    normalizer: Normalizer,
    writer: NStepWriter,
    buffer: ReplayBuffer,
    features=None,
    offsets=None,
    mask=None,
) -> ReplayState:
    """Jittable: padded episodes (see ``pad_episodes``) -> a filled offline ReplayState. With
    ``features`` / ``offsets`` the stored frames are those of ``learner_frames``; ``mask``
    [A] (``residual_dims``): the demo's actions differ from the base's on those entries
    only (the per-entry action scaling makes this the same raw or normalized)."""
    act = padded["action"]
    obs, a_b, normalized = learner_frames(padded, base, normalizer, features, offsets)
    padded = dict(padded, observation=obs)
    if mask is not None:
        raw_b = normalizer.unnormalize_action(a_b) if normalized else a_b
        raw_b = raw_b[:, : act.shape[1]]
        padded["action"] = raw_b + mask * (act - raw_b)
    state = buffer.init(transition_spec(_frame_spec(obs), act.shape[-1]))
    return add_episodes(state, padded, a_b, normalizer, writer, buffer, normalized)


def offline_buffer(
    episodes: Sequence[Episode],
    base: BasePolicy,
    normalizer: Normalizer,
    writer: NStepWriter,
    features=None,
    offsets=None,
    mask=None,
) -> tuple[ReplayBuffer, ReplayState]:
    """Host entry point: demo episodes -> (ReplayBuffer sized to fit, filled ReplayState)."""
    padded = pad_episodes(episodes)
    capacity = int(padded["length"].sum())
    buffer = ReplayBuffer(capacity)
    state = jax.jit(
        lambda p, nz: relabel_demos(p, base, nz, writer, buffer, features, offsets, mask)
    )(jax.tree.map(jnp.asarray, padded), normalizer)
    if int(state.size) != capacity:
        raise AssertionError(
            f"offline buffer: stored {int(state.size)} transitions for {capacity} demo steps."
        )
    return buffer, state
