"""Delta end-effector control of the MJX arm tasks (``control="ee_delta"``).

Action per arm, in order: [dx, dy, dz, dyaw] in [-1, 1], then the gripper opening (m, the
joint action's own units and bounds). A step moves the tool-centre target by
``lin_scale`` metres per unit along world x, y, z and turns the tool's yaw about world z by
``ang_scale`` radians per unit, the tool kept pointing down (every scripted expert holds it
so); one damped-least-squares IK step (``mjx_env.ik_step``) from the commanded pose (the
pose of the last joint targets, not the measured one, so the PD's tracking lag never adds
up to drift) turns that into joint targets for the task's joint PD. A zero action keeps
the command: the arm holds still. A correction persists: it moves the commanded pose,
which the next step starts from.

The scripted experts emit the same deltas (``DeltaExpert``): the expert's joint target is
mapped through forward kinematics to the tool pose it reaches, and the delta is that pose
minus the commanded one, so the environment's IK step reproduces the expert's joint target
within IK tolerance.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resfit_jax.envs._mjx import mjx

CONTROLS = ("joint", "ee_delta")
EE_SIZE = 5  # per arm: dx, dy, dz, dyaw, gripper
IK_DAMPING = 1e-4  # the IK step solves for the small pose change nearly exactly


def _wrap_pi(angle: jax.Array) -> jax.Array:
    return (angle + jnp.pi) % (2 * jnp.pi) - jnp.pi


def commanded(task: Any, model: Any, data: Any) -> Any:
    """``data`` with each arm's joints at its last joint target (data.ctrl) and kinematics
    recomputed: where the controller has told the arm to be."""
    qpos = jnp.asarray(data.qpos)
    for arm in task.arms:
        qpos = qpos.at[arm.qpos].set(jnp.asarray(data.ctrl)[arm.ctrl[:6]])
    return mjx.kinematics(model, data.replace(qpos=qpos))


def joint_action(task: Any, data: Any, action: jax.Array, model: Any = None) -> jax.Array:
    """ee_delta action [5 * arms] -> joint action [7 * arms] (joint targets, gripper).

    The pose change is applied to the commanded pose (the last joint targets), not the
    measured one, so the PD's tracking lag never accumulates into drift: a zero action keeps
    the command, and the arm settles there."""
    return _ik_from(task, commanded(task, task.mjx_model if model is None else model, data), action)


def joint_action_mujoco(task: Any, model: Any, data: Any, action: np.ndarray) -> np.ndarray:
    """``joint_action`` on MuJoCo C (``mujoco.MjModel`` / ``MjData``; the simulated robot):
    the commanded pose from data.ctrl through ``mj_kinematics`` on a scratch copy."""
    import mujoco

    cmd = mujoco.MjData(model)
    cmd.qpos[:] = data.qpos
    for arm in task.arms:
        cmd.qpos[arm.qpos] = data.ctrl[np.asarray(arm.ctrl)[:6]]
    mujoco.mj_kinematics(model, cmd)
    return np.asarray(_ik_from(task, cmd, jnp.asarray(action, jnp.float32)), np.float64)


def _ik_from(task: Any, cmd: Any, action: jax.Array) -> jax.Array:
    """Joint action [7 * arms]: one IK step per arm from the commanded kinematics ``cmd``."""
    from resfit_jax.envs.mjx_env import down_rotation, ik_step, tcp_pose, tool_yaw

    parts = []
    for i, arm in enumerate(task.arms):
        a = action[EE_SIZE * i : EE_SIZE * (i + 1)]
        tcp, rot = tcp_pose(cmd, arm)
        pos_t = tcp + task.ee_lin_scale * a[:3]
        rot_t = down_rotation(tool_yaw(rot) + task.ee_ang_scale * a[3])
        # the error is the delta itself: no clipping beyond the action's bound
        q_t = ik_step(
            cmd, arm, pos_t, rot_t, 2.0 * task.ee_lin_scale, 2.0 * task.ee_ang_scale, IK_DAMPING
        )
        parts += [q_t, a[4:5]]
    return jnp.concatenate(parts)


def ee_action(task: Any, model: Any, data: Any, joint: jax.Array) -> jax.Array:
    """joint action [7 * arms] -> the ee_delta action [5 * arms] taking the commanded pose to
    the one the joint targets reach (forward kinematics), clipped to [-1, 1]."""
    from resfit_jax.envs.mjx_env import tcp_pose, tool_yaw

    qpos = jnp.asarray(data.qpos)
    for i, arm in enumerate(task.arms):
        qpos = qpos.at[arm.qpos].set(joint[7 * i : 7 * i + 6])
    reached = mjx.kinematics(model, data.replace(qpos=qpos))
    cmd = commanded(task, model, data)
    parts = []
    for i, arm in enumerate(task.arms):
        tcp, rot = tcp_pose(cmd, arm)
        tcp_t, rot_t = tcp_pose(reached, arm)
        d_pos = (tcp_t - tcp) / task.ee_lin_scale
        d_yaw = _wrap_pi(tool_yaw(rot_t) - tool_yaw(rot)) / task.ee_ang_scale
        delta = jnp.clip(jnp.concatenate([d_pos, d_yaw[None]]), -1.0, 1.0)
        parts += [delta, joint[7 * i + 6 : 7 * i + 7]]
    return jnp.concatenate(parts)


class DeltaExpert:
    """A task's scripted expert emitting ee_delta actions (see the module docstring); the
    same ``init`` / ``act`` / ``reset`` as the joint expert it wraps."""

    def __init__(self, joint_expert: Any, task: Any):
        self.joint, self.task = joint_expert, task
        self.style = joint_expert.style
        # the joint expert clips to the joint bounds, this one to the ee_delta bounds
        joint_expert.action_low, joint_expert.action_high = task.joint_low, task.joint_high
        self.action_low, self.action_high = task.action_low, task.action_high

    def init(self, key: jax.Array):
        return self.joint.init(key)

    def reset(self, estate, done: jax.Array):
        return self.joint.reset(estate, done)

    def act(self, estate, env_state) -> tuple[jax.Array, Any]:
        q_action, estate = self.joint.act(estate, env_state)
        data = env_state.data["mjx"]
        action = ee_action(self.task, self.task.mjx_model, data, q_action)
        return jnp.clip(action, self.action_low, self.action_high), estate
