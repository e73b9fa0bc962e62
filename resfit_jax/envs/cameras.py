"""Camera observations for the MJX tasks: the MuJoCo Warp batch ray tracer on JAX-physics data.

Physics stays MJX's JAX implementation (the state tasks are untouched); only rendering uses
MuJoCo Warp, which runs on a GPU or on Warp's CPU backend. A Warp render context has a fixed
number of worlds, so rendering is a batch operation outside ``vmap``:

    pixel = pixel_env(envs.make("PickPlace"), num_envs=16, resolution=64)
    s = pixel.reset(key)                 # s.obs = {"state": [16, P], "workspace": uint8
    s = pixel.step(s, actions)           #          [16, 64, 64, 3], "wrist": ...}

- ``CameraTask`` (per env, vmappable): the observation becomes the arm proprioception
  (``MjxTask._proprio``: the privileged object poses stay out) plus the scene's kinematic
  fields (geom and camera poses) the renderer needs.
- ``PixelObservations`` (batch level, on ``VmapWrapper(AutoReset(CameraTask))``): renders the
  scene into uint8 images per camera, for ``obs`` and for ``info["final_obs"]`` (the true
  last frame of an episode that ended: when any env reset this step, the pre-reset and the
  fresh scenes are rendered in one call of 2E worlds, else once).
- ``CameraRenderer``: scene [N, ...] -> {camera: uint8 [N, H, W, 3]} under jit / scan, and
  under ``vmap`` (e.g. over seeds): a batching rule folds the mapped axes into the worlds of
  one call (a render context per world count, made at trace time).

Lights must be fixed in the world (their poses are taken once from MuJoCo C).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from resfit_jax.envs.core import AutoReset, State, VmapWrapper, Wrapper

SCENE_FIELDS = ("geom_xpos", "geom_xmat", "cam_xpos", "cam_xmat")
RESOLUTIONS = (32, 64, 84, 96, 128)


def default_cameras(mj_model: mujoco.MjModel) -> tuple[str, ...]:
    """The fixed "workspace" camera and every arm's wrist camera, in model order."""
    names = [mj_model.camera(i).name for i in range(mj_model.ncam)]
    return tuple(n for n in names if n == "workspace" or n.endswith("wrist"))


NO_CUDA = "Could not find or load the NVIDIA CUDA driver"


def _init_warp(warp) -> None:
    """``warp.init()`` with its native stderr captured: on a machine without CUDA, Warp's
    line saying so (every process, before any frame) is dropped; anything else it prints is
    passed on."""
    import os
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            warp.init()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    rest = [ln for ln in text.splitlines() if NO_CUDA not in ln]
    if rest:
        print("\n".join(rest), file=sys.stderr)


def _mjx():
    try:
        import warp

        warp.config.quiet = True  # no start-up banner, no per-module load
        warp.config.log_level = warp.LOG_WARNING  # timings in the scripts' output
        _init_warp(warp)
        import mujoco.mjx.warp as mjxw
    except ImportError:  # pragma: no cover
        mjxw = None
    from mujoco import mjx

    if mjxw is None or not mjxw.WARP_INSTALLED:
        raise ImportError(
            "Camera observations need MuJoCo Warp: pip install mujoco-warp "
            "warp-lang (pyproject.toml lists them)."
        )
    return mjx


class CameraRenderer:
    """Renders ``cameras`` of ``mj_model`` at ``resolution`` x ``resolution`` (RGB, no
    shadows) for a batch of scenes; ``num_worlds`` is the batch the first context is made
    for (others are made when first needed). Call under jit, scan or vmap."""

    def __init__(
        self,
        mj_model: mujoco.MjModel,
        num_worlds: int,
        cameras: Sequence[str],
        resolution: int = 64,
    ):
        mjx = _mjx()
        names = [mj_model.camera(i).name for i in range(mj_model.ncam)]
        missing = [c for c in cameras if c not in names]
        if missing:
            raise ValueError(f"Cameras {missing} are not in the model (it has {names}).")
        if not cameras:
            raise ValueError("CameraRenderer needs at least one camera.")
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS} (got {resolution}).")
        if np.any(mj_model.light_bodyid != 0):
            raise ValueError("CameraRenderer supports lights fixed in the world only.")
        self.mj_model, self.num_worlds, self.resolution = mj_model, int(num_worlds), resolution
        # the context numbers its active cameras in model order
        self.cameras = tuple(sorted(cameras, key=names.index))
        self.model = mjx.put_model(mj_model, impl="warp")
        self._contexts: dict[int, object] = {}
        self.context(self.num_worlds)
        d = mujoco.MjData(mj_model)
        mujoco.mj_forward(mj_model, d)
        self._light = (np.asarray(d.light_xpos, np.float32), np.asarray(d.light_xdir, np.float32))
        self._render = jax.custom_batching.custom_vmap(self._render_worlds)
        self._render.def_vmap(self._fold_batch)

    def context(self, n: int):
        """The Warp render context for n worlds (made once per n)."""
        if n not in self._contexts:
            r = self.resolution
            self._contexts[n] = _mjx().create_render_context(
                self.mj_model,
                nworld=n,
                cam_res=(r, r),
                render_rgb=True,
                render_depth=False,
                use_shadows=False,
                cam_active=list(self.cameras),
            )
        return self._contexts[n]

    def __call__(self, scene: dict) -> dict[str, jax.Array]:
        """scene: SCENE_FIELDS with a leading [N] -> {camera: uint8 [N, H, W, 3]}."""
        return self._render(scene)

    def _fold_batch(self, axis_size: int, in_batched, scene: dict):
        """vmap rule: render the mapped axis and the worlds in one call."""
        if not any(jax.tree.leaves(in_batched)):
            return self._render(scene), jax.tree.map(lambda _: False, self._out_spec())
        flags = in_batched[0] if isinstance(in_batched, (list, tuple)) else in_batched
        scene = jax.tree.map(
            lambda x, b: x if b else jnp.broadcast_to(x, (axis_size,) + x.shape), scene, flags
        )  # a leaf the map does not touch
        flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), scene)
        out = self._render(flat)
        return (
            {c: x.reshape((axis_size, -1) + x.shape[1:]) for c, x in out.items()},
            jax.tree.map(lambda _: True, self._out_spec()),
        )

    def _out_spec(self) -> dict:
        return {c: 0 for c in self.cameras}

    def _render_worlds(self, scene: dict) -> dict[str, jax.Array]:
        mjx, n = _mjx(), int(scene["geom_xpos"].shape[0])
        d = jax.vmap(lambda _: mjx.make_data(self.mj_model, impl="warp"))(jnp.arange(n))
        d = d.replace(**{f: scene[f] for f in SCENE_FIELDS})
        shape = d._impl.light_xpos.shape
        d = d.tree_replace(
            {
                "_impl.light_xpos": jnp.broadcast_to(self._light[0], shape),
                "_impl.light_xdir": jnp.broadcast_to(self._light[1], shape),
            }
        )
        ctx = self.context(n).pytree()
        d = mjx.refit_bvh(self.model, d, ctx)
        rgb, _, _ = mjx.render(self.model, d, ctx)
        return {
            c: jnp.round(mjx.get_rgb(ctx, i, rgb) * 255.0).astype(jnp.uint8)
            for i, c in enumerate(self.cameras)
        }


class CameraTask(Wrapper):
    """Per-env pixel variant of an MJX task before rendering: obs = {"state": proprio [P],
    "scene": the kinematic fields ``CameraRenderer`` reads}."""

    def _obs(self, state: State) -> dict:
        data = state.data["mjx"]
        proprio, _ = self.env._proprio(data)
        return {
            "state": jnp.concatenate(proprio),
            "scene": {f: getattr(data, f) for f in SCENE_FIELDS},
        }

    def reset(self, key):
        s = self.env.reset(key)
        return s.replace(obs=self._obs(s))

    def step(self, state, action):
        s = self.env.step(state, action)
        return s.replace(obs=self._obs(s))

    @property
    def proprio_size(self) -> int:
        return self.env.PROPRIO_SIZE * len(self.env.arms)


class PixelObservations(Wrapper):
    """Batch level: renders the scenes of ``VmapWrapper(AutoReset(CameraTask(task)), E)``
    into {"state": [E, P], camera: uint8 [E, H, W, 3], ...} for obs and final_obs."""

    def __init__(
        self,
        env: VmapWrapper,
        cameras: Sequence[str] | None = None,
        resolution: int = 64,
        keep_scene: bool = False,
        renderer: CameraRenderer | None = None,
    ):
        super().__init__(env)
        self.keep_scene = keep_scene  # also keep obs["scene"] (tests, debugging)
        mj_model = env.unwrapped.mj_model
        cams = tuple(cameras) if cameras is not None else default_cameras(mj_model)
        self.num_envs = env.num_envs
        self.renderer = renderer or CameraRenderer(mj_model, self.num_envs, cams, resolution)
        resolution = self.renderer.resolution
        self.cameras = self.renderer.cameras
        self.resolution = resolution

    def _pixels(self, obs: dict, images: dict) -> dict:
        extra = {"scene": obs["scene"]} if self.keep_scene else {}
        return {"state": obs["state"], **images} | extra

    def reset(self, key):
        s = self.env.reset(key)
        obs = self._pixels(s.obs, self.renderer(s.obs["scene"]))
        return s.replace(obs=obs, info=dict(s.info, final_obs=obs))

    def step(self, state, action):
        s = self.env.step(state, action)
        now, final = s.obs["scene"], s.info["final_obs"]["scene"]

        def once(_):
            images = self.renderer(now)
            return images, images

        def twice(_):
            both = self.renderer(jax.tree.map(lambda a, b: jnp.concatenate([a, b]), now, final))
            e = self.num_envs
            return ({c: x[:e] for c, x in both.items()}, {c: x[e:] for c, x in both.items()})

        images, final_images = jax.lax.cond(jnp.any(s.done), twice, once, None)
        return s.replace(
            obs=self._pixels(s.obs, images),
            info=dict(s.info, final_obs=self._pixels(s.info["final_obs"], final_images)),
        )

    @property
    def observation_spec(self) -> dict:
        return _pixel_spec(self.env.proprio_size, self.cameras, self.resolution)


def _pixel_spec(proprio_size: int, cameras: Sequence[str], resolution: int) -> dict:
    """{"state": float32 [P], camera: uint8 [R, R, 3], ...}."""
    r = resolution
    spec = {"state": jax.ShapeDtypeStruct((proprio_size,), jnp.float32)}
    return spec | {c: jax.ShapeDtypeStruct((r, r, 3), jnp.uint8) for c in cameras}


def pixel_env(
    task,
    num_envs: int,
    resolution: int = 64,
    cameras: Sequence[str] | None = None,
    keep_scene: bool = False,
) -> PixelObservations:
    """E auto-resetting pixel envs of an MJX task (see the module docstring)."""
    return PixelObservations(
        VmapWrapper(AutoReset(CameraTask(task)), num_envs), cameras, resolution, keep_scene
    )


class PixelTask(Wrapper):
    """One env of an MJX task with camera observations {"state": proprio [P], camera: uint8
    [H, W, 3], ...}: the task that episode runners and loops take (``vmap`` it as any task;
    the renderer's batching rule renders all mapped envs in one call).

    ``auto_reset_batch`` (used by ``envs.core.auto_reset_envs``, so by the training loops)
    gives the batch form ``PixelObservations``, which renders obs and final_obs together."""

    def __init__(
        self, task, resolution: int = 64, cameras: Sequence[str] | None = None, num_worlds: int = 1
    ):
        super().__init__(CameraTask(task))
        cams = tuple(cameras) if cameras is not None else default_cameras(task.mj_model)
        self.renderer = CameraRenderer(task.mj_model, num_worlds, cams, resolution)
        self.cameras, self.resolution = self.renderer.cameras, resolution

    def _render(self, s: State) -> State:
        scene = jax.tree.map(lambda x: x[None], s.obs["scene"])
        images = {c: x[0] for c, x in self.renderer(scene).items()}
        return s.replace(obs={"state": s.obs["state"], **images})

    def reset(self, key):
        return self._render(self.env.reset(key))

    def step(self, state, action):
        return self._render(self.env.step(state, action))

    def auto_reset_batch(self, num_envs: int) -> PixelObservations:
        return PixelObservations(
            VmapWrapper(AutoReset(self.env), num_envs),
            self.cameras,
            self.resolution,
            renderer=self.renderer,
        )

    @property
    def observation_spec(self) -> dict:
        return _pixel_spec(self.env.proprio_size, self.cameras, self.resolution)
