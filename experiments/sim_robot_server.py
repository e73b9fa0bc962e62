r"""Serve a simulated robot (MuJoCo C model of a project task) over an authenticated socket.

    RESFIT_ROBOT_KEY=$(python -c "import secrets; print(secrets.token_hex(16))") \
        python -m experiments.sim_robot_server --task=PickPlace --port=6000 --latency_s=0.005

The shared key comes from $RESFIT_ROBOT_KEY or --key_file (never a flag value, so it does
not show in the process list). Clients with another key are refused. Each command advances
the simulation by one control period; --latency_s and --jitter_s (uniform) delay every
reply, like a real robot's transport. Prints "listening on HOST:PORT" when ready.
"""

from __future__ import annotations

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("task", "PickPlace", "MuJoCo task to simulate.")
flags.DEFINE_string("host", "127.0.0.1", "Interface to listen on.")
flags.DEFINE_integer("port", 6000, "TCP port (0 picks a free one).")
flags.DEFINE_string("key_file", None, "File holding the shared key (else $RESFIT_ROBOT_KEY).")
flags.DEFINE_integer("seed", 0, "Scene randomisation seed.")
flags.DEFINE_float("latency_s", 0.0, "Delay added to every reply (s).")
flags.DEFINE_float("jitter_s", 0.0, "Extra uniform random delay per reply, up to this (s).")
flags.DEFINE_integer("max_clients", None, "Exit after this many client sessions.")
flags.DEFINE_integer("parent_pid", None, "Exit (robot stopped) when this process dies.")


def main(argv):
    del argv
    from resfit_jax.run.runtime import setup_script

    setup_script()
    from resfit_jax.robot.sim_server import SimRobot, read_key, serve
    from resfit_jax.run.configs import usage_error

    try:
        key = read_key(FLAGS.key_file)
    except (OSError, ValueError) as e:
        usage_error(str(e))
    try:
        robot = SimRobot(
            FLAGS.task, seed=FLAGS.seed, latency_s=FLAGS.latency_s, jitter_s=FLAGS.jitter_s
        )
        robot.reset()  # compile / warm the eager paths before announcing
        robot.success()
        serve(
            robot,
            FLAGS.host,
            FLAGS.port,
            key.encode(),
            max_clients=FLAGS.max_clients,
            parent_pid=FLAGS.parent_pid,
        )
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (setup_script)
        print("sim robot server stopped")


def run():
    """Console script ``resfit-sim-robot``."""
    app.run(main)


if __name__ == "__main__":
    run()
