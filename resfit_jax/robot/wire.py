"""The robot link's wire format: frames of a 4-byte big-endian length and that many bytes
of UTF-8 JSON (no pickle: nothing a peer sends is ever executed); frames over ``MAX_FRAME``
bytes end the connection. Arrays travel as lists of floats, camera frames (uint8 arrays) as
{"uint8_b64": base64 of the bytes, "shape": [...]}; ``_mac`` is the handshake's HMAC."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import struct
import time
from typing import Any

import numpy as np

PROTOCOL = "resfit-robot/1"
MAX_FRAME = 1 << 20  # bytes


class LinkError(ConnectionError):
    """The robot link failed (timeout, disconnect, protocol or authentication error)."""


def _mac(key: bytes, challenge: str) -> str:
    return hmac.new(key, challenge.encode(), hashlib.sha256).hexdigest()


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim >= 2:  # a camera frame
        return {
            "uint8_b64": base64.b64encode(np.ascontiguousarray(x).tobytes()).decode(),
            "shape": list(x.shape),
        }
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _frame(v: dict) -> np.ndarray:
    """A camera frame sent by ``_jsonable`` -> uint8 [H, W, C]."""
    shape = tuple(int(n) for n in v["shape"])
    data = base64.b64decode(v["uint8_b64"], validate=True)
    return np.frombuffer(data, np.uint8).reshape(shape).copy()


def send_frame(sock: socket.socket, obj: Any) -> None:
    data = json.dumps(_jsonable(obj), allow_nan=False).encode()
    if len(data) > MAX_FRAME:
        raise LinkError(f"robot link: a {len(data)}-byte message exceeds {MAX_FRAME} bytes.")
    sock.sendall(struct.pack(">I", len(data)) + data)


def _recv_exact(sock: socket.socket, n: int, deadline: float | None = None) -> bytes:
    """n bytes; with ``deadline`` (time.monotonic()) the whole read ends by then, however
    slowly the peer trickles bytes in (TimeoutError)."""
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("robot link: the peer did not finish its message in time.")
            sock.settimeout(left)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise LinkError("robot link: the peer closed the connection.")
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket, deadline: float | None = None) -> Any:
    """One frame's JSON value; LinkError on oversize, non-JSON or a closed peer (socket
    timeouts, and a ``deadline`` passed, raise TimeoutError)."""
    (n,) = struct.unpack(">I", _recv_exact(sock, 4, deadline))
    if n > MAX_FRAME:
        raise LinkError(f"robot link: frame of {n} bytes announced, more than {MAX_FRAME}.")
    try:
        return json.loads(_recv_exact(sock, n, deadline).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LinkError(f"robot link: a frame is not UTF-8 JSON ({e}).") from None
    except RecursionError:
        raise LinkError("robot link: a frame nests too deeply to be a message.") from None
