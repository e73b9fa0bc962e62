"""Residual TD3 must fix a deliberately biased base on a tiny pure-JAX task (CPU preset).

This runs the README quick start (experiments/quickstart.py) with its defaults.
"""
import pytest

from experiments.quickstart import QuickstartConfig, run, wilson


@pytest.mark.slow
def test_residual_td3_fixes_biased_base():
    cfg = QuickstartConfig()
    assert cfg.eval_episodes >= 100
    out = run(cfg)
    base = float(out["base"]["success_rate"])
    final = float(out["residual"]["success_rate"])
    assert 0.30 <= base <= 0.50, base
    assert final >= 0.90, (base, final)
    assert out["residual"]["success"].shape == (cfg.eval_episodes,)
    assert out["env_steps"] <= 25_000
    # the residual stays a bounded correction
    assert 0.0 < out["history"][-1]["residual_abs_mean"] <= 0.1


def test_wilson_interval():
    lo, hi = wilson(0.5, 100)
    assert 0.40 < lo < 0.41 and 0.59 < hi < 0.60
