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
    speed_range: tuple[float, float] = (1.0, 1.0)  # per-episode speed factor range
    action_noise: float = 0.0  # std of Gaussian noise on joint targets (rad) and gripper
    position_error: float = 0.0  # max per-episode grasp/place xy error (m), uniform
    hesitation_prob: float = 0.0  # per-step probability to start a pause
    hesitation_steps: int = 6  # max pause length (control steps)

    @classmethod
    def human(cls, noise: float = 1.0) -> ExpertStyle:
        """Demo style of a careful but imperfect teleoperator; ``noise`` scales every knob."""
        n = float(noise)
        return cls(
            speed_range=(max(0.3, 1.0 - 0.35 * n), 1.0 + 0.2 * n),
            action_noise=0.003 * n,
            position_error=0.003 * n,
            hesitation_prob=0.03 * n,
            hesitation_steps=6,
        )


@struct.dataclass
class ExpertState:
    phase: jax.Array  # [] int32 state-machine phase
    timer: jax.Array  # [] int32 steps spent in the phase
    pause: jax.Array  # [] int32 remaining hesitation steps
    speed: jax.Array  # [] per-episode speed factor
    error: jax.Array  # [4] per-episode position errors (grasp xy, place xy), m
    key: jax.Array  # [2] uint32
    extra: Any = None  # task-specific carry (e.g. a second arm's phase)


def init_style(style: ExpertStyle, key: jax.Array, extra: Any = None) -> ExpertState:
    key, k_speed, k_err = jax.random.split(key, 3)
    lo, hi = style.speed_range
    return ExpertState(
        phase=jnp.zeros((), jnp.int32),
        timer=jnp.zeros((), jnp.int32),
        pause=jnp.zeros((), jnp.int32),
        speed=jax.random.uniform(k_speed, (), minval=lo, maxval=hi),
        error=jax.random.uniform(k_err, (4,), minval=-1.0, maxval=1.0) * style.position_error,
        key=key,
        extra=extra,
    )


def advance(es: ExpertState, new_phase: jax.Array) -> ExpertState:
    """Set the phase; the timer restarts when it changes."""
    changed = new_phase != es.phase
    return es.replace(phase=new_phase, timer=jnp.where(changed, 0, es.timer + 1))


def stylise(
    style: ExpertStyle, es: ExpertState, action: jax.Array, hold: jax.Array
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


# Phases of the single-arm pick-and-place script.
APPROACH, DESCEND, CLOSE, LIFT, CARRY, LOWER, RELEASE, RETREAT = range(8)
GRIP_OPEN = 0.034
GRIP_CLOSED = 0.0


@dataclasses.dataclass(frozen=True)
class PlaceTarget:
    """Where the held object goes: xy [2] and height (m) of its place point (see
    ``_place_point``) at the end of LOWER, and the yaw it must have there (None: any of the
    grasp symmetries)."""

    xy: jax.Array
    z: jax.Array
    yaw: jax.Array | None = None


class PickAndPlaceScript(ScriptedExpert):
    """Approach above the object, descend, close, lift, carry above the place target, lower
    (slowly when ``lower_speed`` < 1), release, retreat.

    A dropped object (more than ``drop_distance`` from the tcp while held) sends the machine
    back to APPROACH, so the clean expert recovers from slips. Subclasses provide
    ``_object`` (centre [3], yaw) and ``_place`` (a PlaceTarget); the arm is ``self.arm``.
    """

    grasp_dz: float = 0.003  # tcp height above the object centre when grasping (m)
    approach_dz: float = 0.08  # approach height above the grasp point (m)
    carry_z: float = 0.16  # tcp height while carrying (m)
    lin_speed: float = 0.02  # m per control step at speed factor 1
    ang_speed: float = 0.15  # rad per control step
    lower_speed: float = 1.0  # speed factor while lowering onto the target
    place_tolerance: float = 0.008  # xy tolerance over the target before lowering (m)
    drop_distance: float = 0.03
    close_steps: int = 5
    release_steps: int = 4

    def _object(self, data: Any) -> tuple[jax.Array, jax.Array]:
        raise NotImplementedError

    def _place(self, data: Any, task: dict) -> PlaceTarget:
        raise NotImplementedError

    def _place_point(self, data: Any) -> jax.Array:
        """The point [3] of the held object that must land on the PlaceTarget (default: its
        centre; a peg uses its bottom face, so a slight tilt in the grasp is corrected)."""
        return self._object(data)[0]

    def _act(self, es: ExpertState, data: Any, task: dict):
        from resfit_jax.envs.mjx_env import (
            down_rotation,
            ik_step,
            nearest_grasp_yaw,
            tcp_pose,
            tool_yaw,
            wrap_quarter,
        )

        arm = self.arm
        tcp, rot = tcp_pose(data, arm)
        obj, obj_yaw = self._object(data)
        place = self._place(data, task)
        phase, timer = es.phase, es.timer
        held_offset = obj - tcp  # object centre relative to the tcp while held
        anchor_offset = self._place_point(data) - tcp
        grasp_xy = obj[:2] + es.error[:2]
        # Move the tcp so that the OBJECT lands on the target (corrects grasp offsets).
        place_xy = place.xy + es.error[2:] - anchor_offset[:2]
        grasp_z = obj[2] + self.grasp_dz
        lower_z = place.z - anchor_offset[2]
        z = lambda v: jnp.reshape(v, (1,)).astype(jnp.float32)
        targets = [
            (jnp.concatenate([grasp_xy, z(grasp_z + self.approach_dz)]), GRIP_OPEN),  # APPROACH
            (jnp.concatenate([grasp_xy, z(grasp_z)]), GRIP_OPEN),  # DESCEND
            (jnp.concatenate([grasp_xy, z(grasp_z)]), GRIP_CLOSED),  # CLOSE
            (jnp.concatenate([tcp[:2], z(self.carry_z)]), GRIP_CLOSED),  # LIFT
            (jnp.concatenate([place_xy, z(self.carry_z)]), GRIP_CLOSED),  # CARRY
            (jnp.concatenate([place_xy, z(lower_z)]), GRIP_CLOSED),  # LOWER
            (jnp.concatenate([tcp[:2], z(tcp[2])]), GRIP_OPEN),  # RELEASE
            (jnp.concatenate([tcp[:2], z(self.carry_z)]), GRIP_OPEN),  # RETREAT
        ]
        pos_t = jnp.stack([t[0] for t in targets])[phase]
        grip_t = jnp.array([t[1] for t in targets])[phase]
        err = pos_t - tcp
        xy_err = jnp.linalg.norm(err[:2])
        z_ok = jnp.abs(err[2]) < 0.008
        # Yaw: grasp at the symmetry nearest the current hand yaw; once held, turn the object
        # to the target yaw (if any) modulo its 4-fold symmetry.
        grasp_yaw = nearest_grasp_yaw(rot, obj_yaw, jnp.pi / 2)
        if place.yaw is None:
            held_yaw = grasp_yaw
        else:
            held_yaw = tool_yaw(rot) + wrap_quarter(place.yaw - obj_yaw)
        yaw_t = jnp.where(phase >= LIFT, held_yaw, grasp_yaw)
        yaw_ok = jnp.abs(wrap_quarter(yaw_t - tool_yaw(rot))) < 0.03
        held = jnp.linalg.norm(held_offset) < self.drop_distance
        nxt = phase
        nxt = jnp.where((phase == APPROACH) & (xy_err < 0.008) & z_ok, DESCEND, nxt)
        nxt = jnp.where((phase == DESCEND) & (xy_err < 0.012) & z_ok, CLOSE, nxt)
        nxt = jnp.where((phase == CLOSE) & (timer >= self.close_steps), LIFT, nxt)
        nxt = jnp.where((phase == LIFT) & (tcp[2] > self.carry_z - 0.02), CARRY, nxt)
        nxt = jnp.where(
            (phase == CARRY) & (xy_err < self.place_tolerance) & z_ok & yaw_ok, LOWER, nxt
        )
        nxt = jnp.where((phase == LOWER) & z_ok, RELEASE, nxt)
        nxt = jnp.where((phase == RELEASE) & (timer >= self.release_steps), RETREAT, nxt)
        dropped = (phase >= LIFT) & (phase <= LOWER) & ~held
        nxt = jnp.where(dropped, APPROACH, nxt)
        speed = es.speed * jnp.where(phase == LOWER, self.lower_speed, 1.0)
        q_t = ik_step(
            data, arm, pos_t, down_rotation(yaw_t), self.lin_speed * speed, self.ang_speed * speed
        )
        action = jnp.concatenate([q_t, grip_t[None]])
        hold = jnp.concatenate([jnp.asarray(data.qpos)[arm.qpos], grip_t[None]])
        return action, hold, advance(es, nxt)
