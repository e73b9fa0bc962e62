"""ResFiT must fix a deliberately biased base: PointReach (pure JAX, fast) through the same
trainer the experiments use (train_residual with the CPU preset): base 30-60%, ResFiT >= 90%
on 200 matched evaluation episodes within ~20k main-loop env steps."""

import pytest

from resfit_jax import envs
from resfit_jax.base.policy import FunctionBase
from resfit_jax.data.demos import collect_episodes, make_rollout
from resfit_jax.envs.point_reach import biased_base_action
from resfit_jax.run.logger import read_metrics
from resfit_jax.run.stats import wilson_interval
from resfit_jax.sim.presets import preset
from resfit_jax.sim.trainer import make_trainer, train_residual


@pytest.mark.slow
def test_residual_td3_fixes_biased_base(tmp_path):
    task = envs.make("PointReach")
    expert = envs.make_expert("PointReach", task, envs.ExpertStyle())
    demos, _ = collect_episodes(make_rollout(task, expert.init, expert.act), 60, 30)
    cfg = preset("PointReach", "cpu", warmup_env_steps=1024, eval_every=10_240, eval_episodes=200)
    trainer = make_trainer(
        task, FunctionBase(biased_base_action, task.action_size), demos, cfg, seeds=[0]
    )
    s = train_residual(trainer, str(tmp_path), progress=False, task_name="PointReach")
    base, final = s["base"][0], s["resfit"][0]
    assert base["episodes"] == final["episodes"] == 200
    assert 0.30 <= base["success_rate"] <= 0.60, base  # the biased base: ~45-51%
    assert final["success_rate"] >= 0.90, (base, final)
    assert s["env_steps"] <= 20_480
    # the residual moved, and stays a bounded correction
    last = [r for r in read_metrics(str(tmp_path)) if r["kind"] == "train"][-1]
    assert 0.0 < last["residual_abs_mean"] <= cfg.learner.action_scale


def test_wilson_interval():
    lo, hi = wilson_interval(50, 100)
    assert 0.40 < lo < 0.41 and 0.59 < hi < 0.60
    assert wilson_interval(0, 0) == (0.0, 1.0)
