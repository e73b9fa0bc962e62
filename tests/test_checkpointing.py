"""Run checkpoints: exact round trip of typed keys, zero-size leaves and dtypes; clear errors."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resfit_jax.run.checkpointing import RunCheckpointer, to_storable


def _tree(seed):
    return {
        "key": jax.random.key(seed),
        "keys": jax.random.split(jax.random.key(seed), 3),
        "empty": jnp.zeros((4, 0)),
        "f": jax.random.normal(jax.random.key(seed), (5, 2)),
        "i": jnp.arange(3, dtype=jnp.int32),
        "b": jnp.array([True, False]),
        "u8": jnp.arange(4, dtype=jnp.uint8),
    }


def test_round_trip_is_exact(tmp_path):
    ckpt = RunCheckpointer(str(tmp_path))
    ckpt.save(1, _tree(0), {"phase": "train", "n": 3})
    ckpt.save(2, _tree(1), {"phase": "done", "n": 4})
    restored, progress = ckpt.restore(_tree(7))
    assert progress == {"phase": "done", "n": 4}
    jax.tree.map(np.testing.assert_array_equal, to_storable(restored), to_storable(_tree(1)))
    assert jax.random.key_impl(restored["key"]) == jax.random.key_impl(_tree(1)["key"])
    assert restored["u8"].dtype == jnp.uint8 and restored["empty"].shape == (4, 0)
    older, _ = ckpt.restore(_tree(7), step=1)
    np.testing.assert_array_equal(older["f"], _tree(0)["f"])


def test_missing_and_corrupted_checkpoints_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="No run checkpoint"):
        RunCheckpointer(str(tmp_path / "none")).restore(_tree(0))
    ckpt = RunCheckpointer(str(tmp_path / "run"))
    ckpt.save(1, _tree(0), {})
    for root, _, files in os.walk(ckpt.directory):
        for name in files:
            if "state" in root and not name.startswith("_"):
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"garbage")
    with pytest.raises(ValueError, match=r"No readable run checkpoint.*checksum mismatch"):
        ckpt.restore(_tree(0))
    wrong = dict(_tree(0), f=jnp.zeros((6, 2)))
    fresh = RunCheckpointer(str(tmp_path / "run2"))
    fresh.save(1, _tree(0), {})
    with pytest.raises(ValueError, match=r"could not be read|does not match this configuration"):
        fresh.restore(wrong)


def _flip_bytes(step_dir):
    """Flip one byte in the middle of the largest array file of a step."""
    files = [
        os.path.join(d, f)
        for d, _, fs in os.walk(step_dir)
        for f in fs
        if "state" in d and not f.startswith("_")
    ]
    big = max(files, key=os.path.getsize)
    with open(big, "r+b") as f:
        f.seek(os.path.getsize(big) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))


# orbax abandons its read coroutine when the damaged checkpoint fails to load; Python then
# reports the coroutine's GeneratorExit as "unraisable" (harmless, nothing is left open)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_damaged_latest_checkpoint_is_reported_and_the_previous_good_one_restored(
    tmp_path, capsys
):
    ckpt = RunCheckpointer(str(tmp_path / "run"))
    ckpt.save(1, _tree(0), {"n": 1})
    ckpt.save(2, _tree(1), {"n": 2})
    assert ckpt.verify(2) is True
    _flip_bytes(os.path.join(ckpt.directory, "2"))
    assert ckpt.verify(2) is False
    restored, progress = ckpt.restore(_tree(7))
    assert progress == {"n": 1}
    np.testing.assert_array_equal(restored["f"], _tree(0)["f"])
    err = capsys.readouterr().err
    assert "damaged run checkpoint" in err and os.path.join(ckpt.directory, "2") in err
    # the damaged step is moved aside, named in the warning, so the run can write step 2
    # again instead of failing on every save (and every later --resume)
    aside = ckpt.directory + "_damaged"
    assert aside in err and [n.split("-")[0] for n in os.listdir(aside)] == ["2"]
    assert ckpt.manager.all_steps() == [1] and ckpt.verify(2) is None
    ckpt.save(2, _tree(5), {"n": 22})
    restored, progress = ckpt.restore(_tree(7))
    assert progress == {"n": 22} and "damaged" not in capsys.readouterr().err
    np.testing.assert_array_equal(restored["f"], _tree(5)["f"])
    _flip_bytes(os.path.join(ckpt.directory, "2"))
    with pytest.raises(ValueError, match="is damaged"):
        ckpt.restore(_tree(7), step=2)
    _flip_bytes(os.path.join(ckpt.directory, "1"))
    with pytest.raises(ValueError, match="No readable run checkpoint"):
        ckpt.restore(_tree(7))
    # checksums of steps orbax dropped are dropped too
    ckpt.save(3, _tree(2), {})
    ckpt.save(4, _tree(3), {})
    assert sorted(os.listdir(os.path.join(ckpt.directory, "checksums"))) == ["3.sha256", "4.sha256"]


def _truncate(step_dir):
    files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs if "state" in d]
    big = max(files, key=os.path.getsize)
    with open(big, "r+b") as f:
        f.truncate(os.path.getsize(big) // 2)


def _garbage(path):
    with open(path, "w") as f:
        f.write("{not json")


DAMAGE = {
    "bytes flipped": _flip_bytes,
    "data truncated": _truncate,
    "state deleted": lambda s: __import__("shutil").rmtree(os.path.join(s, "state")),
    "progress garbage": lambda s: _garbage(os.path.join(s, "progress", "metadata")),
    "orbax metadata deleted": lambda s: os.remove(os.path.join(s, "_CHECKPOINT_METADATA")),
    "checksum garbage and data flipped": lambda s: (
        _garbage(os.path.join(os.path.dirname(s), "checksums", "2.sha256")),
        _flip_bytes(s),
    ),
    "checksum missing and data flipped": lambda s: (
        os.remove(os.path.join(os.path.dirname(s), "checksums", "2.sha256")),
        _flip_bytes(s),
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_every_kind_of_damage_falls_back_then_saves_and_resumes_again(tmp_path, capsys, damage):
    """The issue's damage list: each falls back to the previous good step with a warning,
    the damaged step is moved aside, and the run then saves that step again and a later
    restore (a second --resume) reads the new one, without the warning."""
    ckpt = RunCheckpointer(str(tmp_path / "run"))
    ckpt.save(1, _tree(0), {"n": 1})
    ckpt.save(2, _tree(1), {"n": 2})
    DAMAGE[damage](os.path.join(ckpt.directory, "2"))
    restored, progress = ckpt.restore(_tree(7))
    assert progress == {"n": 1}
    np.testing.assert_array_equal(restored["f"], _tree(0)["f"])
    assert "damaged run checkpoint" in capsys.readouterr().err
    ckpt.save(2, _tree(5), {"n": 22})
    again = RunCheckpointer(str(tmp_path / "run"))  # a later process
    restored, progress = again.restore(_tree(7))
    assert progress == {"n": 22} and "damaged" not in capsys.readouterr().err
    np.testing.assert_array_equal(restored["f"], _tree(5)["f"])
