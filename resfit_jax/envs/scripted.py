"""Scripted experts: privileged-state state machines that drive the arms through IK.

An expert is pure and per env (vmap it for a batch):

    estate = expert.init(key)                        # per-episode style draws, phase 0
    action, estate = expert.act(estate, env_state)   # raw action [A] in the task's units
    estate = expert.reset(estate, done)              # new episode where done (fresh draws)

``ExpertStyle`` makes demos human-like and imperfect: a per-episode speed factor, Gaussian
action noise on the joint targets, a per-episode grasp / place position error, and random
hesitations (the arm holds still for a few steps). ``ExpertStyle()`` (all zero) is the
clean expert used for the >= 95 % success check.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@dataclasses.dataclass(frozen=True)
class ExpertStyle:
    speed_range: tuple[float, float] = (1.0, 1.0)   # per-episode speed factor range
    action_noise: float = 0.0        # std of Gaussian noise on joint targets (rad) and gripper
    position_error: float = 0.0      # max per-episode grasp/place xy error (m), uniform
    hesitation_prob: float = 0.0     # per-step probability to start a pause
    hesitation_steps: int = 6        # max pause length (control steps)

    @classmethod
    def human(cls, noise: float = 1.0) -> "ExpertStyle":
        """Demo style of a careful but imperfect teleoperator; ``noise`` scales every knob."""
        n = float(noise)
        return cls(speed_range=(max(0.3, 1.0 - 0.35 * n), 1.0 + 0.2 * n),
                   action_noise=0.003 * n, position_error=0.003 * n,
                   hesitation_prob=0.03 * n, hesitation_steps=6)


@struct.dataclass
class ExpertState:
    phase: jax.Array     # [] int32 state-machine phase
    timer: jax.Array     # [] int32 steps spent in the phase
    pause: jax.Array     # [] int32 remaining hesitation steps
    speed: jax.Array     # [] per-episode speed factor
    error: jax.Array     # [4] per-episode position errors (grasp xy, place xy), m
    key: jax.Array       # [2] uint32
    extra: Any = None    # task-specific carry (e.g. a second arm's phase)


def init_style(style: ExpertStyle, key: jax.Array, extra: Any = None) -> ExpertState:
    key, k_speed, k_err = jax.random.split(key, 3)
    lo, hi = style.speed_range
    return ExpertState(
        phase=jnp.zeros((), jnp.int32), timer=jnp.zeros((), jnp.int32),
        pause=jnp.zeros((), jnp.int32),
        speed=jax.random.uniform(k_speed, (), minval=lo, maxval=hi),
        error=jax.random.uniform(k_err, (4,), minval=-1.0, maxval=1.0) * style.position_error,
        key=key, extra=extra)


def advance(es: ExpertState, new_phase: jax.Array) -> ExpertState:
    """Set the phase; the timer restarts when it changes."""
    changed = new_phase != es.phase
    return es.replace(phase=new_phase, timer=jnp.where(changed, 0, es.timer + 1))


def stylise(style: ExpertStyle, es: ExpertState, action: jax.Array, hold: jax.Array
            ) -> tuple[jax.Array, ExpertState]:
    """Apply hesitation (replace the action by ``hold``) and action noise.

    Returns the action and the state with its key and pause counter advanced. While paused
    the phase machine should not advance; callers use ``es.pause > 0`` before this call.
    """
    key, k_start, k_len, k_noise = jax.random.split(es.key, 4)
    paused = es.pause > 0
    start = (~paused) & (jax.random.uniform(k_start) < style.hesitation_prob)
    length = jax.random.randint(k_len, (), 1, style.hesitation_steps + 1)
    pause = jnp.where(paused, es.pause - 1, jnp.where(start, length, 0))
    out = jnp.where(paused, hold, action)
    out = out + style.action_noise * jax.random.normal(k_noise, out.shape)
    return out, es.replace(key=key, pause=pause)


class ScriptedExpert:
    """Base class: subclasses implement ``_act(estate, data, task) -> (action, hold, estate)``."""

    style: ExpertStyle
    action_low: jax.Array
    action_high: jax.Array

    def _extra_init(self) -> Any:
        return None

    def init(self, key: jax.Array) -> ExpertState:
        return init_style(self.style, key, self._extra_init())

    def reset(self, estate: ExpertState, done: jax.Array) -> ExpertState:
        key, k_new = jax.random.split(estate.key)
        fresh = self.init(k_new)
        kept = estate.replace(key=key)
        return jax.tree.map(lambda f, o: jnp.where(done, f, o), fresh, kept)

    def act(self, estate: ExpertState, env_state: Any) -> tuple[jax.Array, ExpertState]:
        data, task = env_state.data["mjx"], env_state.data["task"]
        paused = estate.pause > 0
        action, hold, new = self._act(estate, data, task)
        new = jax.tree.map(lambda o, n: jnp.where(paused, o, n), estate, new)
        action, new = stylise(self.style, new, action, hold)
        return jnp.clip(action, self.action_low, self.action_high), new

    def _act(self, estate: ExpertState, data: Any, task: dict):
        raise NotImplementedError
