"""Residual TD3 must fix a deliberately biased base on a tiny pure-JAX task (CPU preset)."""
import jax
import jax.numpy as jnp
import pytest

from resfit_jax.base_policy import FunctionBase
from resfit_jax.envs import PointReach
from resfit_jax.envs.point_reach import biased_base_action, expert_action
from resfit_jax.normalization import ActionScaler
from resfit_jax.replay import ReplayBuffer
from resfit_jax.residual_td3 import ResidualTD3Config, make_learner
from resfit_jax.training.sim_loop import SimLoop, fill_from_policy

EVAL_EPISODES = 200


@pytest.mark.slow
def test_residual_td3_fixes_biased_base():
    task = PointReach()
    base = FunctionBase(biased_base_action, task.action_size)
    cfg = ResidualTD3Config.cpu()
    scaler = ActionScaler.from_bounds(task.action_low, task.action_high, cfg.action_scale)
    learner = make_learner(cfg, task.observation_spec, task.action_size)
    loop = SimLoop(task, base, learner, scaler, num_envs=16, replay_capacity=50_000)

    # demos: a noisy expert, relabelled with the base's own actions
    demo_policy = lambda k, o: expert_action(o) + 0.1 * jax.random.normal(k, o.shape[:-1] + (2,))
    offline = jax.jit(lambda k: fill_from_policy(ReplayBuffer(20_000), loop.writer, task, base,
                                                 scaler, demo_policy, k, 16, 200))(jax.random.key(5))
    assert int(offline.size) > 2000

    evaluate = jax.jit(loop.evaluate, static_argnums=2)
    eval_key = jax.random.key(99)
    base_eval = evaluate(None, eval_key, EVAL_EPISODES)
    assert 0.30 <= float(base_eval["success_rate"]) <= 0.50, base_eval["success_rate"]

    ls = loop.init(jax.random.key(0), learner.init(jax.random.key(1)))
    ls, _ = jax.jit(loop.warmup, static_argnums=1)(ls, 60)                  # ~1k env steps
    ls, _ = jax.jit(loop.critic_warmup, static_argnums=2)(ls, offline, 500)
    train = jax.jit(loop.train, static_argnums=2)
    for _ in range(12):                                                     # ~19k env steps
        ls, stats = train(ls, offline, 100)
    final = evaluate(ls.learner_state, eval_key, EVAL_EPISODES)
    assert final["success"].shape == (EVAL_EPISODES,)
    assert float(final["success_rate"]) >= 0.90, (float(base_eval["success_rate"]),
                                                  float(final["success_rate"]))
    # the residual is a correction of bounded size, not a replacement of the base
    assert 0.0 < float(stats["residual_abs_mean"]) <= cfg.action_scale
