"""The robot link: a small authenticated request/reply protocol over TCP between a robot
server (next to the arm) and the trainer's ``RemoteRobot`` client.

Wire format: frames of a 4-byte big-endian length and that many bytes of UTF-8 JSON (no
pickle: nothing a peer sends is ever executed). Frames over ``MAX_FRAME`` bytes end the
connection. Arrays travel as lists of floats; camera frames (uint8 arrays) as
{"uint8_b64": base64 of the bytes, "shape": [...]}.

Handshake (mutual HMAC-SHA256 challenge, the key never crosses the wire):
    server -> {"hello": "resfit-robot/1", "challenge": S}
    client -> {"auth": HMAC(key, S), "challenge": C}
    server -> {"ok": true, "auth": HMAC(key, C)}   or   {"error": "..."} and close
Requests: {"cmd": name, "args": [...]} -> {"ok": true, "value": v} | {"error": text}.

What the server guarantees: every connection is handled in its own thread and its whole
handshake must finish within ``handshake_timeout_s`` (a peer trickling one byte at a time is
dropped as surely as a silent one); at most ``max_pending`` connections are in their
handshake at once (more are closed at accept), and an accept that fails (e.g. out of file
descriptors) is logged and retried, so no input (random bytes, an HTTP request, oversize
headers, a peer that never answers, a flood of connections) can end the server or block it
for long; one authenticated client at a time,
others get a clear "busy" answer; the robot is stopped (``robot.stop()``) whenever a session
ends other than by the client's "close" after a stop, on any error, malformed message,
timeout or disconnect. What it does not do: encrypt. Use it on a trusted network or through
an SSH tunnel / VPN.
"""

from __future__ import annotations

import hmac
import math
import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from resfit_jax.robot.remote import RemoteRobot
from resfit_jax.robot.wire import PROTOCOL, LinkError, _mac, recv_frame, send_frame

__all__ = ["COMMANDS", "LinkError", "RemoteRobot", "RobotServer", "exit_with_parent"]

COMMANDS = ("spec", "reset", "observe", "send_action", "success", "stop", "set_scene")


# ------------------------------------------------------------------------------ server
class RobotServer:
    """Serves ``robot`` (any object with the RobotInterface methods and ``spec()``) to one
    authenticated client at a time. ``serve_forever`` until ``shutdown`` or ``max_sessions``
    sessions; ``log`` receives one line per event."""

    def __init__(
        self,
        robot: Any,
        authkey: bytes,
        host: str = "127.0.0.1",
        port: int = 0,
        handshake_timeout_s: float = 5.0,
        idle_timeout_s: float = 30.0,
        max_sessions: int | None = None,
        log: Callable[[str], None] = print,
        max_pending: int = 8,
    ):
        if not authkey:
            raise ValueError(
                "RobotServer: an authkey is required (an unauthenticated robot is unsafe)."
            )
        self.robot, self.authkey = robot, authkey
        self.handshake_timeout_s, self.idle_timeout_s = handshake_timeout_s, idle_timeout_s
        self.max_sessions, self.log = max_sessions, log
        if max_pending < 1:
            raise ValueError(f"RobotServer: max_pending must be >= 1 (got {max_pending}).")
        # connections still in their handshake (unauthenticated): at most max_pending, each
        # for at most handshake_timeout_s in all, so no peer can hold the server's sockets
        self._pending = threading.BoundedSemaphore(max_pending)
        self.sock = socket.create_server((host, port))
        self.sock.settimeout(0.2)
        host, port = self.sock.getsockname()[:2]
        self.address = f"{host}:{port}"
        self.sessions = 0
        self._busy = threading.Lock()
        self._robot_lock = threading.Lock()
        self._stop = threading.Event()

    def shutdown(self) -> None:
        self._stop.set()

    def serve_forever(self) -> None:
        try:
            while not self._stop.is_set():
                if (
                    self.max_sessions is not None
                    and self.sessions >= self.max_sessions
                    and not self._busy.locked()
                ):
                    return
                try:
                    conn, peer = self.sock.accept()
                except TimeoutError:
                    continue
                except OSError as e:
                    if self._stop.is_set() or self.sock.fileno() < 0:
                        return
                    # out of file descriptors or buffers, an aborted connection: the
                    # server stays up and tries again
                    self.log(f"accept failed ({type(e).__name__}: {e}); retrying")
                    time.sleep(0.2)
                    continue
                if not self._pending.acquire(blocking=False):
                    self.log(f"refused {peer[0]}:{peer[1]}: too many unfinished handshakes")
                    conn.close()
                    continue
                threading.Thread(target=self._connection, args=(conn, peer), daemon=True).start()
        finally:
            self.sock.close()
            self.stop_robot("server shutdown")

    def stop_robot(self, why: str) -> None:
        try:
            with self._robot_lock:
                self.robot.stop()
        except Exception as e:  # stop must never take the server down
            self.log(f"robot.stop() failed after {why}: {type(e).__name__}: {e}")

    def _connection(self, conn: socket.socket, peer) -> None:
        with conn:
            try:
                try:
                    authenticated = self._handshake(conn, peer)
                finally:
                    self._pending.release()
                if not authenticated:
                    return
                if not self._busy.acquire(blocking=False):
                    send_frame(
                        conn,
                        {
                            "error": "busy: another client is connected to this "
                            "robot; try again when it disconnects"
                        },
                    )
                    self.log(f"refused {peer[0]}:{peer[1]}: busy")
                    return
            except (LinkError, OSError, ValueError, struct.error) as e:
                self.log(f"dropped {peer[0]}:{peer[1]} before a session: {type(e).__name__}: {e}")
                return
            closed = False
            try:
                self.sessions += 1
                closed = self._session(conn, peer)
            finally:
                self._busy.release()
            if closed:  # answered once the robot is stopped and the slot is free
                try:
                    send_frame(conn, {"ok": True, "value": None})
                except OSError:
                    pass

    def _handshake(self, conn: socket.socket, peer) -> bool:
        """The whole handshake ends within handshake_timeout_s (TimeoutError otherwise)."""
        deadline = time.monotonic() + self.handshake_timeout_s
        conn.settimeout(self.handshake_timeout_s)
        challenge = secrets.token_hex(32)
        send_frame(conn, {"hello": PROTOCOL, "challenge": challenge})
        reply = recv_frame(conn, deadline)
        if not (
            isinstance(reply, dict)
            and isinstance(reply.get("auth"), str)
            and hmac.compare_digest(reply["auth"], _mac(self.authkey, challenge))
        ):
            send_frame(conn, {"error": "authentication failed: wrong key"})
            self.log(f"rejected {peer[0]}:{peer[1]}: authentication failed")
            return False
        theirs = reply.get("challenge")
        send_frame(conn, {"ok": True, "auth": _mac(self.authkey, str(theirs))})
        return True

    def _bad_args(self, cmd: str, args: list) -> str | None:
        """Why a request's arguments are unfit for the robot (None: fine). send_action takes
        one list of the robot's action size of finite numbers, set_scene one integer >= 0;
        the others take none."""
        if cmd == "set_scene":
            ok = len(args) == 1 and type(args[0]) is int and args[0] >= 0
            return None if ok else f"set_scene takes one integer >= 0 (got {str(args)[:80]})"
        if cmd != "send_action":
            return None if not args else f"{cmd} takes no arguments (got {len(args)})"
        size = self._action_size()
        action = args[0] if len(args) == 1 else None
        ok = isinstance(action, list) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in action
        )
        if not ok or (size is not None and len(action) != size):
            return (
                f"send_action takes one list of {size if size is not None else 'the'} "
                f"numbers (got {str(args)[:80]})"
            )
        if not all(math.isfinite(x) for x in action):
            return f"send_action: the command holds NaN or inf ({str(action)[:80]})"
        return None

    def _action_size(self) -> int | None:
        size = getattr(self.robot, "action_size", None)
        if size is None:
            try:
                size = self.robot.spec().get("action_size")
            except Exception:
                return None
        return None if size is None else int(size)

    def _session(self, conn: socket.socket, peer) -> bool:
        """Serve requests until the session ends; True when the client asked to close."""
        conn.settimeout(self.idle_timeout_s)
        ended = "disconnect"
        try:
            while not self._stop.is_set():
                try:
                    msg = recv_frame(conn)
                except TimeoutError:
                    ended = f"no request for {self.idle_timeout_s:g} s"
                    return
                if not (
                    isinstance(msg, dict)
                    and isinstance(msg.get("cmd"), str)
                    and isinstance(msg.get("args", []), list)
                ):
                    ended = "a malformed request"
                    send_frame(
                        conn,
                        {
                            "error": "malformed request: expected "
                            '{"cmd": name, "args": [...]}; session closed'
                        },
                    )
                    return
                cmd, args = msg["cmd"], msg.get("args", [])
                if cmd == "close":
                    ended = "close"
                    return True
                if cmd not in COMMANDS:
                    send_frame(conn, {"error": f"unknown command {cmd!r}; known: {COMMANDS}"})
                    continue
                bad = self._bad_args(cmd, args)
                if bad is not None:  # never reaches the robot; a bad command halts it
                    self.stop_robot(bad)
                    send_frame(conn, {"error": bad + "; the robot is stopped"})
                    continue
                try:
                    with self._robot_lock:
                        value = getattr(self.robot, cmd)(*args)
                    send_frame(conn, {"ok": True, "value": value})
                except (LinkError, OSError):
                    raise
                except Exception as e:  # reported to the client; the session goes on
                    send_frame(conn, {"error": f"{type(e).__name__}: {e}"})
        except (LinkError, OSError, ValueError, struct.error) as e:
            ended = f"{type(e).__name__}: {e}"
        finally:
            # a dropped or misbehaving client leaves the robot halted, never moving
            self.stop_robot(ended)
            self.log(f"session with {peer[0]}:{peer[1]} ended ({ended}); robot stopped")
        return False


def exit_with_parent(
    parent_pid: int, on_exit: Callable[[], None], poll_s: float = 0.5
) -> threading.Thread:
    """A daemon thread that calls ``on_exit`` and ends this process once ``parent_pid`` is
    gone (a spawned server must not outlive the trainer that started it)."""

    def watch():
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent_pid:
                try:
                    on_exit()
                finally:
                    os._exit(0)

    t = threading.Thread(target=watch, name="parent-watch", daemon=True)
    t.start()
    return t


# ------------------------------------------------------------------------------ client
