"""The robot loop: safety limits, timing, labels, journal, sync/async learner, restart, and
end to end against the simulated robot server process (authenticated, SIGKILL-safe)."""

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from resfit_jax.robot.journal import Journal
from resfit_jax.robot.learner import AsyncLearner
from resfit_jax.robot.loop import LoopConfig, run_episode
from resfit_jax.robot.operator import Label, ScriptedLabeller, TerminalLabeller
from resfit_jax.robot.safety import EmergencyStop, RateClock, SafetyLimits
from resfit_jax.run.checkpointing import to_storable

sys.path.insert(0, os.path.dirname(__file__))
from robot_worker import PointRobot, point_setup, sigkill_when  # noqa: E402


# ---------------------------------------------------------------------------------- safety
def test_safety_limits_never_exceeded_for_random_and_extreme_commands():
    rng = np.random.default_rng(0)
    low = np.array([-3.0, -2.0, -2.8, 0.0], np.float32)
    high = np.array([3.0, 2.0, 2.8, 0.04], np.float32)
    lim = SafetyLimits(low, high, np.array([0.1, 0.05, 0.2, 0.01]), (0, 1, 2, -1))
    extremes = [1e30, -1e30, 1e6, -1e6, 3.4e38, -3.4e38, 0.0]
    clipped_any = 0
    for _ in range(50):
        prev = lim.initial_command(rng.uniform(-5, 5, 4))  # may start outside the bounds
        for t in range(60):
            kind = rng.integers(3)
            if kind == 0:
                a = rng.normal(0, 10 ** rng.uniform(-3, 3), 4)
            elif kind == 1:
                a = rng.choice(extremes, 4)
            else:  # base + residual near the previous command
                a = np.nan_to_num(prev, nan=0.0) + rng.uniform(-0.3, 0.3, 4)
            cmd, clipped = lim.apply(prev, a)
            assert cmd.dtype == np.float32 and np.all(np.isfinite(cmd))
            assert np.all(cmd >= low) and np.all(cmd <= high), (prev, a, cmd)
            known = np.isfinite(prev)
            if t > 0:
                assert known.all()
            step = np.abs(cmd - np.clip(np.nan_to_num(prev), low, high))
            assert np.all(step[known] <= lim.max_delta[known] + 1e-6), (prev, a, cmd)
            np.testing.assert_array_equal(clipped, cmd != np.asarray(a, np.float32))
            clipped_any += clipped.any()
            prev = cmd
    assert clipped_any > 100
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="non-finite"):
            lim.apply(prev, np.array([0.0, bad, 0.0, 0.0]))
    with pytest.raises(ValueError, match="shape"):
        lim.apply(prev, np.zeros(3))
    with pytest.raises(ValueError, match="max_delta"):
        SafetyLimits(low, high, 0.0)


def test_rate_clock_counts_overruns_and_reanchors():
    now = [0.0]
    slept = []
    clock = RateClock(
        10.0,
        tolerance_s=0.01,
        clock=lambda: now[0],
        sleep=lambda s: (slept.append(s), now.__setitem__(0, now[0] + s)),
    )
    now[0] = 0.05  # work took half a period: sleep to the tick
    assert not clock.overrun(clock.wait()) and slept[-1] == pytest.approx(0.05)
    now[0] = 0.35  # work ended 0.15 s after the 0.2 s tick
    late = clock.wait()
    assert clock.overrun(late) and late == pytest.approx(0.15)
    now[0] = 0.40  # re-anchored at 0.35: next tick 0.45, on time
    assert not clock.overrun(clock.wait())


# ----------------------------------------------------------------------------- episodes
class _Policy:
    def __init__(self, residual=0.0):
        self.residual = residual
        self.begins = 0

    def begin(self):
        self.begins += 1

    def base_action(self, obs):
        return obs[:2] + 0.5 * (obs[2:] - obs[:2])

    def act(self, obs, a_b):
        return np.full(2, self.residual, np.float32), a_b + self.residual


LIM = SafetyLimits(np.array([-1.0, -1.0]), np.array([1.0, 1.0]), 0.3, (0, 1))


def test_deadline_overruns_are_reported_and_halt_the_episode():
    robot = PointRobot(latency_s=0.03)
    cfg = LoopConfig(
        control_hz=100.0, max_episode_steps=40, deadline_tolerance_s=0.005, max_overruns=3
    )
    rec = run_episode(robot, _Policy(), ScriptedLabeller(lambda e, t, o: None), LIM, cfg)
    assert rec.overruns == 4 and rec.label == Label.ABORT and rec.reason == "deadline"
    assert robot.stops == 1 and rec.steps == 5 and not rec.usable  # step 0 uses the reset obs
    assert rec.stats()["overruns"] == 4
    # on time: no overruns, timeout is a failure (truncated, not terminal)
    rec = run_episode(
        PointRobot(),
        _Policy(),
        ScriptedLabeller(lambda e, t, o: None),
        LIM,
        LoopConfig(control_hz=200.0, max_episode_steps=10, deadline_tolerance_s=0.5),
    )
    assert rec.overruns == 0 and rec.timed_out and rec.label == Label.FAILURE
    assert rec.steps == 10 and rec.observation.shape == (11, 4) and not rec.terminal()


def test_labels_end_episodes_and_estop_halts_the_robot_keeping_data():
    cfg = LoopConfig(control_hz=200.0, max_episode_steps=30, deadline_tolerance_s=0.5)
    robot = PointRobot()
    rec = run_episode(
        robot,
        _Policy(),
        ScriptedLabeller(lambda e, t, o: Label.SUCCESS if t == 4 else None),
        LIM,
        cfg,
    )
    assert rec.label == Label.SUCCESS and rec.steps == 5 and rec.terminal()
    ep = rec.to_episode()
    assert ep.reward[4] == 1 and ep.is_terminal[-1] and ep.discount[-1] == 0
    np.testing.assert_array_equal(ep.action[:-1], np.stack(robot.sent))  # executed commands
    rec = run_episode(
        robot,
        _Policy(),
        ScriptedLabeller(lambda e, t, o: Label.FAILURE if t == 2 else None),
        LIM,
        cfg,
    )
    assert rec.label == Label.FAILURE and rec.terminal() and rec.to_episode().reward.sum() == 0
    stops = robot.stops
    rec = run_episode(
        robot,
        _Policy(),
        ScriptedLabeller(lambda e, t, o: Label.ESTOP if t == 6 else None),
        LIM,
        cfg,
    )
    assert rec.label == Label.ESTOP and robot.stops == stops + 1 and rec.steps == 7
    # a robot error mid-episode: halted, the steps so far are kept
    broken = PointRobot(fail_observe_at=5)
    rec = run_episode(broken, _Policy(), ScriptedLabeller(lambda e, t, o: None), LIM, cfg)
    assert rec.label == Label.ESTOP and broken.stops == 1 and "link lost" in rec.error
    assert rec.steps == 5 and rec.observation.shape == (6, 4) and rec.base_action.shape == (6, 2)
    # a NaN residual is never sent
    nan_robot = PointRobot()
    rec = run_episode(nan_robot, _Policy(np.nan), ScriptedLabeller(lambda e, t, o: None), LIM, cfg)
    assert rec.label == Label.ESTOP and nan_robot.sent == [] and "non-finite" in rec.error


def test_terminal_labeller_reads_keys_without_blocking():
    lab = TerminalLabeller(stream=io.StringIO("zz\nf\n"), out=io.StringIO())
    deadline = time.time() + 5
    got = None
    while got is None and time.time() < deadline:
        got = lab.poll(0, None)
    assert got == Label.FAILURE
    lab = TerminalLabeller(stream=io.StringIO(""), out=io.StringIO())
    assert lab.at_end(True) == Label.FAILURE  # Enter / EOF at a timeout: failure


# ------------------------------------------------------------------------------- journal
def test_journal_writes_atomically_and_ignores_partial_writes(tmp_path):
    from resfit_jax.data.rlds import Episode

    j = Journal(str(tmp_path / "j"))
    ep = Episode.from_rollout(np.arange(12, dtype=np.float32).reshape(3, 4), np.ones((2, 2)), True)
    e0 = j.write(ep, {"base_action": np.zeros((3, 2))}, {"label": "success", "steps": 2})
    os.makedirs(tmp_path / "j" / ".tmp-episode_000001-999" / "robot_episode")  # a crash mid-write
    j2 = Journal(str(tmp_path / "j"))
    assert [e.index for e in j2.entries()] == [0] and not any(
        n.startswith(".tmp") for n in os.listdir(tmp_path / "j")
    )
    back, extras = j2.read(e0)
    np.testing.assert_array_equal(back.observation, ep.observation)
    assert e0.label == "success" and extras["base_action"].shape == (3, 2)
    os.remove(os.path.join(e0.path, "extras.npz"))
    with pytest.raises(ValueError, match="unreadable"):
        j2.read(e0)


def test_journal_reads_each_entry_once_and_sees_replaced_and_repaired_entries(tmp_path):
    """Entries are read once per journal object (counts stay exact as episodes are added),
    an entry moved out and another written under its name is read again, and metadata that
    was unreadable is read again once repaired."""
    from resfit_jax.data.rlds import Episode
    from resfit_jax.robot import journal as journal_mod

    j = Journal(str(tmp_path / "j"))
    ep = Episode.from_rollout(np.zeros((3, 2), np.float32), np.zeros((2, 1)), True)
    for label, wall in (("success", 1.0), ("failure", 2.0)):
        j.write(ep, {"base_action": np.zeros((3, 1))}, {"label": label, "steps": 2, "wall_s": wall})
    reads = []
    real = journal_mod._entry_metadata

    def counting(path):
        reads.append(path)
        return real(path)

    journal_mod._entry_metadata = counting
    try:
        assert j.counts() == {
            "episodes": 2,
            "usable_episodes": 2,
            "env_steps": 4,
            "successes": 1,
            "robot_s": 3.0,
        }
        j.counts(), j.summary(), j.next_index()
        assert len(reads) == 2  # both entries read once, three calls
        j.write(ep, {"base_action": np.zeros((3, 1))}, {"label": "abort", "wall_s": 4.0})
        assert j.counts()["episodes"] == 3 and j.counts()["robot_s"] == 7.0
        # the last entry moved out, another written under its name: read again
        last = j.entries()[-1]
        shutil.move(last.path, str(tmp_path / "moved_out"))
        assert j.next_index() == 2
        j.write(ep, {"base_action": np.zeros((3, 1))}, {"label": "success", "wall_s": 8.0})
        assert j.entries()[-1].label == "success" and j.counts()["robot_s"] == 11.0
        # damaged metadata is not kept: repaired, it is read again
        from resfit_jax.data.rlds import METADATA_FILE

        meta_file = os.path.join(j.entries()[0].dataset_dir, METADATA_FILE)
        good = open(meta_file).read()
        with open(meta_file, "w") as f:
            f.write("{garbage")
        fresh = Journal(j.directory)
        assert "metadata_error" in fresh.entries()[0].metadata
        with open(meta_file, "w") as f:
            f.write(good)
        assert fresh.entries()[0].label == "success"
    finally:
        journal_mod._entry_metadata = real


# ---------------------------------------------------------------------- trainer, sync mode
def _scripted():
    # episode 1 succeeds at step 5, episode 3 is aborted, the rest time out
    table = {(1, 5): Label.SUCCESS, (3, 2): Label.ABORT}
    return ScriptedLabeller(lambda e, t, o: table.get((e, t)))


def test_sync_trainer_journals_first_and_restart_rebuilds_the_same_replay(tmp_path):
    out = str(tmp_path / "run")
    trainer, limits = point_setup(out, sync_every="step", updates_per_step=2)
    rows = trainer.run(PointRobot(seed=1), _scripted(), limits, 5, progress=lambda s: None)
    assert [r["phase"] for r in rows] == ["warmup"] + ["train"] * 4
    assert [r["label"] for r in rows] == ["failure", "success", "failure", "abort", "failure"]
    assert rows[0]["updates_this_episode"] == 0
    assert rows[2]["updates_this_episode"] == 2 * rows[2]["steps"]  # k updates per step
    entries = trainer.journal.entries()
    assert len(entries) == 5 and entries[3].label == "abort"
    usable_steps = sum(r["steps"] for r in rows if r["label"] != "abort")
    assert trainer.rl.replay_size == usable_steps == rows[-1]["replay"]
    live_replay, live_state = trainer.rl.replay, trainer.rl.state
    trainer.close()

    again, _ = point_setup(out, sync_every="step", updates_per_step=2)
    assert again.rebuilt == {"episodes": 4, "env_steps": usable_steps}
    jax.tree.map(np.testing.assert_array_equal, again.rl.replay, live_replay)
    jax.tree.map(
        np.testing.assert_array_equal, to_storable(again.rl.state), to_storable(live_state)
    )
    assert again.progress["critic_warmup_done"]
    again.close()
    with pytest.raises(ValueError, match="different config"):
        point_setup(out, sync_every="episode")


def test_a_damaged_latest_checkpoint_does_not_crash_loop_the_robot_trainer(tmp_path, capsys):
    """The newest checkpoint damaged: a restart falls back to the previous one with a
    warning, drives the robot, saves over the damaged step, and the next restart is clean."""
    out = str(tmp_path / "run")
    trainer, limits = point_setup(out, warmup_episodes=0, sync_every="episode")
    trainer.run(PointRobot(seed=1), _scripted(), limits, 2, progress=lambda s: None)
    steps = trainer.ckpt.manager.all_steps()
    trainer.close()
    assert len(steps) >= 2
    sys.path.insert(0, os.path.dirname(__file__))
    from test_checkpointing import _flip_bytes

    _flip_bytes(os.path.join(out, "checkpoints", str(steps[-1])))
    again, _ = point_setup(out, warmup_episodes=0, sync_every="episode")
    assert again.restored_step == steps[-2] and "damaged run checkpoint" in capsys.readouterr().err
    again.run(PointRobot(seed=2), _scripted(), limits, 1, progress=lambda s: None)
    assert again.ckpt.latest_step() >= steps[-1]
    again.close()
    third, _ = point_setup(out, warmup_episodes=0, sync_every="episode")
    assert third.restored_step == again.ckpt.latest_step()
    assert "damaged" not in capsys.readouterr().err
    assert len(third.journal.entries()) == 3  # every episode kept
    third.close()


def test_episodes_with_damaged_metadata_are_kept_and_named_not_silently_dropped(tmp_path, capsys):
    """Journal metadata that is garbage, truncated, a list or lacks its label: the restart
    does not crash, leaves those episodes out of the replay and names each one and the fix."""
    import json as _json

    out = str(tmp_path / "run")
    trainer, limits = point_setup(out)
    trainer.run(PointRobot(seed=1), _scripted(), limits, 5, progress=lambda s: None)
    entries = trainer.journal.entries()
    trainer.close()
    meta = lambda e: os.path.join(e.dataset_dir, "resfit_metadata.json")
    open(meta(entries[0]), "w").write("{garbage")
    open(meta(entries[1]), "w").write("[1, 2]")
    m = _json.load(open(meta(entries[2])))
    m.pop("label")
    open(meta(entries[2]), "w").write(_json.dumps(m))
    again, _ = point_setup(out)
    err = capsys.readouterr().err
    assert "3 journaled episode(s) are left out of the replay" in err
    for e in entries[:3]:
        assert e.path in err
    assert "unreadable" in err and "not a JSON object" in err and "no label" in err
    assert again.rebuilt["episodes"] == 1  # episode 3 was aborted, episode 4 is usable
    again.close()


def test_estop_is_journaled_checkpointed_and_raised(tmp_path):
    out = str(tmp_path / "run")
    trainer, limits = point_setup(out, warmup_episodes=0)
    lab = ScriptedLabeller(lambda e, t, o: Label.ESTOP if (e, t) == (1, 3) else None)
    robot = PointRobot()
    with pytest.raises(EmergencyStop, match="journal"):
        trainer.run(robot, lab, limits, 3, progress=lambda s: None)
    assert robot.stops == 1
    entries = trainer.journal.entries()
    assert [e.label for e in entries] == ["failure", "estop"]
    assert entries[1].metadata["steps"] == 4
    assert trainer.ckpt.latest_step() is not None
    trainer.close()


@pytest.mark.parametrize("where", ["journal", "updates"])
def test_sigterm_between_episodes_keeps_the_episode_and_checkpoints(tmp_path, where):
    """SIGTERM while a finished episode is journaled (held until the write is complete) or
    during the updates after it: the episode is in the journal, the learner is
    checkpointed, and the run ends with KeyboardInterrupt (the scripts' clean stop)."""
    import os
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    out = str(tmp_path / "run")
    trainer, limits = point_setup(out, warmup_episodes=0, sync_every="episode")
    if where == "journal":
        write = trainer.journal.write

        def interrupted_write(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            return write(*args, **kwargs)

        trainer.journal.write = interrupted_write
    else:
        update = trainer.rl.update

        def interrupted_update():
            os.kill(os.getpid(), signal.SIGTERM)
            return update()

        trainer.rl.update = interrupted_update
    previous = signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        with pytest.raises(KeyboardInterrupt):
            trainer.run(PointRobot(), _scripted(), limits, 3, progress=lambda s: None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert len(trainer.journal.entries()) == 1  # the finished episode was kept
    assert trainer.ckpt.latest_step() is not None
    trainer.close()


# ---------------------------------------------------------------------------- async mode
def test_async_learner_progresses_with_consistent_snapshots(tmp_path):
    trainer, limits = point_setup(str(tmp_path / "run"))
    trainer.run(
        PointRobot(), ScriptedLabeller(lambda e, t, o: None), limits, 1, progress=lambda s: None
    )  # one warm-up episode in the replay
    rl = trainer.rl
    rl.compile_update()
    digests = {}

    def digest(state):
        return float(
            sum(np.asarray(x, np.float64).sum() for x in jax.tree.leaves(state.actor_params))
        )

    async_l = AsyncLearner(rl, on_update=lambda v, s, m: digests.__setitem__(v, digest(s)))
    digests[0] = digest(rl.state)
    seen, stop = [], threading.Event()

    def actor():
        while not stop.is_set() and len(seen) < 400:
            version, state = async_l.snapshot()
            seen.append((version, digest(state)))
            time.sleep(0.002)

    async_l.start()
    t = threading.Thread(target=actor)
    t.start()
    t.join(timeout=60)
    stop.set()
    async_l.submit(
        trainer.journal.read(trainer.journal.entries()[0])[0],
        trainer.journal.read(trainer.journal.entries()[0])[1]["base_action"],
    )
    time.sleep(0.2)
    async_l.stop()
    versions = [v for v, _ in seen]
    assert versions == sorted(versions) and versions[-1] >= 5 and len(seen) >= 50
    for v, d in seen:  # every snapshot is exactly the state the learner published
        assert d == digests[v]
    assert rl.replay_size == 24  # the submitted episode was inserted
    trainer.close()


def test_async_trainer_runs_episodes(tmp_path):
    trainer, limits = point_setup(str(tmp_path / "run"), mode="async")
    rows = trainer.run(
        PointRobot(), ScriptedLabeller(lambda e, t, o: None), limits, 3, progress=lambda s: None
    )
    assert len(rows) == 3 and trainer.rl.updates > 0
    assert trainer.rl.replay_size == sum(r["steps"] for r in rows)
    trainer.close()


# ------------------------------------------------------------- the simulated robot process
@pytest.fixture(scope="module")
def sim_server():
    from resfit_jax.robot.sim_server import spawn_server

    proc, address, key = spawn_server("PickPlace", latency_s=0.001, jitter_s=0.002)
    yield address, key
    proc.kill()
    proc.wait()


def test_sim_robot_server_rejects_a_wrong_key(sim_server):
    from resfit_jax.robot.sim_server import RemoteRobot

    address, key = sim_server
    with pytest.raises(PermissionError, match="wrong key"):
        RemoteRobot(address, b"not-the-key")
    robot = RemoteRobot(address, key.encode())  # the server still serves the right key
    obs = robot.reset()
    assert obs.shape == (28,) and robot.spec["task"] == "PickPlace"
    robot.close()


def test_sim_robot_resets_a_named_scene_exactly(sim_server):
    """set_scene(i) makes the next reset scene i, whatever ran before (blind A/B's matched
    initial conditions); other resets stay random."""
    from resfit_jax.robot.sim_server import RemoteRobot

    address, key = sim_server
    robot = RemoteRobot(address, key.encode())
    assert robot.exact_scenes
    robot.set_scene(5)
    first = robot.reset()
    robot.send_action(np.asarray(first[:7]) + 0.05)  # move, so the state differs
    other = robot.reset()
    robot.set_scene(5)
    again = robot.reset()
    robot.set_scene(6)
    six = robot.reset()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other) and not np.array_equal(first, six)
    with pytest.raises(RuntimeError, match="set_scene takes one integer"):
        robot._call("set_scene", -2)
    robot.close()


@pytest.mark.slow
def test_end_to_end_sim_robot_survives_sigkill(sim_server, tmp_path):
    from resfit_jax.data.rlds import read_episodes
    from resfit_jax.robot.sim_server import KEY_ENV

    address, key = sim_server
    out = str(tmp_path / "robot")
    worker = os.path.join(os.path.dirname(__file__), "robot_worker.py")
    proc = subprocess.Popen(
        [sys.executable, worker, out, address],
        env=dict(os.environ, **{KEY_ENV: key}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    journal_dir = os.path.join(out, "journal")
    sigkill_when(proc, journal_dir, "episode_", 3, 300, 0.2)  # inside the next episode
    log = proc.stdout.read()
    finished = len(re.findall(r"^episode \d+ \[", log, re.M))  # progress lines, journaled
    entries = Journal(journal_dir).entries()  # also clears a half-written episode
    assert len(entries) >= 3 and len(entries) >= finished
    assert not any(n.startswith(".tmp") for n in os.listdir(journal_dir))
    for e in entries:  # every journaled episode is readable
        (ep,) = read_episodes(e.dataset_dir)
        assert ep.observation.shape == (e.metadata["steps"] + 1, 28)
    from robot_worker import arm_setup

    trainer, _ = arm_setup(out)  # restart: replay from the journal
    steps = sum(e.metadata["steps"] for e in entries if e.label in ("success", "failure"))
    assert trainer.rebuilt["episodes"] == len(entries) and trainer.rl.replay_size == steps
    assert trainer.restored_step is not None
    trainer.close()


@pytest.mark.slow
def test_a_spawned_sim_server_exits_when_its_parent_is_killed():
    """run_robot --spawn_sim SIGKILLed must not leave the simulated robot listening."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        f"import sys, time; sys.path.insert(0, {root!r})\n"
        "from resfit_jax.robot.sim_server import spawn_server\n"
        "p, a, k = spawn_server('PickPlace')\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(parent.stdout.readline())
        os.kill(server_pid, 0)  # it runs
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                os.kill(server_pid, 0)
            except ProcessLookupError:
                break
            try:  # reap it if it is ours
                os.waitpid(server_pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.2)
        else:
            os.kill(server_pid, signal.SIGKILL)
            raise AssertionError("the spawned sim server outlived its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
