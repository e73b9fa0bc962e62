"""The robot link under bad input: the server survives a fuzzing client (random bytes,
oversize headers, HTTP, half-open connections, malformed authenticated requests), serves
a legitimate client afterwards, answers "busy" to a second one, and stops the robot on every
session end; the client's waits are all bounded."""

import json
import socket
import struct
import threading
import time

import numpy as np
import pytest

from resfit_jax.robot.link import LinkError, RemoteRobot, RobotServer, _mac, recv_frame, send_frame

KEY = b"test-key-123"


class FakeRobot:
    observation_size, action_size = 3, 2

    def __init__(self):
        self.stops, self.sent, self.scenes = 0, [], []

    def spec(self):
        return {"observation_size": 3, "action_size": 2}

    def reset(self):
        return np.zeros(3, np.float32)

    def observe(self):
        return np.arange(3, dtype=np.float32)

    def send_action(self, a):
        self.sent.append(np.asarray(a))

    def success(self):
        return False

    def stop(self):
        self.stops += 1

    def set_scene(self, scene):
        self.scenes.append(scene)


@pytest.fixture()
def server():
    robot = FakeRobot()
    logs: list[str] = []
    srv = RobotServer(robot, KEY, handshake_timeout_s=0.5, idle_timeout_s=1.0, log=logs.append)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv, robot, logs
    srv.shutdown()
    t.join(5)


def _connect(srv):
    host, port = srv.address.split(":")
    s = socket.create_connection((host, int(port)), timeout=2.0)
    return s


def _authenticated(srv):
    s = _connect(srv)
    hello = recv_frame(s)
    send_frame(s, {"auth": _mac(KEY, hello["challenge"]), "challenge": "c"})
    assert recv_frame(s)["ok"] is True
    return s


def _wait(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_server_survives_fuzzing_and_then_serves_a_legitimate_client(server):
    srv, robot, logs = server
    rng = np.random.default_rng(0)
    half_open = [_connect(srv) for _ in range(4)]  # never answer the challenge
    t0 = time.monotonic()
    for i in range(40):  # bounded in count and time
        if time.monotonic() - t0 > 20:
            break
        s = _connect(srv)
        kind = i % 4
        if kind == 0:
            s.sendall(rng.integers(0, 256, int(rng.integers(1, 300)), dtype=np.uint8).tobytes())
        elif kind == 1:
            s.sendall(struct.pack(">I", 2**31) + b"xx")
        elif kind == 2:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        else:
            s.sendall(struct.pack(">I", 5) + b"\xff\xfe{[")
        s.close()
    malformed = [[], 5, "x", {"cmd": 3}, {"cmd": "reset", "args": "no"}]
    abnormal = 0

    def ended():  # one session at a time: wait for each to end (stopped)
        nonlocal abnormal
        abnormal += 1
        assert _wait(lambda: robot.stops == abnormal), (robot.stops, abnormal, logs[-5:])

    for msg in malformed:  # authenticated, then garbage
        s = _authenticated(srv)
        send_frame(s, msg)
        assert "malformed" in recv_frame(s)["error"]
        s.close()
        ended()
    s = _authenticated(srv)  # invalid JSON inside a frame
    s.sendall(struct.pack(">I", 3) + b"{{{")
    s.close()
    ended()
    s = _authenticated(srv)  # a dropped client mid-session
    send_frame(s, {"cmd": "reset", "args": []})
    recv_frame(s)
    s.close()
    ended()
    # the half-open peers time out without blocking anyone; a real client works
    robot_client = RemoteRobot(srv.address, KEY, connect_timeout_s=5, reply_timeout_s=5)
    assert robot_client.observation_size == 3
    np.testing.assert_array_equal(robot_client.observe(), [0, 1, 2])
    robot_client.send_action(np.array([0.5, -0.5]))
    np.testing.assert_allclose(robot.sent[-1], [0.5, -0.5])
    assert robot_client.success() is False
    with pytest.raises(ValueError, match="not finite"):
        robot_client.send_action(np.array([np.nan, 0.0]))
    robot_client.close()
    assert _wait(lambda: robot.stops == abnormal + 1)  # a session end always stops it
    for h in half_open:
        h.close()
    assert any("authentication" in line or "dropped" in line for line in logs)


def test_one_client_at_a_time_wrong_key_and_idle_timeout(server):
    srv, robot, _ = server
    first = RemoteRobot(srv.address, KEY)
    with pytest.raises(LinkError, match="busy"):
        RemoteRobot(srv.address, KEY, reply_timeout_s=2)
    first.close()
    with pytest.raises(PermissionError, match="wrong key"):
        RemoteRobot(srv.address, b"not-the-key")
    again = RemoteRobot(srv.address, KEY)  # still serving
    stops = robot.stops
    time.sleep(1.5)  # idle past the server's timeout
    assert _wait(lambda: robot.stops == stops + 1)
    with pytest.raises(LinkError):
        again.observe()  # mid-episode: never resumed
    later = RemoteRobot(srv.address, KEY)
    time.sleep(1.5)  # e.g. a long compile between episodes
    assert _wait(lambda: robot.stops == stops + 2)
    np.testing.assert_array_equal(later.reset(), np.zeros(3))  # a reset reconnects once
    assert later.reconnects == 1
    np.testing.assert_array_equal(later.observe(), np.arange(3))
    later.close()


def test_a_failing_stop_after_a_robot_error_keeps_the_episode():
    from resfit_jax.robot.loop import LoopConfig, run_episode
    from resfit_jax.robot.operator import ScriptedLabeller
    from resfit_jax.robot.safety import SafetyLimits

    class Dying(FakeRobot):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def observe(self):
            self.calls += 1
            if self.calls > 3:
                raise LinkError("link lost during 'observe'")
            return super().observe()

        def stop(self):
            raise LinkError("link lost during 'stop'")

    class Hold:
        def begin(self):
            pass

        def base_action(self, obs):
            return np.zeros(2, np.float32)

        def act(self, obs, a_b):
            return np.zeros(2, np.float32), a_b

    rec = run_episode(
        Dying(),
        Hold(),
        ScriptedLabeller(lambda e, t, o: None),
        SafetyLimits(-np.ones(2), np.ones(2), 0.5),
        LoopConfig(control_hz=1000.0, max_episode_steps=10, deadline_tolerance_s=10.0),
    )
    assert rec.steps == 4 and rec.observation.shape == (5, 3)  # the steps so far are kept
    assert "observe" in rec.error and "robot.stop() failed too" in rec.error


def test_client_waits_are_bounded():
    # nothing listens: connection refused until the connect timeout
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    t0 = time.monotonic()
    with pytest.raises(LinkError, match="No robot server"):
        RemoteRobot(f"127.0.0.1:{port}", KEY, connect_timeout_s=0.5)
    assert time.monotonic() - t0 < 5
    # a listener that never speaks: the handshake times out with a clear error
    mute = socket.create_server(("127.0.0.1", 0))
    addr = f"127.0.0.1:{mute.getsockname()[1]}"
    with pytest.raises(LinkError, match="no handshake reply"):
        RemoteRobot(addr, KEY, reply_timeout_s=0.5)
    mute.close()
    with pytest.raises(ValueError, match="host:port"):
        RemoteRobot("nowhere", KEY)


def test_a_trickling_peer_is_dropped_at_the_handshake_deadline(server):
    """One byte every 0.2 s never lets the socket time out, but the handshake as a whole
    has 0.5 s: the server closes the connection, then serves a legitimate client."""
    srv, robot, logs = server
    s = _connect(srv)
    recv_frame(s)  # the hello
    t0 = time.monotonic()
    closed = False
    try:
        for _ in range(20):
            s.sendall(b"\x00")
            time.sleep(0.2)
            s.setblocking(False)
            try:
                if s.recv(1) == b"":
                    closed = True
                    break
            except BlockingIOError:
                pass
            finally:
                s.setblocking(True)
    except OSError:
        closed = True
    assert closed and time.monotonic() - t0 < 2.0
    assert _wait(lambda: any("before a session" in line for line in logs))
    r = RemoteRobot(srv.address, KEY)
    assert r.observation_size == 3
    r.close()


def test_unfinished_handshakes_are_capped_and_accept_errors_do_not_end_the_server():
    robot, logs = FakeRobot(), []
    srv = RobotServer(robot, KEY, handshake_timeout_s=1.0, log=logs.append, max_pending=2)

    class FailingOnce:  # the first accept fails as when the process is out of descriptors
        def __init__(self, sock):
            self.sock, self.failed = sock, False

        def accept(self):
            if not self.failed:
                self.failed = True
                raise OSError(24, "Too many open files")
            return self.sock.accept()

        def __getattr__(self, name):
            return getattr(self.sock, name)

    srv.sock = FailingOnce(srv.sock)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        idle = [_connect(srv) for _ in range(4)]  # hold 2 handshakes, 2 more are refused
        assert _wait(lambda: sum("too many unfinished handshakes" in x for x in logs) == 2)
        assert any("accept failed (OSError" in x for x in logs) and t.is_alive()
        time.sleep(1.2)  # the held handshakes time out and free their slots
        r = RemoteRobot(srv.address, KEY)
        assert r.observation_size == 3
        r.close()
        for s in idle:
            s.close()
    finally:
        srv.shutdown()
        t.join(5)


def test_bad_commands_never_reach_the_robot_and_halt_it(server):
    """An authenticated client's NaN, inf, wrong-length or non-numeric command is refused at
    the server (the robot object never sees it) and the robot is stopped; a deeply nested
    frame ends the session without a traceback; good commands still go through."""
    srv, robot, logs = server
    s = _authenticated(srv)
    bad = [[[float("nan"), 0.0]], [[1.0]], [["a", "b"]], [[True, 0.0]], [], [[0.0, 0.0], 1]]
    for args in bad:
        payload = json.dumps({"cmd": "send_action", "args": args}).encode()  # NaN as JSON
        s.sendall(struct.pack(">I", len(payload)) + payload)
        reply = recv_frame(s)
        assert "robot is stopped" in reply["error"], reply
    assert robot.sent == [] and robot.stops >= len(bad)
    send_frame(s, {"cmd": "send_action", "args": [[0.5, -0.5]]})
    assert recv_frame(s)["ok"] and len(robot.sent) == 1
    send_frame(s, {"cmd": "observe", "args": [1]})
    assert "takes no arguments" in recv_frame(s)["error"]
    for args in ([-1], ["3"], [True], [1.5], [], [1, 2]):  # a scene id is one integer >= 0
        send_frame(s, {"cmd": "set_scene", "args": args})
        assert "set_scene takes one integer" in recv_frame(s)["error"]
    send_frame(s, {"cmd": "set_scene", "args": [4]})
    assert recv_frame(s)["ok"] and robot.scenes == [4]
    deep = b"[" * 100_000 + b"]" * 100_000
    s.sendall(struct.pack(">I", len(deep)) + deep)
    assert _wait(lambda: any("nests too deeply" in line for line in logs))
    s.close()
