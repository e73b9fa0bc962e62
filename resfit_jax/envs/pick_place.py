"""PickPlace: one 6-joint arm with a parallel gripper puts a cube into a tote.

The cube (4 cm) starts at a random table position and yaw; the floorless tote (14 cm inside)
is placed at random on the arm's left. Success (reward 1, episode ends): the cube rests on
the table inside the tote.

Action [7], absolute: joint position targets j1..j6 (rad) and the gripper opening per finger
(m, 0 = closed, 0.04 = open). Observation [28]: arm q (6), arm qdot (6), gripper opening
(1), tcp position (3), cube position (3), cube quaternion wxyz (4), cube - tcp (3), tote
centre xy (2). Control at 20 Hz (ctrl_dt 0.05 s, 5 physics steps of 10 ms).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from resfit_jax.envs import mjcf
from resfit_jax.envs._mjx import mjx
from resfit_jax.envs.mjx_env import ArmIndex, MjxTask, solve_home, yaw_of, yaw_quat
from resfit_jax.envs.scripted import ExpertStyle, PickAndPlaceScript, PlaceTarget

CUBE_HALF = 0.02
TOTE_INNER_HALF = 0.07
HOME_TCP = (0.42, 0.0, 0.18)


class PickPlace(MjxTask):
    """Pick a cube from a random table pose and place it in a randomly placed tote."""

    def __init__(
        self,
        episode_length: int = 120,
        ctrl_dt: float = 0.05,
        timestep: float = 0.01,
        cube_x_range: tuple[float, float] = (0.36, 0.54),
        cube_y_range: tuple[float, float] = (-0.22, -0.02),
        cube_yaw_range: tuple[float, float] = (-np.pi / 4, np.pi / 4),
        tote_x_range: tuple[float, float] = (0.38, 0.52),
        tote_y_range: tuple[float, float] = (0.16, 0.26),
        cube_mass: float = 0.08,
    ):
        self.episode_length = int(episode_length)
        self.ctrl_dt = float(ctrl_dt)
        self.cube_x_range, self.cube_y_range = cube_x_range, cube_y_range
        self.cube_yaw_range = cube_yaw_range
        self.tote_x_range, self.tote_y_range = tote_x_range, tote_y_range
        bodies = (
            mjcf.arm("", (0, 0, 0))
            + mjcf.tote("tote", TOTE_INNER_HALF)
            + mjcf.free_box("cube", (CUBE_HALF,) * 3, cube_mass, "0.85 0.25 0.2 1")
        )
        pairs = "\n    ".join(
            [
                mjcf.gripper_pairs("", "cube"),
                '<pair geom1="cube" geom2="table"/>',
                mjcf.tote_pairs("tote", "cube"),
                '<pair geom1="pad_l" geom2="table"/>',
                '<pair geom1="pad_r" geom2="table"/>',
            ]
        )
        self.xml = mjcf.scene("PickPlace", timestep, bodies, mjcf.arm_actuators(""), pairs)
        self.mj_model = mujoco.MjModel.from_xml_string(self.xml)
        self.arm = ArmIndex.build(self.mj_model, "")
        self.arms = (self.arm,)
        m = self.mj_model
        self.cube_qpos = int(m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, "cube")])
        self.cube_body = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "cube")
        self.home_q = solve_home(
            m, self.arm, np.array(HOME_TCP), np.pi, np.array([0, 0.3, 1.5, 1.3, 0, 0])
        )
        self.homes = (self.home_q,)
        self._setup_mjx()

    # -- task hooks -------------------------------------------------------------------------
    def _init_data(self, model: mjx.Model, key: jax.Array):
        k_cx, k_cy, k_yaw, k_tx, k_ty = jax.random.split(key, 5)
        u = lambda k, r: jax.random.uniform(k, (), minval=r[0], maxval=r[1])
        cube_pos = jnp.stack(
            [u(k_cx, self.cube_x_range), u(k_cy, self.cube_y_range), jnp.float32(CUBE_HALF)]
        )
        tote = jnp.stack([u(k_tx, self.tote_x_range), u(k_ty, self.tote_y_range)])
        qpos = self._home_qpos(jnp.zeros(self.mj_model.nq))
        qpos = qpos.at[self.cube_qpos : self.cube_qpos + 3].set(cube_pos)
        qpos = qpos.at[self.cube_qpos + 3 : self.cube_qpos + 7].set(
            yaw_quat(u(k_yaw, self.cube_yaw_range))
        )
        data = mjx.make_data(self.mj_model).replace(
            qpos=qpos,
            ctrl=self._ctrl_from_action(self.home_action),
            mocap_pos=jnp.array([[tote[0], tote[1], 0.0]]),
        )
        return data, {"tote": tote}

    def _observe(self, data, task):
        proprio, (tcp,) = self._proprio(data)
        cube = data.xpos[self.cube_body]
        cube_quat = data.xquat[self.cube_body]
        return jnp.concatenate(proprio + [cube, cube_quat, cube - tcp, task["tote"]]).astype(
            jnp.float32
        )

    def _success(self, data, task):
        cube = data.xpos[self.cube_body]
        inside = jnp.all(jnp.abs(cube[:2] - task["tote"]) < TOTE_INNER_HALF - CUBE_HALF + 0.005)
        resting = cube[2] < CUBE_HALF + 0.005
        return inside & resting


class PickPlaceExpert(PickAndPlaceScript):
    """Scripted PickPlace expert: pick the cube, carry it over the tote, lower, release."""

    def __init__(self, env: PickPlace, style: ExpertStyle = ExpertStyle()):
        self.env, self.style, self.arm = env, style, env.arm
        self.action_low, self.action_high = env.action_low, env.action_high

    def _object(self, data):
        return data.xpos[self.env.cube_body], yaw_of(data.xquat[self.env.cube_body])

    def _place(self, data, task):
        return PlaceTarget(xy=task["tote"], z=jnp.float32(CUBE_HALF + 0.017))
