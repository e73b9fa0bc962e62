"""Shared machinery of the MJX manipulation tasks: the task base class and arm kinematics.

A task owns an ``mujoco.MjModel`` (C, for rendering and MuJoCo C benchmarks) and its MJX
counterpart. ``reset_with_model`` / ``step_with_model`` take the MJX model explicitly, so
``DomainRandomization`` can vmap them over a batch of randomised models; ``reset`` / ``step``
use the nominal model. One control step runs ``n_substeps`` physics steps in a
``lax.fori_loop`` with the control held fixed.

Kinematics helpers work on any object with MuJoCo's field names (``mjx.Data`` or
``mujoco.MjData``), so scripted experts can be debugged against MuJoCo C.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from resfit_jax.envs import mjcf
from resfit_jax.envs._mjx import mjx
from resfit_jax.envs.core import Env, State


@dataclasses.dataclass(frozen=True)
class ArmIndex:
    """Static indices of one arm in a compiled model."""

    qpos: np.ndarray  # [6] qpos addresses of j1..j6
    dof: np.ndarray  # [6] dof addresses of j1..j6
    jnt: np.ndarray  # [6] joint ids
    finger_qpos: np.ndarray  # [2]
    tcp_site: int
    hand_body: int
    ctrl: np.ndarray  # [8] actuator ids: 6 arm + 2 fingers
    low: np.ndarray  # [7] action lower bounds (6 joints + gripper opening)
    high: np.ndarray  # [7]

    @classmethod
    def build(cls, m: mujoco.MjModel, prefix: str) -> ArmIndex:
        jid = lambda n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, prefix + n)
        aid = lambda n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_ACTUATOR, prefix + n)
        jnt = np.array([jid(j) for j in mjcf.ARM_JOINTS])
        fingers = np.array([jid("finger_l"), jid("finger_r")])
        ctrl = np.array([aid(j) for j in mjcf.ARM_JOINTS] + [aid("finger_l"), aid("finger_r")])
        rng = m.actuator_ctrlrange[ctrl[:7]]
        return cls(
            qpos=m.jnt_qposadr[jnt].copy(),
            dof=m.jnt_dofadr[jnt].copy(),
            jnt=jnt,
            finger_qpos=m.jnt_qposadr[fingers].copy(),
            tcp_site=mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, prefix + "tcp"),
            hand_body=mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, prefix + "hand"),
            ctrl=ctrl,
            low=rng[:, 0].astype(np.float32),
            high=rng[:, 1].astype(np.float32),
        )


def tcp_pose(data: Any, arm: ArmIndex) -> tuple[jax.Array, jax.Array]:
    """Tool-centre position [3] (m) and rotation matrix [3, 3] (columns = tool axes)."""
    return (
        jnp.asarray(data.site_xpos)[arm.tcp_site],
        jnp.asarray(data.site_xmat)[arm.tcp_site].reshape(3, 3),
    )


def arm_jacobian(data: Any, arm: ArmIndex) -> jax.Array:
    """Geometric Jacobian [6, 6] of the tcp (rows: linear xyz, angular xyz) w.r.t. j1..j6."""
    p = jnp.asarray(data.site_xpos)[arm.tcp_site]
    axis = jnp.asarray(data.xaxis)[arm.jnt]  # [6, 3]
    anchor = jnp.asarray(data.xanchor)[arm.jnt]  # [6, 3]
    lin = jnp.cross(axis, p[None] - anchor)
    return jnp.concatenate([lin.T, axis.T], axis=0)


def down_rotation(yaw: jax.Array) -> jax.Array:
    """Rotation [3, 3] of a tool pointing down (tool z = -world z) with the given yaw of its
    x axis about world z; the fingers close along the tool y axis."""
    c, s = jnp.cos(yaw), jnp.sin(yaw)
    x = jnp.stack([c, s, jnp.zeros_like(c)])
    z = jnp.array([0.0, 0.0, -1.0])
    y = jnp.cross(z, x)
    return jnp.stack([x, y, z], axis=1)


def rotation_error(r: jax.Array, r_target: jax.Array) -> jax.Array:
    """Small-angle rotation vector [3] taking r to r_target (world frame)."""
    return 0.5 * sum(jnp.cross(r[:, i], r_target[:, i]) for i in range(3))


def ik_step(
    data: Any,
    arm: ArmIndex,
    pos_target: jax.Array,
    rot_target: jax.Array,
    max_lin: float,
    max_ang: float,
    damping: float = 1e-2,
) -> jax.Array:
    """Joint targets [6] one damped-least-squares step toward a tcp pose.

    The Cartesian error is clipped to ``max_lin`` metres and ``max_ang`` radians, which sets
    the speed of a controller that calls this once per control step.
    """
    p, r = tcp_pose(data, arm)
    e_pos = pos_target - p
    e_pos = e_pos * jnp.minimum(1.0, max_lin / (jnp.linalg.norm(e_pos) + 1e-9))
    e_rot = rotation_error(r, rot_target)
    e_rot = e_rot * jnp.minimum(1.0, max_ang / (jnp.linalg.norm(e_rot) + 1e-9))
    jac = arm_jacobian(data, arm)
    err = jnp.concatenate([e_pos, e_rot])
    dq = jac.T @ jnp.linalg.solve(jac @ jac.T + damping * jnp.eye(6), err)
    q = jnp.asarray(data.qpos)[arm.qpos]
    return jnp.clip(q + dq, arm.low[:6], arm.high[:6])


def yaw_of(quat: jax.Array) -> jax.Array:
    """Yaw (rad) of a body's x axis about world z, from a wxyz quaternion."""
    w, x, y, z = quat[..., 0], quat[..., 1], quat[..., 2], quat[..., 3]
    return jnp.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def yaw_quat(yaw: jax.Array) -> jax.Array:
    return jnp.stack([jnp.cos(yaw / 2), 0.0 * yaw, 0.0 * yaw, jnp.sin(yaw / 2)])


def wrap_quarter(angle: jax.Array) -> jax.Array:
    """Map an angle to [-pi/4, pi/4) modulo pi/2 (a square grasp is 4-fold symmetric)."""
    return (angle + jnp.pi / 4) % (jnp.pi / 2) - jnp.pi / 4


def wrap_half(angle: jax.Array) -> jax.Array:
    """Map an angle to [-pi/2, pi/2) modulo pi (a parallel gripper is 2-fold symmetric)."""
    return (angle + jnp.pi / 2) % jnp.pi - jnp.pi / 2


def tool_yaw(rot: jax.Array) -> jax.Array:
    """Yaw (rad) of the tool x axis [3, 3] -> [] about world z."""
    return jnp.arctan2(rot[1, 0], rot[0, 0])


def nearest_grasp_yaw(rot: jax.Array, object_yaw: jax.Array, symmetry: float) -> jax.Array:
    """Grasp yaw closest to the current tool yaw among ``object_yaw + k * symmetry``."""
    cur = tool_yaw(rot)
    d = object_yaw - cur
    return cur + (d + symmetry / 2) % symmetry - symmetry / 2


def solve_home(
    m: mujoco.MjModel,
    arm: ArmIndex,
    tcp_pos: np.ndarray,
    yaw: float,
    q0: np.ndarray,
    iters: int = 200,
) -> np.ndarray:
    """Joint angles [6] putting the tcp at ``tcp_pos`` pointing down (MuJoCo C, numpy)."""
    d = mujoco.MjData(m)
    q = np.array(q0, float)
    rot_t = np.asarray(down_rotation(jnp.float32(yaw)))
    for _ in range(iters):
        d.qpos[arm.qpos] = q
        mujoco.mj_kinematics(m, d)
        q = np.asarray(ik_step(d, arm, jnp.asarray(tcp_pos), jnp.asarray(rot_t), 0.05, 0.2))
    return q.astype(np.float32)


class MjxTask(Env):
    """Base class of the MJX manipulation tasks with one or more arms.

    Subclasses build ``self.mj_model``, set ``self.arms`` (ArmIndex per arm) and
    ``self.homes`` (home joint angles [6] per arm), ``self.episode_length`` and
    ``self.ctrl_dt``, call ``_setup_mjx`` and implement ``_init_data``, ``_observe`` and
    ``_success``. Task info is a dict of per-episode constants (e.g. the tote position)
    carried in ``state.data`` alongside the MJX data.

    Action layout, per arm in order: joint targets j1..j6 (rad), gripper opening (m); the
    gripper command drives both finger actuators. With ``use_control("ee_delta")`` the
    action is per arm [dx, dy, dz, dyaw] in [-1, 1] and the gripper opening instead
    (``ee_control``). Observations start with each arm's proprio block (``_proprio``): q (6),
    qdot (6), gripper opening (1), tcp position (3).
    """

    ctrl_dt: float
    episode_length: int
    mj_model: mujoco.MjModel
    arms: tuple[ArmIndex, ...]
    homes: tuple[np.ndarray, ...]
    PROPRIO_SIZE = 16
    control: str = "joint"
    ee_lin_scale: float = 0.03  # m per control step at |action| = 1 (ee_delta)
    ee_ang_scale: float = 0.25  # rad per control step at |action| = 1 (ee_delta)

    def use_control(
        self, control: str, ee_lin_scale: float = 0.03, ee_ang_scale: float = 0.25
    ) -> MjxTask:
        """Switch the action space: "joint" (joint targets) or "ee_delta" (see
        ``ee_control``; scales in metres and radians per control step at |a| = 1)."""
        from resfit_jax.envs.ee_control import CONTROLS

        if control not in CONTROLS:
            raise ValueError(f"control must be one of {CONTROLS} (got {control!r}).")
        if not (0 < ee_lin_scale <= 0.2 and 0 < ee_ang_scale <= 1.0):
            raise ValueError(
                f"ee_lin_scale must be in (0, 0.2] m and ee_ang_scale in (0, 1] rad per step "
                f"(got {ee_lin_scale}, {ee_ang_scale})."
            )
        self.control = control
        self.ee_lin_scale, self.ee_ang_scale = float(ee_lin_scale), float(ee_ang_scale)
        return self

    def _setup_mjx(self) -> None:
        self.mjx_model = mjx.put_model(self.mj_model, impl="jax")
        self.n_substeps = int(round(self.ctrl_dt / self.mj_model.opt.timestep))

    # -- subclass hooks ---------------------------------------------------------------------
    @abc.abstractmethod
    def _init_data(self, model: mjx.Model, key: jax.Array) -> tuple[mjx.Data, dict]:
        """Randomised initial MJX data and the per-episode task constants."""

    @abc.abstractmethod
    def _observe(self, data: mjx.Data, task: dict) -> jax.Array: ...

    @abc.abstractmethod
    def _success(self, data: mjx.Data, task: dict) -> jax.Array: ...

    # -- arms -------------------------------------------------------------------------------
    def _ctrl_from_action(self, action: jax.Array) -> jax.Array:
        ctrl = jnp.zeros(self.mj_model.nu)
        for i, arm in enumerate(self.arms):
            a = action[7 * i : 7 * i + 7]
            ctrl = ctrl.at[arm.ctrl].set(jnp.concatenate([a[:6], a[6:7], a[6:7]]))
        return ctrl

    @property
    def home_action(self) -> jax.Array:
        """Action [A] holding every arm at its home pose with the gripper open."""
        g = jnp.array([mjcf.FINGER_OPEN * 0.9])
        return jnp.concatenate([x for home in self.homes for x in (jnp.asarray(home), g)])

    def _home_qpos(self, qpos: jax.Array) -> jax.Array:
        """qpos with every arm at home and its fingers open."""
        for arm, home in zip(self.arms, self.homes):
            qpos = qpos.at[arm.qpos].set(home)
            qpos = qpos.at[arm.finger_qpos].set(mjcf.FINGER_OPEN * 0.9)
        return qpos

    def _proprio(self, data: mjx.Data) -> tuple[list[jax.Array], list[jax.Array]]:
        """Per-arm proprio blocks (see the class docstring) and tcp positions [3]."""
        parts, tcps = [], []
        for arm in self.arms:
            tcp, _ = tcp_pose(data, arm)
            tcps.append(tcp)
            parts += [
                data.qpos[arm.qpos],
                data.qvel[arm.dof],
                data.qpos[arm.finger_qpos].mean(keepdims=True),
                tcp,
            ]
        return parts, tcps

    @property
    def action_size(self) -> int:
        return (7 if self.control == "joint" else 5) * len(self.arms)

    @property
    def horizon(self) -> int:
        return self.episode_length

    @property
    def action_obs_index(self) -> tuple[int, ...]:
        """Observation index of the measured joint position behind each joint-target action
        dim (-1 for the gripper command); BC bases may predict relative to it."""
        if self.control != "joint":  # deltas: predicted as they are
            return (-1,) * self.action_size
        return tuple(
            i
            for k in range(len(self.arms))
            for i in tuple(range(self.PROPRIO_SIZE * k, self.PROPRIO_SIZE * k + 6)) + (-1,)
        )

    @property
    def joint_low(self) -> jax.Array:
        """Bounds [7 * arms] of the joint action (joint targets, gripper)."""
        return jnp.concatenate([jnp.asarray(a.low) for a in self.arms])

    @property
    def joint_high(self) -> jax.Array:
        return jnp.concatenate([jnp.asarray(a.high) for a in self.arms])

    def _ee_bounds(self, joint: jax.Array, unit: float) -> jax.Array:
        return jnp.concatenate([jnp.concatenate([jnp.full(4, unit), g]) for g in joint[6::7, None]])

    @property
    def action_low(self) -> jax.Array:
        if self.control == "joint":
            return self.joint_low
        return self._ee_bounds(self.joint_low, -1.0)

    @property
    def action_high(self) -> jax.Array:
        if self.control == "joint":
            return self.joint_high
        return self._ee_bounds(self.joint_high, 1.0)

    # -- env protocol -----------------------------------------------------------------------
    def reset_with_model(self, model: mjx.Model, key: jax.Array) -> State:
        data, task = self._init_data(model, key)
        data = mjx.forward(model, data)
        return State(
            data={"mjx": data, "task": task},
            obs=self._observe(data, task),
            reward=jnp.zeros((), jnp.float32),
            done=jnp.zeros((), bool),
            info={"success": jnp.zeros((), bool)},
        )

    def step_with_model(self, model: mjx.Model, state: State, action: jax.Array) -> State:
        if action.shape != (self.action_size,):
            raise ValueError(
                f"{type(self).__name__}.step: action has shape {action.shape}, "
                f"expected ({self.action_size},)."
            )
        action = jnp.clip(action, self.action_low, self.action_high)
        if self.control == "ee_delta":
            from resfit_jax.envs.ee_control import joint_action

            action = jnp.clip(
                joint_action(self, state.data["mjx"], action, model),
                self.joint_low,
                self.joint_high,
            )
        data = state.data["mjx"].replace(ctrl=self._ctrl_from_action(action))
        data = jax.lax.fori_loop(0, self.n_substeps, lambda _, d: mjx.step(model, d), data)
        task = state.data["task"]
        success = self._success(data, task)
        return State(
            data={"mjx": data, "task": task},
            obs=self._observe(data, task),
            reward=success.astype(jnp.float32),
            done=success,
            info={"success": success},
        )

    @contextlib.contextmanager
    def using_model(self, model: mjx.Model):
        """Within the block, reset/step simulate ``model`` (e.g. a traced randomised model
        inside DomainRandomization's vmap). Trace-time only; restores the nominal model."""
        nominal = self.mjx_model
        self.mjx_model = model
        try:
            yield
        finally:
            self.mjx_model = nominal

    def reset(self, key: jax.Array) -> State:
        return self.reset_with_model(self.mjx_model, key)

    def step(self, state: State, action: jax.Array) -> State:
        return self.step_with_model(self.mjx_model, state, action)

    @property
    def dt(self) -> float:
        return self.ctrl_dt

    def to_mj_data(self, state: State, index: int | None = None) -> mujoco.MjData:
        """A MuJoCo C MjData holding one env's configuration (for rendering)."""
        d = mujoco.MjData(self.mj_model)
        data = state.data["mjx"]
        pick = (lambda x: np.asarray(x)) if index is None else (lambda x: np.asarray(x)[index])
        d.qpos[:] = pick(data.qpos)
        d.qvel[:] = pick(data.qvel)
        if self.mj_model.nmocap:
            d.mocap_pos[:] = pick(data.mocap_pos)
            d.mocap_quat[:] = pick(data.mocap_quat)
        mujoco.mj_forward(self.mj_model, d)
        return d
