"""The trainer's side of the robot link: ``RemoteRobot``, a RobotInterface over TCP to a
``robot.link.RobotServer`` (the protocol and its guarantees are described there)."""

from __future__ import annotations

import hmac
import secrets
import socket
import time
from typing import Any

import numpy as np

from resfit_jax.robot.wire import PROTOCOL, LinkError, _frame, _mac, recv_frame, send_frame


class RemoteRobot:
    """RobotInterface client of a ``RobotServer``. Every wait is bounded: connecting (retried
    while refused, up to ``connect_timeout_s``), the handshake and each reply
    (``reply_timeout_s``); a timeout or a dropped link raises ``LinkError`` with the address.

    Between episodes the server may end an idle session (its ``idle_timeout_s``, e.g. while
    the trainer compiles or runs its critic warm-up; the robot is stopped then). ``reset()``
    therefore reconnects once when it finds the link dropped: a new episode starts from a
    reset anyway. Every other command raises, so an episode never continues over a new
    session."""

    def __init__(
        self,
        address: str,
        authkey: bytes,
        connect_timeout_s: float = 30.0,
        reply_timeout_s: float = 10.0,
    ):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"RemoteRobot: address must be host:port, got {address!r}.")
        self.address, self.reply_timeout_s = address, reply_timeout_s
        self._authkey, self._connect_timeout_s = authkey, connect_timeout_s
        self.reconnects = 0
        self._connect()

    def _connect(self) -> None:
        host, _, port = self.address.rpartition(":")
        address, connect_timeout_s, reply_timeout_s = (
            self.address,
            self._connect_timeout_s,
            self.reply_timeout_s,
        )
        deadline = time.monotonic() + connect_timeout_s
        while True:
            try:
                self._sock = socket.create_connection((host, int(port)), timeout=reply_timeout_s)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise LinkError(
                        f"No robot server at {address} after "
                        f"{connect_timeout_s:.0f} s (connection refused)."
                    ) from None
                time.sleep(0.2)
            except (TimeoutError, OSError) as e:
                raise LinkError(f"Cannot reach the robot server at {address}: {e}.") from None
        try:
            self._handshake(self._authkey)
            self._spec = self._call("spec")
        except BaseException:
            self._sock.close()
            raise

    def _handshake(self, authkey: bytes) -> None:
        try:
            hello = recv_frame(self._sock)
            if not (isinstance(hello, dict) and hello.get("hello") == PROTOCOL):
                raise LinkError(f"{self.address} is not a resfit robot server ({hello!r:.80}).")
            mine = secrets.token_hex(32)
            send_frame(
                self._sock, {"auth": _mac(authkey, str(hello["challenge"])), "challenge": mine}
            )
            reply = recv_frame(self._sock)
        except TimeoutError:
            raise LinkError(
                f"Robot server at {self.address}: no handshake reply within "
                f"{self.reply_timeout_s:g} s."
            ) from None
        if isinstance(reply, dict) and "error" in reply:
            if "authentication" in str(reply["error"]):
                raise PermissionError(
                    f"Robot at {self.address} refused the connection: wrong "
                    "key. Pass the key the robot server was started with "
                    "(--key_file or $RESFIT_ROBOT_KEY)."
                )
            raise LinkError(f"Robot at {self.address}: {reply['error']}")
        if not (
            isinstance(reply, dict)
            and hmac.compare_digest(str(reply.get("auth")), _mac(authkey, mine))
        ):
            raise PermissionError(
                f"The server at {self.address} could not prove it holds the "
                "key: it is not your robot server."
            )
        self._sock.settimeout(self.reply_timeout_s)

    def _call(self, cmd: str, *args) -> Any:
        try:
            send_frame(self._sock, {"cmd": cmd, "args": list(args)})
            reply = recv_frame(self._sock)
        except TimeoutError:
            raise LinkError(
                f"Robot server at {self.address}: no reply to {cmd!r} within "
                f"{self.reply_timeout_s:g} s."
            ) from None
        except OSError as e:
            raise LinkError(
                f"Robot server at {self.address}: link lost during {cmd!r} ({e})."
            ) from None
        if not isinstance(reply, dict):
            raise LinkError(f"Robot server at {self.address}: malformed reply to {cmd!r}.")
        if "error" in reply:
            if str(reply["error"]).startswith("busy"):
                raise LinkError(f"Robot at {self.address} is busy: {reply['error']}")
            raise RuntimeError(f"robot server: {cmd} failed: {reply['error']}")
        return reply.get("value")

    @property
    def spec(self) -> dict:
        return dict(self._spec)

    @property
    def observation_size(self) -> int:
        return int(self._spec["observation_size"])

    @property
    def action_size(self) -> int:
        return int(self._spec["action_size"])

    @property
    def cameras(self) -> dict[str, tuple[int, ...]]:
        """Camera name -> frame shape [H, W, C] ({} for a state-only robot)."""
        return {c: tuple(v) for c, v in (self._spec.get("cameras") or {}).items()}

    @property
    def exact_scenes(self) -> bool:
        """True when the robot can be reset to a scene id exactly (a simulated robot)."""
        return bool(self._spec.get("exact_scenes", False))

    def set_scene(self, scene: int) -> None:
        """The next reset() starts scene ``scene`` exactly (robots with exact_scenes)."""
        self._call("set_scene", int(scene))

    def reset(self):
        try:
            return self._observation(self._call("reset"))
        except LinkError as e:
            if "link lost" not in str(e) and "closed" not in str(e):
                raise
            self._sock.close()  # the server ended the idle session: start anew
            self._connect()
            self.reconnects += 1
            return self._observation(self._call("reset"))

    def observe(self):
        return self._observation(self._call("observe"))

    def _observation(self, value):
        if not isinstance(value, dict):
            return np.asarray(value, np.float32)
        try:
            return {
                k: (np.asarray(v, np.float32) if k == "state" else _frame(v))
                for k, v in value.items()
            }
        except (KeyError, TypeError, ValueError) as e:
            raise LinkError(
                f"Robot server at {self.address}: malformed camera frame ({e})."
            ) from None

    def send_action(self, action: np.ndarray) -> None:
        a = np.asarray(action, np.float32)
        if not np.all(np.isfinite(a)):
            raise ValueError("RemoteRobot.send_action: the command is not finite; it was not sent.")
        self._call("send_action", a)

    def success(self) -> bool:
        return bool(self._call("success"))

    def stop(self) -> None:
        self._call("stop")

    def close(self) -> None:
        try:
            self._call("close")
        except (LinkError, RuntimeError, OSError):
            pass
        self._sock.close()
