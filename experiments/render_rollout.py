r"""Render a rollout of a task to MP4 or GIF with MuJoCo's offscreen renderer.

    MUJOCO_GL=egl python -m experiments.render_rollout --task=PickPlace --policy=expert \
        --out=runs/videos/pick_place.mp4

Needs an OpenGL backend: EGL (Debian/Ubuntu: ``apt install libegl1 libgl1``, then
MUJOCO_GL=egl) or OSMesa (``apt install libosmesa6``, then MUJOCO_GL=osmesa). Writing needs
the ``render`` extra: ``pip install -e ".[render]"`` (Pillow for GIF, imageio-ffmpeg for MP4).
The rollout runs in MJX (jitted); frames are rendered by MuJoCo C from the MJX states.

Policies: ``expert`` (the scripted expert; ``--noise`` makes it human-like), ``home`` (hold
the home pose) and ``base`` (a frozen BC base: ``--base=runs/bc/PickPlace/checkpoint`` or an
export dir). Trained residual policies plug into ``rollout_states`` the same way, through
``policy_init`` / ``policy_act``.
"""

from __future__ import annotations

import os
import warnings

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("task", "PickPlace", "Registered task name.")
flags.DEFINE_enum("policy", "expert", ["expert", "home", "base"], "Which policy to roll out.")
flags.DEFINE_string(
    "base",
    None,
    "For --policy=base: a train_bc checkpoint dir (<out>/checkpoint) or export dir (<out>/export).",
)
flags.DEFINE_float("noise", 0.0, "Expert style noise (0 = clean expert).")
flags.DEFINE_integer("seed", 0, "Episode seed.")
flags.DEFINE_string("out", None, "Output file (.mp4 or .gif); default runs/videos/<task>.mp4.")
flags.DEFINE_string("camera", "front", "Camera name in the task's MJCF.")
flags.DEFINE_integer("width", 480, "Frame width (pixels).")
flags.DEFINE_integer("height", 360, "Frame height (pixels).")


def rollout_states(task, policy_init, policy_act, seed: int = 0):
    """One episode in MJX. Returns a dict of numpy arrays [T + 1, ...] (qpos, qvel,
    mocap_pos, mocap_quat), the number of steps and the success flag."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from resfit_jax.envs.core import EpisodeWrapper

    env = EpisodeWrapper(task)

    def run(key):
        k_env, k_pol = jax.random.split(key)
        s0, p0 = env.reset(k_env), policy_init(k_pol)
        pick = lambda s: {
            k: getattr(s.data["mjx"], k) for k in ("qpos", "qvel", "mocap_pos", "mocap_quat")
        }

        def body(c, _):
            s, p, done = c
            a, p2 = policy_act(p, s)
            s2 = env.step(s, a)
            s2 = jax.tree.map(lambda n, o: jnp.where(done, o, n), s2, s)
            return (s2, p2, done | s2.done), pick(s2)

        (s, _, _), frames = jax.lax.scan(body, (s0, p0, jnp.zeros((), bool)), None, env.horizon)
        frames = jax.tree.map(lambda f0, f: jnp.concatenate([f0[None], f]), pick(s0), frames)
        return frames, s.info["steps"], s.info["success"]

    frames, steps, success = jax.device_get(jax.jit(run)(jax.random.PRNGKey(seed)))
    n = int(steps) + 1
    return {k: np.asarray(v)[:n] for k, v in frames.items()}, int(steps), bool(success)


def render_states(
    mj_model, states: dict, camera: str = "front", width: int = 480, height: int = 360
) -> list:
    """RGB frames [H, W, 3] uint8 for each recorded state (MuJoCo C offscreen renderer)."""
    import mujoco

    d = mujoco.MjData(mj_model)
    renderer = mujoco.Renderer(mj_model, height, width)
    frames = []
    try:
        for i in range(states["qpos"].shape[0]):
            d.qpos[:], d.qvel[:] = states["qpos"][i], states["qvel"][i]
            if mj_model.nmocap:
                d.mocap_pos[:], d.mocap_quat[:] = states["mocap_pos"][i], states["mocap_quat"][i]
            mujoco.mj_forward(mj_model, d)
            renderer.update_scene(d, camera=camera)
            frames.append(renderer.render().copy())
    finally:
        renderer.close()
    return frames


def write_video(frames: list, path: str, fps: float) -> None:
    """Write frames to .gif (Pillow) or .mp4 (imageio-ffmpeg)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".gif"):
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(
            path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0
        )
    elif path.endswith(".mp4"):
        import imageio_ffmpeg

        h, w = frames[0].shape[:2]
        writer = imageio_ffmpeg.write_frames(path, (w, h), fps=fps, macro_block_size=1)
        writer.send(None)
        for f in frames:
            writer.send(f)
        writer.close()
    else:
        raise ValueError(f"write_video: unsupported extension of {path!r}; use .mp4 or .gif.")


def _check_writer(path: str) -> None:
    """ValueError / ImportError before the rollout if ``path`` cannot be written."""
    if not path.endswith((".mp4", ".gif")):
        raise ValueError(f"--out={path}: use a .mp4 or .gif file name.")
    try:
        import PIL  # noqa: F401

        if path.endswith(".mp4"):
            import imageio_ffmpeg  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"writing {path} needs the render extra ({e.name} is missing): "
            'pip install -e ".[render]"'
        ) from None


def _check_renderer(mj_model, camera: str, width: int, height: int) -> None:
    """ValueError before the rollout if MuJoCo cannot render here (no OpenGL backend, an
    unknown camera or a frame larger than the model's offscreen buffer)."""
    import mujoco

    if mujoco.mj_name2id(mj_model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
        raise ValueError(f"--camera={camera}: the task's MJCF has no camera of that name.")
    try:
        with warnings.catch_warnings():  # GLFW's own warning repeats the error below
            warnings.simplefilter("ignore")
            mujoco.Renderer(mj_model, height, width).close()
    except (mujoco.FatalError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"MuJoCo cannot render here ({str(e).splitlines()[0]}). Set an OpenGL backend: "
            "MUJOCO_GL=egl (apt install libegl1 libgl1) or MUJOCO_GL=osmesa "
            "(apt install libosmesa6), or a smaller --width/--height."
        ) from None


def _load_base(path: str | None, task):
    """A frozen base from a train_bc checkpoint or export directory."""
    from resfit_jax.base.policy import METADATA_FILE, load_exported_base

    if not path:
        raise ValueError("--policy=base needs --base=<train_bc checkpoint or export dir>.")
    obs_dim, action_dim = task.observation_spec.shape[0], task.action_size
    if os.path.exists(os.path.join(path, METADATA_FILE)):
        return load_exported_base(path, obs_dim, action_dim)
    from resfit_jax.bc.frozen import load_base

    return load_base(path, obs_dim, action_dim)[0]


def main(argv):
    del argv
    from resfit_jax.run.runtime import setup_script

    setup_script()
    import jax.numpy as jnp

    from resfit_jax import envs
    from resfit_jax.run.configs import usage_error

    policy = FLAGS.policy
    if FLAGS.base and policy != "base":
        if FLAGS["policy"].present:
            usage_error(f"--base is the policy of --policy=base; drop it for --policy={policy}.")
        policy = "base"  # --base alone means: render that base
    out = FLAGS.out or os.path.join("runs", "videos", f"{FLAGS.task}.mp4")
    try:
        task = envs.make(FLAGS.task)
        _check_writer(out)
        _check_renderer(task.mj_model, FLAGS.camera, FLAGS.width, FLAGS.height)
        base = _load_base(FLAGS.base, task) if policy == "base" else None
    except (ValueError, FileNotFoundError, ImportError) as e:
        usage_error(str(e))
    if policy == "expert":
        style = envs.ExpertStyle.human(FLAGS.noise) if FLAGS.noise > 0 else envs.ExpertStyle()
        expert = envs.make_expert(FLAGS.task, task, style)
        init, act = expert.init, expert.act
    elif policy == "base":
        init = lambda k: base.init_state(1)

        def act(q, s):
            a, q = base.step(q, s.obs[None])
            return a[0], q
    else:
        home = (task.action_low + task.action_high) / 2
        init, act = (lambda k: jnp.zeros(())), (lambda p, s: (home, p))
    states, steps, success = rollout_states(task, init, act, FLAGS.seed)
    frames = render_states(task.mj_model, states, FLAGS.camera, FLAGS.width, FLAGS.height)
    write_video(frames, out, fps=1.0 / task.dt)
    print(f"{FLAGS.task} {policy}: {steps} steps, success={success}; {len(frames)} frames -> {out}")


if __name__ == "__main__":
    app.run(main)
