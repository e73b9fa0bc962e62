"""BimanualHandover: two 6-joint arms hand a bar over and place it in a tote on the left.

The right arm (base at y = -0.36) picks a 14 cm bar from a random pose on the right, lifts
it to the middle, the left arm (base at y = +0.36) grasps the bar's other end, the right hand
lets go, and the left arm places the bar in a randomly placed tote on the left. Success
(reward 1, episode ends): the bar rests on the table inside the tote.

Action [14], absolute joint-position control: right j1..j6 (rad), right gripper opening
(m), left j1..j6, left gripper opening; 16 actuators (each gripper drives two fingers).
Observation [47]: per arm (right, then left) q (6), qdot (6), gripper opening (1), tcp
position (3); bar position (3), bar quaternion wxyz (4), bar - right tcp (3), bar - left
tcp (3), tote centre xy (2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from resfit_jax.envs import mjcf
from resfit_jax.envs._mjx import mjx
from resfit_jax.envs.mjx_env import (
    ArmIndex,
    MjxTask,
    down_rotation,
    ik_step,
    nearest_grasp_yaw,
    solve_home,
    tcp_pose,
    tool_yaw,
    wrap_half,
    yaw_of,
    yaw_quat,
)
from resfit_jax.envs.scripted import (
    GRIP_CLOSED,
    GRIP_OPEN,
    ExpertState,
    ExpertStyle,
    ScriptedExpert,
    advance,
)

BAR_HALF = (0.015, 0.07, 0.015)
GRASP_OFFSET = 0.03  # each hand grasps this far from the bar centre along its length
TOTE_INNER_HALF = 0.09
ARM_Y = 0.36
HANDOVER = (0.40, 0.0, 0.22)  # bar centre at the handover (m)


class BimanualHandover(MjxTask):
    """Right arm picks a bar, hands it to the left arm, which places it in a tote."""

    def __init__(
        self,
        episode_length: int = 200,
        ctrl_dt: float = 0.05,
        timestep: float = 0.01,
        bar_x_range: tuple[float, float] = (0.36, 0.48),
        bar_y_range: tuple[float, float] = (-0.26, -0.16),
        bar_yaw_range: tuple[float, float] = (-0.4, 0.4),
        tote_x_range: tuple[float, float] = (0.38, 0.48),
        tote_y_range: tuple[float, float] = (0.16, 0.24),
        bar_mass: float = 0.08,
    ):
        self.episode_length = int(episode_length)
        self.ctrl_dt = float(ctrl_dt)
        self.bar_x_range, self.bar_y_range, self.bar_yaw_range = (
            bar_x_range,
            bar_y_range,
            bar_yaw_range,
        )
        self.tote_x_range, self.tote_y_range = tote_x_range, tote_y_range
        bodies = (
            mjcf.arm("r_", (0, -ARM_Y, 0), rgba="0.9 0.8 0.8 1")
            + mjcf.arm("l_", (0, ARM_Y, 0), rgba="0.8 0.85 0.95 1")
            + mjcf.tote("tote", TOTE_INNER_HALF)
            + mjcf.free_box("bar", BAR_HALF, bar_mass, "0.3 0.7 0.3 1")
        )
        pairs = "\n    ".join(
            [
                mjcf.gripper_pairs("r_", "bar"),
                mjcf.gripper_pairs("l_", "bar"),
                '<pair geom1="bar" geom2="table"/>',
                mjcf.tote_pairs("tote", "bar"),
            ]
            + [f'<pair geom1="{p}pad_{s}" geom2="table"/>' for p in ("r_", "l_") for s in "lr"]
        )
        actuators = mjcf.arm_actuators("r_") + "\n    " + mjcf.arm_actuators("l_")
        self.xml = mjcf.scene("BimanualHandover", timestep, bodies, actuators, pairs)
        self.mj_model = mujoco.MjModel.from_xml_string(self.xml)
        m = self.mj_model
        self.right, self.left = ArmIndex.build(m, "r_"), ArmIndex.build(m, "l_")
        self.arms = (self.right, self.left)
        self.bar_qpos = int(m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, "bar")])
        self.bar_body = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "bar")
        q0 = np.array([0, 0.3, 1.5, 1.3, 0, 0])
        self.home_r = solve_home(m, self.right, np.array([0.32, -ARM_Y + 0.06, 0.2]), np.pi, q0)
        self.home_l = solve_home(m, self.left, np.array([0.32, ARM_Y - 0.06, 0.2]), np.pi, q0)
        self.homes = (self.home_r, self.home_l)
        self._setup_mjx()

    def _init_data(self, model: mjx.Model, key: jax.Array):
        ks = jax.random.split(key, 5)
        u = lambda k, r: jax.random.uniform(k, (), minval=r[0], maxval=r[1])
        bar = jnp.stack(
            [u(ks[0], self.bar_x_range), u(ks[1], self.bar_y_range), jnp.float32(BAR_HALF[2])]
        )
        tote = jnp.stack([u(ks[3], self.tote_x_range), u(ks[4], self.tote_y_range)])
        qpos = self._home_qpos(jnp.zeros(self.mj_model.nq))
        qpos = qpos.at[self.bar_qpos : self.bar_qpos + 3].set(bar)
        qpos = qpos.at[self.bar_qpos + 3 : self.bar_qpos + 7].set(
            yaw_quat(u(ks[2], self.bar_yaw_range))
        )
        data = mjx.make_data(self.mj_model).replace(
            qpos=qpos,
            ctrl=self._ctrl_from_action(self.home_action),
            mocap_pos=jnp.array([[tote[0], tote[1], 0.0]]),
        )
        return data, {"tote": tote}

    def _observe(self, data, task):
        parts, tcps = self._proprio(data)
        bar = data.xpos[self.bar_body]
        parts += [bar, data.xquat[self.bar_body], bar - tcps[0], bar - tcps[1], task["tote"]]
        return jnp.concatenate(parts).astype(jnp.float32)

    def _success(self, data, task):
        bar = data.xpos[self.bar_body]
        inside = jnp.all(jnp.abs(bar[:2] - task["tote"]) < TOTE_INNER_HALF - 0.02)
        return inside & (bar[2] < BAR_HALF[2] + 0.005)


# Phases of the handover script.
(
    R_APPROACH,
    R_DESCEND,
    R_CLOSE,
    R_LIFT,
    MEET,
    L_DESCEND,
    L_CLOSE,
    R_RELEASE,
    L_CARRY,
    L_LOWER,
    L_RELEASE,
    DONE,
) = range(12)


class BimanualHandoverExpert(ScriptedExpert):
    """Right arm: pick the bar's right end, bring the bar to the handover pose (bar along
    world y). Left arm: grasp the other end, the right lets go, the left carries the bar over
    the tote, lowers it and lets go. A drop before the handover restarts the right pick."""

    lin_speed = 0.02
    ang_speed = 0.15

    def __init__(self, env: BimanualHandover, style: ExpertStyle = ExpertStyle()):
        self.env, self.style = env, style
        self.action_low, self.action_high = env.action_low, env.action_high

    def _act(self, es: ExpertState, data, task):
        env = self.env
        tcp_r, rot_r = tcp_pose(data, env.right)
        tcp_l, rot_l = tcp_pose(data, env.left)
        bar = data.xpos[env.bar_body]
        bar_yaw = yaw_of(data.xquat[env.bar_body])
        along = jnp.stack([-jnp.sin(bar_yaw), jnp.cos(bar_yaw), 0.0])  # bar's long axis
        end_r = bar - GRASP_OFFSET * along + jnp.concatenate([es.error[:2], jnp.zeros(1)])
        end_l = bar + GRASP_OFFSET * along
        phase, timer = es.phase, es.timer
        up = lambda p, dz: p + jnp.array([0.0, 0.0, dz])
        gz = BAR_HALF[2] + 0.003 - bar[2]  # grasp height correction
        handover = jnp.array(HANDOVER)
        # The right tcp target that brings the bar centre to the handover point.
        r_meet = handover + (tcp_r - bar)
        tote = jnp.concatenate([task["tote"] + es.error[2:], jnp.array([BAR_HALF[2] + 0.02])])
        l_carry = up(tote, 0.2 - tote[2]) + (tcp_l - bar)
        l_lower = tote + (tcp_l - bar)
        home_r = jnp.array([0.32, -ARM_Y + 0.06, 0.2])
        home_l = jnp.array([0.32, ARM_Y - 0.06, 0.2])
        r_targets = [
            up(end_r, 0.08 + gz),
            up(end_r, gz),
            up(end_r, gz),
            up(tcp_r, 0.2 - tcp_r[2]),
            r_meet,
            r_meet,
            r_meet,
            r_meet,
            home_r,
            home_r,
            home_r,
            home_r,
        ]
        l_targets = [
            home_l,
            home_l,
            home_l,
            home_l,
            up(end_l, 0.07),
            up(end_l, 0.003),
            up(end_l, 0.003),
            up(end_l, 0.003),
            l_carry,
            l_lower,
            tcp_l,
            up(tcp_l, 0.0),
        ]
        r_grip = [GRIP_OPEN, GRIP_OPEN] + [GRIP_CLOSED] * 5 + [GRIP_OPEN] * 5
        l_grip = [GRIP_OPEN] * 6 + [GRIP_CLOSED] * 4 + [GRIP_OPEN] * 2
        pr = jnp.stack(r_targets)[phase]
        pl = jnp.stack(l_targets)[phase]
        gr = jnp.array(r_grip)[phase]
        gl = jnp.array(l_grip)[phase]
        # Yaw: grasp across the bar (fingers close along the bar's short axis). While the
        # right hand holds the bar alone it turns the bar to lie along world y.
        across = bar_yaw + jnp.pi / 2
        yaw_r = nearest_grasp_yaw(rot_r, across, jnp.pi)
        yaw_r = jnp.where(
            (phase >= R_LIFT) & (phase <= MEET), tool_yaw(rot_r) + wrap_half(0.0 - bar_yaw), yaw_r
        )
        yaw_l = nearest_grasp_yaw(rot_l, across, jnp.pi)
        err_r, err_l = pr - tcp_r, pl - tcp_l
        ok = lambda e, tol=0.008: (jnp.linalg.norm(e[:2]) < tol) & (jnp.abs(e[2]) < 0.008)
        yaw_ok = jnp.abs(wrap_half(bar_yaw)) < 0.05
        held_r = jnp.linalg.norm(bar - tcp_r) < GRASP_OFFSET + 0.03
        held_l = jnp.linalg.norm(bar - tcp_l) < GRASP_OFFSET + 0.03
        nxt = phase
        nxt = jnp.where((phase == R_APPROACH) & ok(err_r), R_DESCEND, nxt)
        nxt = jnp.where((phase == R_DESCEND) & ok(err_r, 0.012), R_CLOSE, nxt)
        nxt = jnp.where((phase == R_CLOSE) & (timer >= 5), R_LIFT, nxt)
        nxt = jnp.where((phase == R_LIFT) & (tcp_r[2] > 0.18), MEET, nxt)
        nxt = jnp.where((phase == MEET) & ok(err_r) & ok(err_l) & yaw_ok, L_DESCEND, nxt)
        nxt = jnp.where((phase == L_DESCEND) & ok(err_l, 0.01), L_CLOSE, nxt)
        nxt = jnp.where((phase == L_CLOSE) & (timer >= 5), R_RELEASE, nxt)
        nxt = jnp.where((phase == R_RELEASE) & (timer >= 4), L_CARRY, nxt)
        nxt = jnp.where((phase == L_CARRY) & ok(err_l), L_LOWER, nxt)
        nxt = jnp.where((phase == L_LOWER) & ok(err_l), L_RELEASE, nxt)
        nxt = jnp.where((phase == L_RELEASE) & (timer >= 4), DONE, nxt)
        dropped = ((phase >= R_LIFT) & (phase <= L_CLOSE) & ~held_r) | (
            (phase >= L_CARRY) & (phase <= L_LOWER) & ~held_l
        )
        nxt = jnp.where(dropped & (phase <= L_CLOSE), R_APPROACH, nxt)
        nxt = jnp.where(dropped & (phase > L_CLOSE), DONE, nxt)
        v, w = self.lin_speed * es.speed, self.ang_speed * es.speed
        q_r = ik_step(data, env.right, pr, down_rotation(yaw_r), v, w)
        q_l = ik_step(data, env.left, pl, down_rotation(yaw_l), v, w)
        action = jnp.concatenate([q_r, gr[None], q_l, gl[None]])
        hold = jnp.concatenate(
            [data.qpos[env.right.qpos], gr[None], data.qpos[env.left.qpos], gl[None]]
        )
        return action, hold, advance(es, nxt)
