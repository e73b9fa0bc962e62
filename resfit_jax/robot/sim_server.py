"""A simulated robot for the robot loop: one of the project's tasks on MuJoCo C, in-process
(``SimRobot``) or in a separate server process behind an authenticated local socket
(``serve`` / ``RemoteRobot``), with configurable latency and jitter.

Both implement ``resfit_jax.robot.loop.RobotInterface``. Each ``send_action``
advances the simulation by one control period (``task.ctrl_dt``); the wall clock is not
simulated, so the robot loop's rate control and deadline checks see only the transport and
the configured latency. ``success()`` is the simulator's ground truth, used by a scripted
operator (``robot.operator.oracle_labeller``) in place of a person.

The link is ``robot.link``: length-prefixed JSON frames (no pickle) with a mutual HMAC
challenge, timeouts, one client at a time and the robot stopped on any abnormal end.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import sys
import threading
import time

import numpy as np

from resfit_jax.robot.link import RemoteRobot, RobotServer, exit_with_parent

__all__ = ["KEY_ENV", "RemoteRobot", "SimRobot", "new_key", "read_key", "serve", "spawn_server"]

KEY_ENV = "RESFIT_ROBOT_KEY"


class SimRobot:
    """A MuJoCo C rollout of an MJX task (``envs.make(name)``) driven one command at a time.
    Observations [O] and actions [A] are exactly those of the MJX task (float32, task units).

    With ``cameras`` (names, or "default": the workspace and wrist cameras) the robot is the
    camera variant (``envs.cameras.PixelTask``): observations are {"state": the arm
    proprioception, camera: uint8 [R, R, 3]}, frames rendered from the MuJoCo C state by the
    same MuJoCo Warp renderer as the simulated pixel tasks, at ``resolution`` px (default: the
    camera variant's, else 64).
    """

    def __init__(
        self,
        task_name: str = "PickPlace",
        seed: int = 0,
        latency_s: float = 0.0,
        jitter_s: float = 0.0,
        cameras=None,
        resolution: int | None = None,
        **task_kwargs,
    ):
        import jax
        import mujoco

        from resfit_jax import envs
        from resfit_jax.envs.mjx_env import MjxTask

        task = envs.make(task_name, **task_kwargs)
        if (
            not isinstance(task, MjxTask)
            and isinstance(task.unwrapped, MjxTask)
            and hasattr(task, "cameras")
        ):  # a camera variant, e.g. PixelPickPlace
            if resolution is not None and resolution != task.resolution:
                task = envs.make(task_name, resolution=resolution, **task_kwargs)
            cameras, resolution = cameras or task.cameras, task.resolution
            task = task.unwrapped
        resolution = 64 if resolution is None else int(resolution)
        if not isinstance(task, MjxTask):
            raise ValueError(
                f"SimRobot needs a MuJoCo task; {task_name} is not one "
                f"(choose from {envs.MANIPULATION_TASKS})."
            )
        self.task, self.task_name = task, task_name
        self._mujoco, self._jax = mujoco, jax
        self.model = task.mj_model
        self.data = mujoco.MjData(self.model)
        self.latency_s, self.jitter_s = float(latency_s), float(jitter_s)
        self._rng = np.random.default_rng(seed)
        self._key = jax.random.key(seed)
        self._seed, self._scene = int(seed), None
        self._info: dict | None = None
        self.stopped = False
        self._renderer = None
        if cameras:
            from resfit_jax.envs.cameras import CameraRenderer, default_cameras

            names = default_cameras(self.model) if cameras == "default" else tuple(cameras)
            renderer = CameraRenderer(self.model, 1, names, resolution)
            self._renderer = jax.jit(renderer)
            self.cameras = {c: (resolution, resolution, 3) for c in renderer.cameras}
        else:
            self.cameras = {}
        self.low = np.asarray(task.action_low, np.float32)
        self.high = np.asarray(task.action_high, np.float32)
        self.episodes = 0

    # -- spec ---------------------------------------------------------------------------------
    @property
    def observation_size(self) -> int:
        if self.cameras:
            return int(self.task.PROPRIO_SIZE * len(self.task.arms))
        return int(self.task.observation_spec.shape[0])

    @property
    def action_size(self) -> int:
        return int(self.task.action_size)

    def spec(self) -> dict:
        return {
            "task": self.task_name,
            "observation_size": self.observation_size,
            "action_size": self.action_size,
            "control_hz": 1.0 / self.task.ctrl_dt,
            "action_low": self.low.tolist(),
            "action_high": self.high.tolist(),
            "action_obs_index": list(self.task.action_obs_index),
            "cameras": {c: list(v) for c, v in self.cameras.items()},
            "exact_scenes": True,
        }

    exact_scenes = True  # set_scene(i) makes the next reset() scene i exactly (blind A/B)

    def set_scene(self, scene: int) -> None:
        """Make the next reset() start scene ``scene`` (key fold_in(seed, scene)) exactly,
        whatever came before; later resets go on with the robot's own random stream."""
        if isinstance(scene, bool) or not isinstance(scene, int | np.integer) or scene < 0:
            raise ValueError(f"SimRobot.set_scene takes a scene id >= 0, got {scene!r}.")
        self._scene = int(scene)

    # -- RobotInterface -----------------------------------------------------------------------
    def _delay(self) -> None:
        d = self.latency_s + (self._rng.uniform(0.0, self.jitter_s) if self.jitter_s else 0.0)
        if d > 0:
            time.sleep(d)

    def reset(self) -> np.ndarray:
        """A new randomised scene (the task's own initial-state distribution), or the scene
        named by the last set_scene()."""
        if self._scene is not None:
            k = self._jax.random.fold_in(self._jax.random.key(self._seed), self._scene)
            self._scene = None
        else:
            self._key, k = self._jax.random.split(self._key)
        init, info = self.task._init_data(self.task.mjx_model, k)
        d = self.data
        self._mujoco.mj_resetData(self.model, d)
        d.qpos[:] = np.asarray(init.qpos)
        d.ctrl[:] = np.asarray(init.ctrl)
        if self.model.nmocap:
            d.mocap_pos[:] = np.asarray(init.mocap_pos)
            d.mocap_quat[:] = np.asarray(init.mocap_quat)
        self._mujoco.mj_forward(self.model, d)
        self._info = info
        self.stopped = False
        self.episodes += 1
        return self.observe()

    def observe(self) -> np.ndarray:
        if self._info is None:
            raise RuntimeError("SimRobot.observe before reset().")
        self._delay()
        if not self.cameras:
            return np.asarray(self.task._observe(self.data, self._info), np.float32)
        d = self.data
        proprio, _ = self.task._proprio(d)
        scene = {
            f: np.asarray(getattr(d, f), np.float32)[None]
            for f in ("geom_xpos", "geom_xmat", "cam_xpos", "cam_xmat")
        }
        scene["geom_xmat"] = scene["geom_xmat"].reshape(1, -1, 3, 3)
        scene["cam_xmat"] = scene["cam_xmat"].reshape(1, -1, 3, 3)
        frames = self._renderer(scene)
        return {
            "state": np.concatenate([np.asarray(x, np.float32) for x in proprio]),
            **{c: np.asarray(x[0]) for c, x in frames.items()},
        }

    def send_action(self, action: np.ndarray) -> None:
        if self._info is None:
            raise RuntimeError("SimRobot.send_action before reset().")
        if self.stopped:
            raise RuntimeError("SimRobot is emergency-stopped; reset() to re-enable it.")
        a = np.asarray(action, np.float64)
        if a.shape != (self.action_size,) or not np.all(np.isfinite(a)):
            raise ValueError(
                f"SimRobot.send_action: need a finite action [{self.action_size}], "
                f"got shape {a.shape}."
            )
        a = np.clip(a, self.low, self.high)
        if self.task.control == "ee_delta":  # the same IK step as the MJX task's
            from resfit_jax.envs.ee_control import joint_action_mujoco

            a = joint_action_mujoco(self.task, self.model, self.data, a)
            a = np.clip(a, self.task.joint_low, self.task.joint_high)
        ctrl = np.zeros(self.model.nu)
        for i, arm in enumerate(self.task.arms):
            a7 = a[7 * i : 7 * i + 7]
            ctrl[np.asarray(arm.ctrl)] = np.concatenate([a7[:6], a7[6:7], a7[6:7]])
        self.data.ctrl[:] = ctrl
        for _ in range(self.task.n_substeps):
            self._mujoco.mj_step(self.model, self.data)
        self._delay()

    def success(self) -> bool:
        """Ground truth (what a person watching would label)."""
        return bool(self.task._success(self.data, self._info)) if self._info is not None else False

    def stop(self) -> None:
        """Emergency stop: hold the joints where they are and refuse commands until reset."""
        if self._info is not None:
            for arm in self.task.arms:
                self.data.ctrl[np.asarray(arm.ctrl)[:6]] = self.data.qpos[np.asarray(arm.qpos)]
            self.data.qvel[:] = 0.0
        self.stopped = True

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------ server
def serve(
    robot: SimRobot,
    host: str = "127.0.0.1",
    port: int = 0,
    authkey: bytes = b"",
    max_clients: int | None = None,
    announce=print,
    parent_pid: int | None = None,
) -> None:
    """Serve ``robot`` over the robot link (``robot.link.RobotServer``: one authenticated
    client at a time, the robot stopped on any abnormal end) until ``max_clients`` sessions
    have ended (forever if None). With ``parent_pid`` the server exits when that process
    dies."""
    server = RobotServer(
        robot,
        authkey,
        host,
        port,
        max_sessions=max_clients,
        log=lambda line: (announce(line), sys.stdout.flush()),
    )
    if parent_pid is not None:
        exit_with_parent(parent_pid, lambda: server.stop_robot("parent exit"))
    announce(f"sim robot {robot.task_name} listening on {server.address}")
    sys.stdout.flush()
    server.serve_forever()


def read_key(key_file: str | None = None) -> str:
    """The shared robot key from ``key_file`` or else ``$RESFIT_ROBOT_KEY``; a clear error
    if neither gives one."""
    if key_file:
        with open(key_file) as f:
            key = f.read().strip()
    else:
        key = os.environ.get(KEY_ENV, "")
    if not key:
        raise ValueError(f"No robot key: set ${KEY_ENV} or pass --key_file.")
    return key


def new_key() -> str:
    """A fresh random shared key (hex)."""
    return secrets.token_hex(16)


def spawn_server(
    task_name: str = "PickPlace",
    authkey: str | None = None,
    seed: int = 0,
    latency_s: float = 0.0,
    jitter_s: float = 0.0,
    timeout_s: float = 120.0,
    extra_args: tuple[str, ...] = (),
) -> tuple[subprocess.Popen, str, str]:
    """Start the simulated robot server (``resfit-sim-robot``) in a new process; returns
    (process, address, key) once it listens. The key travels in the environment, never on the
    command line."""
    key = authkey or new_key()
    env = dict(os.environ, **{KEY_ENV: key})
    # the installed script, or the checkout's experiments/ when the package is not installed
    module, cwd = "resfit_jax.experiments.sim_robot_server", None
    if importlib.util.find_spec("resfit_jax.experiments") is None:
        module = "experiments.sim_robot_server"
        cwd = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cmd = [
        sys.executable,
        "-m",
        module,
        f"--task={task_name}",
        "--port=0",
        f"--seed={seed}",
        f"--latency_s={latency_s}",
        f"--jitter_s={jitter_s}",
        f"--parent_pid={os.getpid()}",
        *extra_args,
    ]
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"sim robot server exited with code {proc.returncode}")
            continue
        if "listening on" in line:
            # keep reading its log lines, so a full pipe never blocks the server
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, line.strip().rsplit(" ", 1)[-1], key
    proc.kill()
    raise TimeoutError("sim robot server did not start listening in time")
