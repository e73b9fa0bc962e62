"""Episode outcome classifier of studies/failure_modes.py on hand-made trajectories."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from studies.failure_modes import classify, closest_approach, misses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pickplace_episode(cube_z, cube_xy, tcp_offset, tote=(0.45, 0.2)):
    """obs [L, 28]: tcp at 13:16, cube at 16:19, tote centre at 26:28 (envs/pick_place.py)."""
    L = len(cube_z)
    obs = np.zeros((L, 28), np.float32)
    obs[:, 16:18] = cube_xy
    obs[:, 18] = cube_z
    obs[:, 13:16] = obs[:, 16:19] + np.asarray(tcp_offset, np.float32)
    obs[:, 26:28] = tote
    return obs


def stack(cases: dict) -> tuple[np.ndarray, np.ndarray]:
    """Episodes [L_i, D] -> (obs [T, N, D] zero-padded to the longest, length [N])."""
    eps = list(cases.values())
    obs = np.zeros((max(map(len, eps)), len(eps), eps[0].shape[1]), np.float32)
    length = np.zeros(len(eps), np.int32)
    for i, ep in enumerate(eps):
        obs[: len(ep), i], length[i] = ep, len(ep)
    return obs, length


def test_closest_approach_ignores_steps_after_the_end_and_misses_pairs_episodes():
    z = np.full(5, 0.02)
    near = pickplace_episode(z, (0.4, 0.0), (0.0, 0.03, 0.04))  # 5 cm all along
    far = pickplace_episode(z, (0.4, 0.0), (0.0, 0.0, 0.12))  # 12 cm
    obs = np.zeros((6, 2, 28), np.float32)
    obs[:5, 0], obs[:5, 1] = near, far
    obs[5, 0] = pickplace_episode(z, (0.4, 0.0), (0.0, 0.0, 0.0))[0]  # past its end: ignored
    d = closest_approach("PickPlace", obs, np.array([5, 5]))
    np.testing.assert_allclose(d, [0.05, 0.12], rtol=1e-5)
    with pytest.raises(ValueError, match="No tool / object layout"):
        closest_approach("Nope", obs, np.array([5, 5]))
    miss = "never reached the cube"
    labels = {"base": [miss, miss, "success"], "resfit": [miss, "success", miss]}
    closest = {"base": [0.05, 0.12, 0.0], "resfit": [0.03, 0.0, 0.08]}
    out = misses(labels, closest)
    assert out["base"]["episodes"] == 2 and out["resfit"]["episodes"] == 2
    assert out["base"]["closest_cm_p10_p50_p90"][1] == pytest.approx(8.5)
    assert out["both_missed"] == {"episodes": 1, "closer_cm_median": 2.0, "closer_cm_mean": 2.0}


def test_pickplace_outcomes():
    far = (0.0, 0.0, 0.15)
    lift = np.concatenate([np.full(10, 0.02), np.linspace(0.02, 0.15, 10)])
    cases = {
        "never reached the cube": pickplace_episode(np.full(20, 0.02), (0.4, -0.1), far),
        "grasp failed (reached the cube, never lifted)": pickplace_episode(
            np.full(20, 0.02), (0.4, -0.1), (0.0, 0.0, 0.01)
        ),
        "held over the tote at the time limit": pickplace_episode(
            lift, (0.45, 0.21), (0.0, 0.0, 0.01)
        ),
        "held away from the tote at the time limit": pickplace_episode(
            lift, (0.40, 0.0), (0.0, 0.0, 0.01)
        ),
        "dropped outside the tote": pickplace_episode(
            np.concatenate([lift, [0.02]]), (0.40, 0.0), far
        ),
        "released over the tote, not resting (on a wall)": pickplace_episode(
            np.concatenate([lift, [0.08]]), (0.45, 0.21), far
        ),
    }
    obs, length = stack(cases)
    success = np.zeros(len(cases), bool)
    assert classify("PickPlace", obs, success, length) == list(cases)
    assert classify("PickPlaceEE", obs, success, length) == list(cases)  # same observations
    success[0] = True
    assert classify("PickPlace", obs, success, length)[0] == "success"
    with pytest.raises(ValueError, match="No outcome classifier for task 'Nope'"):
        classify("Nope", obs, success, length)


def test_replay_is_checked_against_the_runs_recorded_outcomes(tmp_path, capsys):
    """The replayed held-out successes must be the ones summary.json recorded per episode."""
    from studies.failure_modes import check_against_summary

    final = {
        "per_seed": [{"outcomes": "1101"}, {"outcomes": "0111"}],
        "base_per_seed": [{"outcomes": "1001"}, {"outcomes": "0011"}],
    }
    (tmp_path / "summary.json").write_text(json.dumps({"final": final}))
    base = {"success": np.array([[1, 0, 0, 1], [0, 0, 1, 1]], bool)}
    resfit = {"success": np.array([[1, 1, 0, 1], [0, 1, 1, 1]], bool)}
    check_against_summary(str(tmp_path), {"base": base, "resfit": resfit})
    assert "match" in capsys.readouterr().out
    moved = {"success": resfit["success"].copy()}
    moved["success"][1, 0] = True  # one episode of seed index 1 differs
    with pytest.raises(ValueError, match="resfit seed index 1: .* differ .* in 1 episodes"):
        check_against_summary(str(tmp_path), {"base": base, "resfit": moved})
    check_against_summary(str(tmp_path / "nowhere"), {"base": base})  # no summary: nothing


def test_a_run_whose_recorded_overrides_do_not_rebuild_its_config_is_refused(tmp_path):
    """A run recorded as plain-preset overrides whose config.json says it trained the chunk
    recipe (what experiments.train once wrote) must not be replayed as the plain preset."""
    from resfit_jax.run.configs import to_dict
    from resfit_jax.sim.presets import preset, with_recipe

    info = {
        "task": "PickPlace",
        "base": "/nonexistent/base",
        "demos": "/nonexistent/demos",
        "seeds": [0],
        "overrides": ["final_episodes=300"],
        "config": to_dict(with_recipe(preset("PickPlace"), "chunk")),
    }
    (tmp_path / "config.json").write_text(json.dumps(info))
    r = subprocess.run(
        [sys.executable, "-m", "studies.failure_modes", f"--run={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "no longer give the config it trained with" in r.stderr
    assert "learner.advantage_head: True -> False" in r.stderr


def bimanual_episode(bar_z, bar_xy, right_offset, left_offset, tote=(0.45, 0.3)):
    """obs [L, 47]: right tcp 13:16, left tcp 29:32, bar 32:35, tote centre 45:47
    (envs/bimanual_handover.py); the offsets [L, 3] or [3] place each tcp from the bar."""
    L = len(bar_z)
    obs = np.zeros((L, 47), np.float32)
    obs[:, 32:34] = bar_xy
    obs[:, 34] = bar_z
    obs[:, 13:16] = obs[:, 32:35] + np.asarray(right_offset, np.float32)
    obs[:, 29:32] = obs[:, 32:35] + np.asarray(left_offset, np.float32)
    obs[:, 45:47] = tote
    return obs


def test_bimanual_outcomes():
    far, grip = (0.0, 0.0, 0.2), (0.0, 0.03, 0.0)
    rest = np.full(20, 0.015)
    lift = np.concatenate([rest[:10], np.linspace(0.015, 0.2, 10)])
    handed = np.array([far] * 15 + [grip] * 5)  # the left hand comes in at the end
    cases = {
        "never reached the bar (right arm)": bimanual_episode(rest, (0.4, -0.2), far, far),
        "grasp failed (the right arm reached the bar, never lifted)": bimanual_episode(
            rest, (0.4, -0.2), grip, far
        ),
        "no handover: right holds the bar at the time limit": bimanual_episode(
            lift, (0.4, 0.0), grip, far
        ),
        "dropped before the handover": bimanual_episode(
            np.concatenate([lift, [0.015]]), (0.4, 0.0), np.array([grip] * 20 + [far]), far
        ),
        "left holds the bar over the tote at the time limit": bimanual_episode(
            lift, (0.45, 0.3), far, handed
        ),
        "left holds the bar away from the tote at the time limit": bimanual_episode(
            lift, (0.4, 0.0), far, handed
        ),
        "released over the tote, not resting (on a wall)": bimanual_episode(
            np.concatenate([lift, [0.06]]), (0.45, 0.3), far, np.concatenate([handed, [far]])
        ),
        "dropped after the handover, outside the tote": bimanual_episode(
            np.concatenate([lift, [0.015]]), (0.4, 0.0), far, np.concatenate([handed, [far]])
        ),
    }
    obs, length = stack(cases)
    success = np.zeros(len(cases), bool)
    assert classify("BimanualHandover", obs, success, length) == list(cases)
    assert classify("BimanualHandoverEE", obs, success, length) == list(cases)
    d = closest_approach("BimanualHandover", obs, length)
    np.testing.assert_allclose(d[:2], [0.2, 0.03], rtol=1e-5)  # the right (picking) tcp
