"""``from mujoco import mjx``, without the line mujoco-mjx prints when the optional Warp
backend is missing ("Failed to import warp: ..."): the tasks use MJX's JAX implementation.
The message is kept and logged at INFO (scripts show it with --verbosity=0)."""

import contextlib
import io
import logging

_out = io.StringIO()
with contextlib.redirect_stdout(_out):
    from mujoco import mjx  # noqa: E402

IMPORT_MESSAGES = _out.getvalue().strip()
if IMPORT_MESSAGES:
    logging.getLogger(__name__).info("mujoco.mjx import: %s", IMPORT_MESSAGES)

__all__ = ["mjx"]
