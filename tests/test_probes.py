"""studies.probes: a finished run becomes a probe record; unfinished runs are refused."""

import json
import os

import pytest

from studies.probes import record, table


def _run(tmp_path, complete=True):
    d = tmp_path / "k20"
    os.makedirs(d)
    pooled = {
        "episodes": 300,
        "base_success_rate": 0.8,
        "success_rate": 0.85,
        "fixed": 20,
        "broken": 5,
        "p_value": 0.003,
    }
    summary = {
        "complete": complete,
        "task": "PickPlace",
        "seeds": [0],
        "env_steps": 2048,
        "wall_s": 10.0,
        "final": {"pooled": pooled, "last": {"pooled": dict(pooled, success_rate=0.7)}},
    }
    json.dump(summary, open(d / "summary.json", "w"))
    config = {"overrides": ["residual.decision_steps=20"], "task": "PickPlace", "seeds": [0]}
    json.dump(config, open(d / "config.json", "w"))
    with open(d / "metrics.jsonl", "w") as f:
        for step in (1024, 2048):
            row = {"kind": "train", "env_steps": step, "seed": 0, "action_gap": 0.01}
            f.write(json.dumps(row | {"td_error_abs": 0.02, "q_head_std": 0.03}) + "\n")
        f.write(
            json.dumps({"kind": "eval", "env_steps": 2048, "seed": 0, "success_rate": 0.9}) + "\n"
        )
    return str(d)


def test_a_finished_run_becomes_a_record(tmp_path):
    r = record(_run(tmp_path))
    assert r["name"] == "k20" and r["overrides"] == ["residual.decision_steps=20"]
    assert r["kept"]["fixed"] == 20 and r["last"]["success_rate"] == 0.7
    assert r["periodic"] == [{"env_steps": 2048, "seed": 0, "success_rate": 0.9}]
    assert r["mechanism"]["end"]["action_gap"] == 0.01
    text = table([r])
    assert "85.0% (20/5, p 0.003)" in text and "70.0%" in text


def test_an_unfinished_run_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not complete"):
        record(_run(tmp_path, complete=False))
    with pytest.raises(FileNotFoundError, match="no summary.json"):
        record(str(tmp_path / "missing"))


def test_an_unfinished_run_is_recorded_only_when_asked(tmp_path):
    d = _run(tmp_path, complete=False)
    os.remove(os.path.join(d, "summary.json"))
    r = record(d, unfinished=True)
    assert r["complete"] is False and r["kept"] is None and r["env_steps"] == 2048
    assert r["periodic"][0]["success_rate"] == 0.9 and r["mechanism"]["end"]["action_gap"] == 0.01
    assert "periodic 90% at 2,048 (stopped)" in table([r])
