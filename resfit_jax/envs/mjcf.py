"""MJCF written by the project: a 6-joint arm with a parallel gripper, totes, a hole fixture.

Everything is primitive geoms with explicit inertials; nothing is loaded from disk or the
network. Collisions are opt-in: every geom has contype = conaffinity = 0 and the scenes list
the geom pairs that may touch in <contact><pair>, which keeps MJX's fixed contact slots few.

Arm (per ``prefix``): j1 base yaw (z), j2 shoulder pitch, j3 elbow pitch, j4 wrist pitch (y), j5
wrist roll (x), j6 tool yaw (z); j4-j6 intersect (a spherical wrist). At q = 0 the arm points
straight up. The hand hangs on j6 along the tool axis; two box finger pads (centred on the tcp)
slide along the hand's y axis, each driven by its own position actuator from one gripper command
(the opening per finger, metres). The tool-centre site "<prefix>tcp" sits between the pads. Arm
links are gravity compensated, so position targets are tracked without sag.
"""

from __future__ import annotations

ARM_JOINTS = ("j1", "j2", "j3", "j4", "j5", "j6")
ARM_RANGES = ((-3.0, 3.0), (-2.0, 2.0), (-2.8, 2.8), (-2.8, 2.8), (-2.0, 2.0), (-3.1, 3.1))
SHOULDER_HEIGHT = 0.30
UPPER_ARM = 0.30
FOREARM = 0.28
WRIST_TO_TCP = 0.14
FINGER_OPEN = 0.04  # max opening per finger (m)
FINGER_PAD = (0.014, 0.012, 0.02)  # finger pad half-sizes (x, y, z)


def options(timestep: float, iterations: int = 6, ls_iterations: int = 8) -> str:
    """Solver settings tuned for MJX: Newton, few iterations, implicitfast, no eulerdamp."""
    return f"""
  <option timestep="{timestep}" iterations="{iterations}" ls_iterations="{ls_iterations}"
          integrator="implicitfast" solver="Newton" cone="pyramidal">
    <flag eulerdamp="disable"/>
  </option>
  <visual><global offwidth="640" offheight="480"/><quality shadowsize="2048"/></visual>
  <default>
    <geom contype="0" conaffinity="0" solref="0.005 1" solimp="0.95 0.99 0.001"
          friction="1 0.005 0.0001"/>
    <joint damping="2" armature="0.05"/>
    <position kp="400" dampratio="1"/>
  </default>"""


def world(extra_bodies: str, extra_assets: str = "") -> str:
    """Floor (the table top, z = 0), lights, cameras: "front" (wide, for videos) and
    "workspace" (the pixel tasks' fixed view of the table); each arm has a "{prefix}wrist"
    camera on its hand looking past the fingers."""
    return f"""
  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1="0.55 0.5 0.45" rgb2="0.5 0.45 0.4"
             width="256" height="256"/>
    <material name="table" texture="grid" texrepeat="8 8"/>
    {extra_assets}
  </asset>
  <worldbody>
    <light pos="0.3 0 1.5" dir="0 0 -1" diffuse="0.8 0.8 0.8"/>
    <camera name="front" pos="1.25 0 0.75" xyaxes="0 1 0 -0.5 0 0.85"/>
    <camera name="workspace" pos="0.9 0.02 0.55" xyaxes="0 1 0 -0.75 0 0.66" fovy="45"/>
    <geom name="table" type="plane" size="1.5 1.5 0.05" material="table"/>
    {extra_bodies}
  </worldbody>"""


def arm(
    prefix: str,
    pos: tuple[float, float, float] = (0.0, 0.0, 0.0),
    yaw: float = 0.0,
    rgba: str = "0.85 0.85 0.9 1",
) -> str:
    """Body XML of one arm with gripper; joints/geoms/sites are named ``{prefix}{name}``."""
    p = prefix
    x, y, z = pos
    pad_x, pad_y, pad_z = FINGER_PAD
    r = lambda i: f'range="{ARM_RANGES[i][0]} {ARM_RANGES[i][1]}"'
    return f"""
    <body name="{p}base" pos="{x} {y} {z}" euler="0 0 {yaw}">
      <geom type="cylinder" size="0.07 0.04" pos="0 0 0.04" rgba="0.3 0.3 0.35 1"/>
      <body name="{p}link1" pos="0 0 0.08" gravcomp="1">
        <inertial pos="0 0 0.1" mass="2" diaginertia="0.02 0.02 0.01"/>
        <joint name="{p}j1" axis="0 0 1" {r(0)}/>
        <geom type="capsule" fromto="0 0 0 0 0 {SHOULDER_HEIGHT - 0.08}" size="0.05" rgba="{rgba}"/>
        <body name="{p}link2" pos="0 0 {SHOULDER_HEIGHT - 0.08}" gravcomp="1">
          <inertial pos="0 0 0.15" mass="1.5" diaginertia="0.015 0.015 0.003"/>
          <joint name="{p}j2" axis="0 1 0" {r(1)}/>
          <geom type="capsule" fromto="0 0 0 0 0 {UPPER_ARM}" size="0.04" rgba="{rgba}"/>
          <body name="{p}link3" pos="0 0 {UPPER_ARM}" gravcomp="1">
            <inertial pos="0 0 0.14" mass="1" diaginertia="0.008 0.008 0.002"/>
            <joint name="{p}j3" axis="0 1 0" {r(2)}/>
            <geom type="capsule" fromto="0 0 0 0 0 {FOREARM}" size="0.035" rgba="{rgba}"/>
            <body name="{p}wrist" pos="0 0 {FOREARM}" gravcomp="1">
              <inertial pos="0 0 0" mass="0.3" diaginertia="0.001 0.001 0.001"/>
              <joint name="{p}j4" axis="0 1 0" {r(3)}/>
              <joint name="{p}j5" axis="1 0 0" {r(4)}/>
              <geom type="sphere" size="0.035" rgba="0.3 0.3 0.35 1"/>
              <body name="{p}hand" gravcomp="1">
                <inertial pos="0 0 0.06" mass="0.5" diaginertia="0.002 0.002 0.001"/>
                <joint name="{p}j6" axis="0 0 1" {r(5)}/>
                <geom type="box" size="0.02 0.055 0.02" pos="0 0 0.075" rgba="0.3 0.3 0.35 1"/>
                <camera name="{p}wrist" pos="0.09 0 0.06" xyaxes="0.93 0 0.37 0 -1 0" fovy="70"/>
                <site name="{p}tcp" pos="0 0 {WRIST_TO_TCP}" size="0.006" rgba="1 0 0 0.5"/>
                <body name="{p}finger_l" pos="0 0 {WRIST_TO_TCP}" gravcomp="1">
                  <inertial pos="0 0 0" mass="0.05" diaginertia="1e-5 1e-5 1e-5"/>
                  <joint name="{p}finger_l" type="slide" axis="0 1 0" range="0 {FINGER_OPEN}"
                         damping="3" armature="0.1"/>
                  <geom name="{p}pad_l" type="box" size="{pad_x} {pad_y / 3:.4f} {pad_z}"
                        pos="0 {pad_y / 3:.4f} 0" friction="2 0.01 0.0001" rgba="0.2 0.2 0.2 1"/>
                </body>
                <body name="{p}finger_r" pos="0 0 {WRIST_TO_TCP}" gravcomp="1">
                  <inertial pos="0 0 0" mass="0.05" diaginertia="1e-5 1e-5 1e-5"/>
                  <joint name="{p}finger_r" type="slide" axis="0 -1 0" range="0 {FINGER_OPEN}"
                         damping="3" armature="0.1"/>
                  <geom name="{p}pad_r" type="box" size="{pad_x} {pad_y / 3:.4f} {pad_z}"
                        pos="0 {-pad_y / 3:.4f} 0" friction="2 0.01 0.0001" rgba="0.2 0.2 0.2 1"/>
                </body>
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>"""


def arm_actuators(prefix: str) -> str:
    """Position actuators: 6 arm joints, then the two fingers (driven by one command)."""
    p = prefix
    lines = []
    for i, j in enumerate(ARM_JOINTS):
        kp = 600 if i < 3 else 200
        lines.append(
            f'<position name="{p}{j}" joint="{p}{j}" kp="{kp}" ctrlrange="{ARM_RANGES[i][0]} '
            f'{ARM_RANGES[i][1]}" forcerange="-150 150"/>'
        )
    for f in ("finger_l", "finger_r"):
        lines.append(
            f'<position name="{p}{f}" joint="{p}{f}" kp="300" ctrlrange="0 {FINGER_OPEN}" '
            f'forcerange="-25 25"/>'
        )
    return "\n    ".join(lines)


def tote(
    name: str,
    inner_half: float = 0.07,
    wall_height: float = 0.05,
    wall_half_thickness: float = 0.006,
    rgba: str = "0.2 0.45 0.75 1",
) -> str:
    """Four walls around a square opening of half-size ``inner_half`` on the table (a
    floorless tote, or a hole fixture): a mocap body with wall geoms ``{name}_wall{0..3}``.
    Move it by setting mocap_pos / mocap_quat."""
    h, t, w = inner_half, wall_half_thickness, wall_height / 2
    walls = [
        (h + t, 0, t, h + 2 * t),
        (-(h + t), 0, t, h + 2 * t),
        (0, h + t, h, t),
        (0, -(h + t), h, t),
    ]
    geoms = "\n".join(
        f'      <geom name="{name}_wall{i}" type="box" size="{sx} {sy} {w}" pos="{px} {py} {w}" '
        f'rgba="{rgba}"/>'
        for i, (px, py, sx, sy) in enumerate(walls)
    )
    return f"""
    <body name="{name}" mocap="true" pos="0.5 0.2 0">
{geoms}
    </body>"""


def tote_pairs(name: str, other: str) -> str:
    return "\n    ".join(f'<pair geom1="{name}_wall{i}" geom2="{other}"/>' for i in range(4))


def free_box(
    name: str,
    half_size: tuple[float, float, float],
    mass: float,
    rgba: str,
    friction: str = "1.5 0.01 0.0001",
) -> str:
    sx, sy, sz = half_size
    return f"""
    <body name="{name}" pos="0.5 0 {sz}">
      <freejoint name="{name}"/>
      <geom name="{name}" type="box" size="{sx} {sy} {sz}" mass="{mass}" rgba="{rgba}"
            friction="{friction}"/>
    </body>"""


def gripper_pairs(
    prefix: str, obj: str, friction: float = 2.0, torsion: float | None = 0.03
) -> str:
    """Pad-object pairs with sliding ``friction``. With ``torsion`` (m) the contacts also
    have torsional friction (condim 4), so a held object does not pivot about the pad
    normal; None keeps condim 3 (a little compliance in the grasp, which lets a peg align)."""
    if torsion is None:
        return "\n    ".join(
            f'<pair geom1="{prefix}pad_{s}" geom2="{obj}" friction="{friction} '
            f'{friction} 0.005 0.0001 0.0001"/>'
            for s in "lr"
        )
    return "\n    ".join(
        f'<pair geom1="{prefix}pad_{s}" geom2="{obj}" condim="4" '
        f'friction="{friction} {friction} {torsion} 0.0001 0.0001"/>'
        for s in "lr"
    )


def scene(
    name: str, timestep: float, bodies: str, actuators: str, pairs: str, extra_assets: str = ""
) -> str:
    return f"""<mujoco model="{name}">
  <compiler angle="radian" autolimits="true"/>
  {options(timestep)}
  {world(bodies, extra_assets)}
  <contact>
    {pairs}
  </contact>
  <actuator>
    {actuators}
  </actuator>
</mujoco>"""
