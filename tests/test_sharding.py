"""Data parallelism over devices and hosts (resfit_jax.sharding), on forced CPU devices.

The device count is fixed when JAX starts, so each check runs tests/sharding_worker.py in a
subprocess: a sharded update equals the update of the global batch (2 and 4 devices); two
shards on two devices equal the same two shards on one device, chunk by chunk; one shard
through the layout equals the plain seed-vmapped loop; seeds split over two devices equal
them on one; a run started on two devices resumes
on one; and two jax.distributed processes on localhost train, checkpoint and resume a run.
"""

import dataclasses
import json
import os
import socket
import subprocess
import sys

import pytest

from resfit_jax import sharding
from resfit_jax.sim.config import TrainConfig

WORKER = os.path.join(os.path.dirname(__file__), "sharding_worker.py")


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env.setdefault(
        "RESFIT_JAX_CACHE_DIR",
        os.path.join(os.path.dirname(os.path.dirname(__file__)), ".jax_cache"),
    )
    return env


def _result(text: str) -> dict:
    lines = [x for x in text.splitlines() if x.startswith("RESULT ")]
    assert lines, text[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def run_worker(*args, timeout=900) -> dict:
    p = subprocess.run(
        [sys.executable, WORKER, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return _result(p.stdout)


def test_a_sharded_update_equals_the_update_of_the_global_batch():
    """Gradients averaged over shards + target noise drawn at the global shape: the params
    after a sharded update (and a critic warm-up) on 2 and on 4 devices equal the
    single-device ones."""
    r = run_worker("update", timeout=300)
    for n in (2, 4):
        for method in ("update", "critic_warmup"):
            assert r[f"{method}_moved_{n}"] > 1e-4  # the update really changed the params
            assert r[f"{method}_{n}"] < 1e-5 and r[f"{method}_loss_{n}"] < 1e-5


@pytest.mark.slow
def test_sharded_chunks_and_resume_on_another_device_count(tmp_path):
    r = run_worker("loop", tmp_path)
    assert r["devices"] == 2 and r["placed"] == 2  # the replay really lives on 2 devices
    assert r["replay_shape"] == [4, 1024, 4]  # [shards x seeds, capacity / 2, obs]
    assert r["chunk_diff"] < 1e-5 and r["metric_diff"] < 1e-5
    # one critic warm-up chunk (10 steps) + one train chunk (8 vector steps x UTD 2)
    assert r["critic_steps"] == [10 + 8 * 2] * 2
    assert r["single_diff"] < 1e-5
    assert r["seed_mesh_diff"] < 1e-5 and r["seed_placed"] == 2
    assert r["resume_diff"] < 1e-4
    assert r["resume_success"][0] == r["resume_success"][1]
    assert "started with 2 data shard(s)" in r["shards_error"]
    assert "--config.shards=2" in r["shards_error"]


@pytest.mark.slow
def test_two_jax_distributed_processes_train_checkpoint_and_resume(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, "host", str(i), str(port), str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for i in range(2)
    ]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=900)
        assert p.returncode == 0, stdout[-2000:] + stderr[-4000:]
        results.append(_result(stdout))
    for i, r in enumerate(results):
        assert r["process"] == i and r["processes"] == 2 and r["devices"] == 2
        assert r["local"] == 1
        assert not r["first_complete"] and r["complete"] and r["checkpoints"]
    assert results[0]["critic_steps"] == results[1]["critic_steps"]
    assert results[0]["success"] == results[1]["success"]
    # only process 0 writes the run's files; the checkpoint is one, written together
    names = set(os.listdir(out))
    assert {"config.json", "metrics.jsonl", "summary.json", "checkpoints"} <= names
    assert len([n for n in os.listdir(out / "checkpoints") if n.isdigit()]) >= 1


def test_mesh_and_layout_errors_name_the_fix():
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        sharding.make_mesh(data=64)
    with pytest.raises(ValueError, match=r"num_envs \(6\) must divide into 4 data shards"):
        TrainConfig(num_envs=6, shards=4)
    with pytest.raises(ValueError, match=r"multiple of the mesh's data devices"):
        TrainConfig(num_envs=8, mesh=(4, 1), shards=2)
    with pytest.raises(ValueError, match="mesh must be"):
        TrainConfig(mesh=(0, 1))
    cfg = TrainConfig(num_envs=8, shards=4)
    assert cfg.data_shards == 4 and cfg.local_replay.batch_size == cfg.replay.batch_size // 4
    assert cfg.local_replay.capacity == cfg.replay.capacity // 4
    assert dataclasses.replace(cfg, shards=0, mesh=(2, 1)).data_shards == 2


def test_local_draw_slices_the_global_draw():
    """Each named-vmap shard gets its rows of the global draw (the basis of the equality)."""
    import jax
    import numpy as np

    key = jax.random.key(3)
    full = jax.random.normal(key, (8, 3))
    parts = jax.vmap(
        lambda _: sharding.local_draw(jax.random.normal, key, (2, 3), sharding.SHARDS),
        axis_name=sharding.SHARDS,
    )(np.arange(4))
    np.testing.assert_allclose(np.asarray(parts).reshape(8, 3), np.asarray(full), atol=1e-6)
    assert sharding.local_draw(jax.random.normal, key, (8, 3), None).shape == (8, 3)
