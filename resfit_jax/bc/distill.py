"""Distillation: the improved policy's behaviour back into the base (the ResFiT paper's stated
future direction). Roll the improved policy (base + deterministic residual) out in MJX on
starts of its own, keep its successful episodes (each ends at its first success), or with
``keep="all"`` every frame of every rollout labelled with the action the policy took, and
fine-tune the BC base on demos + these episodes with its chunked loss
(``bc.pipeline.train_bc(init_from=...)``).

    rec = jax.jit(lambda k: sim.evaluation.record_episodes(task, policy, k))(keys)
    episodes = rollout_episodes(jax.device_get(rec), keep="successes")
"""

from __future__ import annotations

import jax
import numpy as np

from resfit_jax.data.episode import Episode
from resfit_jax.sim.evaluation import episode_keys

KEEP = ("successes", "all")
_DISTILL_STREAM = 0xD157  # the distillation starts' own key stream


def distill_keys(seed: int, num_episodes: int) -> jax.Array:
    """Keys [N] of the distillation rollouts: a stream of their own (fold_in(key(seed),
    0xD157)), apart from the training runs' periodic and held-out evaluation starts."""
    return episode_keys(jax.random.fold_in(jax.random.key(seed), _DISTILL_STREAM), num_episodes)


def rollout_episodes(rec: dict, keep: str = "successes") -> list[Episode]:
    """RLDS episodes from ``sim.evaluation.record_episodes``' output (host arrays; state
    observations): the successful ones up
    to their first success (``keep="successes"``), or every episode (``keep="all"``: every
    frame labelled with the policy's action; failures carry no reward). Each episode's id is
    its rollout index."""
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {KEEP}, got {keep!r}.")
    if isinstance(rec["obs"], dict):
        raise ValueError("Distillation keeps state observations; pixel tasks are not supported.")
    success = np.asarray(rec["success"], bool)
    length = np.asarray(rec["length"], int)
    out = []
    for n in range(success.shape[0]):
        if keep == "successes" and not success[n]:
            continue
        t = int(length[n])
        obs = np.concatenate([rec["obs"][:t, n], rec["next_obs"][t - 1 : t, n]])
        out.append(Episode.from_rollout(obs, rec["action"][:t, n], bool(success[n]), n))
    return out
