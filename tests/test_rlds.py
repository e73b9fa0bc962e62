"""RLDS on disk: exact round trip, schema flags, refusal to overwrite, clear errors for
mismatched shapes and corrupted files."""

import glob
import os

import numpy as np
import pytest

from resfit_jax.data import Episode, check_compatible, read_episodes, read_metadata, write_episodes


def _episodes(n=5, obs_dim=6, action_dim=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = int(rng.integers(2, 9))
        out.append(
            Episode.from_rollout(
                rng.normal(size=(t + 1, obs_dim)),
                rng.normal(size=(t, action_dim)),
                success=bool(i % 2),
                episode_id=i,
                seed=100 + i,
            )
        )
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    eps = _episodes()
    path = write_episodes(
        str(tmp_path_factory.mktemp("rlds")), eps, metadata={"task": "Synthetic", "noise": 0.5}
    )
    return eps, path


def test_round_trip_is_exact_and_ordered(dataset):
    eps, path = dataset
    back = read_episodes(path)
    assert [b.episode_id for b in back] == [e.episode_id for e in eps]
    for a, b in zip(eps, back):
        for k in (
            "observation",
            "action",
            "reward",
            "discount",
            "is_first",
            "is_last",
            "is_terminal",
        ):
            x, y = getattr(a, k), getattr(b, k)
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x, y)
        assert (a.success, a.seed) == (b.success, b.seed)
    meta = read_metadata(path)
    assert meta["task"] == "Synthetic" and meta["obs_dim"] == 6 and meta["action_dim"] == 3
    assert meta["num_episodes"] == len(eps)
    assert len(read_episodes(path, limit=2)) == 2


def test_step_layout_follows_rlds():
    ep = Episode.from_rollout(np.zeros((4, 2)), np.ones((3, 1)), success=True)
    np.testing.assert_array_equal(ep.reward, [0, 0, 1, 0])
    np.testing.assert_array_equal(ep.discount, [1, 1, 1, 0])
    np.testing.assert_array_equal(ep.is_first, [1, 0, 0, 0])
    np.testing.assert_array_equal(ep.is_last, [0, 0, 0, 1])
    np.testing.assert_array_equal(ep.is_terminal, [0, 0, 0, 1])
    np.testing.assert_array_equal(ep.action[-1], [0.0])
    fail = Episode.from_rollout(np.zeros((4, 2)), np.ones((3, 1)), success=False)
    assert fail.reward.sum() == 0 and not fail.is_terminal.any() and fail.discount[-1] == 1
    with pytest.raises(ValueError, match="T \\+ 1"):
        Episode.from_rollout(np.zeros((3, 2)), np.ones((3, 1)), success=False)


def test_mismatched_task_is_rejected(dataset):
    eps, path = dataset
    back = read_episodes(path)
    check_compatible(back, obs_dim=6, action_dim=3)
    with pytest.raises(
        ValueError,
        match="observation size 6 and action size 3.*PickPlace has "
        "observation size 28 and action size 7",
    ):
        check_compatible(back, obs_dim=28, action_dim=7, task_name="PickPlace")


def test_never_overwrites_and_reports_bad_paths(dataset, tmp_path):
    eps, path = dataset
    root = os.path.dirname(os.path.dirname(path))
    with pytest.raises(FileExistsError, match="never overwritten"):
        write_episodes(root, eps)
    with pytest.raises(FileNotFoundError, match="not a tfds dataset directory"):
        read_episodes(str(tmp_path))
    with pytest.raises(ValueError, match="dims"):
        write_episodes(str(tmp_path / "mixed"), [eps[0], _episodes(1, obs_dim=4)[0]])


def test_corrupted_file_gives_clear_error(tmp_path):
    path = write_episodes(str(tmp_path), _episodes(3))
    shard = glob.glob(os.path.join(path, "*.array_record*"))[0]
    with open(shard, "r+b") as f:
        f.seek(64)
        f.write(b"\x00" * 256)
    with pytest.raises(ValueError, match="unreadable|cannot open"):
        read_episodes(path)
