"""PegInsertion: one 6-joint arm picks a square peg and inserts it into a tight hole.

The peg (24 x 24 x 80 mm) stands at a random table position and yaw (±20°). The hole fixture (a
mocap body of four walls, 40 mm high) has a square hole with ``clearance`` total play, 8 mm by
default (a 32 mm hole, 4 mm per side). Its position and yaw (±20°) are randomised. The defaults
are chosen so that a BC base from 30 noisy demos lands in the 30-85% band that leaves room for
RL; pass ``clearance=0.003`` and wider ranges for a harder task. Success (reward 1, episode
ends): the peg's bottom is at least ``insert_depth`` below the fixture's top with the peg inside
the hole.

Action [7], absolute: joint position targets j1..j6 (rad) and gripper opening per finger
(m). Observation [32]: arm q (6), arm qdot (6), gripper opening (1), tcp position (3), peg
position (3), peg quaternion wxyz (4), peg - tcp (3), hole centre xy (2), hole yaw as
(cos 4y, sin 4y) (2; the square hole is 4-fold symmetric), peg xy - hole xy (2).
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

PEG_HALF = (0.012, 0.012, 0.04)
CLEARANCE = 0.008  # default hole width - peg width (m)
WALL_HALF_T = 0.02
FIXTURE_HEIGHT = 0.04
HOME_TCP = (0.42, 0.0, 0.2)


class PegInsertion(MjxTask):
    """Pick a square peg and insert it into a randomly placed and rotated hole."""

    def __init__(
        self,
        episode_length: int = 140,
        ctrl_dt: float = 0.05,
        timestep: float = 0.01,
        insert_depth: float = 0.02,
        peg_x_range: tuple[float, float] = (0.40, 0.50),
        peg_y_range: tuple[float, float] = (-0.16, -0.06),
        peg_yaw_range: tuple[float, float] = (-np.pi / 9, np.pi / 9),
        hole_x_range: tuple[float, float] = (0.42, 0.50),
        hole_y_range: tuple[float, float] = (0.12, 0.20),
        hole_yaw_range: tuple[float, float] = (-np.pi / 9, np.pi / 9),
        clearance: float = CLEARANCE,
        peg_mass: float = 0.06,
    ):
        """Ranges are uniform (m, rad); ``clearance`` is hole width minus peg width (m)."""
        if not 0.0 < clearance < 0.05:
            raise ValueError(f"PegInsertion: clearance={clearance} m must be in (0, 0.05)")
        self.episode_length = int(episode_length)
        self.ctrl_dt = float(ctrl_dt)
        self.insert_depth = float(insert_depth)
        self.peg_x_range, self.peg_y_range, self.peg_yaw_range = (
            peg_x_range,
            peg_y_range,
            peg_yaw_range,
        )
        self.hole_x_range, self.hole_y_range = hole_x_range, hole_y_range
        self.hole_yaw_range = hole_yaw_range
        self.clearance = float(clearance)
        self.hole_half = PEG_HALF[0] + self.clearance / 2
        bodies = (
            mjcf.arm("", (0, 0, 0))
            + mjcf.tote("hole", self.hole_half, FIXTURE_HEIGHT, WALL_HALF_T, "0.35 0.55 0.35 1")
            + mjcf.free_box("peg", PEG_HALF, peg_mass, "0.9 0.7 0.2 1")
        )
        pairs = "\n    ".join(
            [
                mjcf.gripper_pairs("", "peg", friction=1.0, torsion=None),
                '<pair geom1="peg" geom2="table"/>',
                mjcf.tote_pairs("hole", "peg"),
                '<pair geom1="pad_l" geom2="table"/>',
                '<pair geom1="pad_r" geom2="table"/>',
            ]
        )
        self.xml = mjcf.scene("PegInsertion", timestep, bodies, mjcf.arm_actuators(""), pairs)
        self.mj_model = mujoco.MjModel.from_xml_string(self.xml)
        self.arm = ArmIndex.build(self.mj_model, "")
        self.arms = (self.arm,)
        m = self.mj_model
        self.peg_qpos = int(m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, "peg")])
        self.peg_body = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "peg")
        self.home_q = solve_home(
            m, self.arm, np.array(HOME_TCP), np.pi, np.array([0, 0.3, 1.5, 1.3, 0, 0])
        )
        self.homes = (self.home_q,)
        self._setup_mjx()

    def _init_data(self, model: mjx.Model, key: jax.Array):
        ks = jax.random.split(key, 6)
        u = lambda k, r: jax.random.uniform(k, (), minval=r[0], maxval=r[1])
        peg_pos = jnp.stack(
            [u(ks[0], self.peg_x_range), u(ks[1], self.peg_y_range), jnp.float32(PEG_HALF[2])]
        )
        hole = jnp.stack([u(ks[3], self.hole_x_range), u(ks[4], self.hole_y_range)])
        hole_yaw = u(ks[5], self.hole_yaw_range)
        qpos = self._home_qpos(jnp.zeros(self.mj_model.nq))
        qpos = qpos.at[self.peg_qpos : self.peg_qpos + 3].set(peg_pos)
        qpos = qpos.at[self.peg_qpos + 3 : self.peg_qpos + 7].set(
            yaw_quat(u(ks[2], self.peg_yaw_range))
        )
        data = mjx.make_data(self.mj_model).replace(
            qpos=qpos,
            ctrl=self._ctrl_from_action(self.home_action),
            mocap_pos=jnp.array([[hole[0], hole[1], 0.0]]),
            mocap_quat=yaw_quat(hole_yaw)[None],
        )
        return data, {"hole": hole, "hole_yaw": hole_yaw}

    def _observe(self, data, task):
        proprio, (tcp,) = self._proprio(data)
        peg = data.xpos[self.peg_body]
        yaw4 = 4.0 * task["hole_yaw"]
        return jnp.concatenate(
            proprio
            + [
                peg,
                data.xquat[self.peg_body],
                peg - tcp,
                task["hole"],
                jnp.stack([jnp.cos(yaw4), jnp.sin(yaw4)]),
                peg[:2] - task["hole"],
            ]
        ).astype(jnp.float32)

    def _success(self, data, task):
        peg = data.xpos[self.peg_body]
        bottom = peg[2] - PEG_HALF[2]
        centred = jnp.linalg.norm(peg[:2] - task["hole"]) < self.hole_half
        return centred & (bottom < FIXTURE_HEIGHT - self.insert_depth)


class PegInsertionExpert(PickAndPlaceScript):
    """Grasp the peg near its top, align it over the hole (position and yaw), then lower it
    slowly into the hole."""

    grasp_dz = PEG_HALF[2] - 0.02  # pads on the top half of the peg
    carry_z = 0.22
    lower_speed = 0.25
    place_tolerance = 0.001

    def __init__(self, env: PegInsertion, style: ExpertStyle = ExpertStyle()):
        self.env, self.style, self.arm = env, style, env.arm
        self.action_low, self.action_high = env.action_low, env.action_high

    def _object(self, data):
        return data.xpos[self.env.peg_body], yaw_of(data.xquat[self.env.peg_body])

    def _place_point(self, data):
        rot = data.xmat[self.env.peg_body].reshape(3, 3)
        return data.xpos[self.env.peg_body] - PEG_HALF[2] * rot[:, 2]  # bottom face centre

    def _place(self, data, task):
        # End of LOWER: the peg's bottom 5 mm above the table (fully inserted).
        return PlaceTarget(xy=task["hole"], z=jnp.float32(0.005), yaw=task["hole_yaw"])
