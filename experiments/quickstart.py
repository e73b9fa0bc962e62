"""Quick start: make a biased base better with residual TD3, end to end, on a laptop CPU.

    python -m experiments.quickstart                 # PointReach, CPU preset, ~80 s on 2 cores

Pipeline: expert demos (relabelled with the base's own actions) -> warm-up collection (base +
uniform residual noise) -> critic warm-up -> main loop (act, store, update on 50/50 online +
demo batches) -> evaluation of the base alone and base + residual on the same episodes.
Until the MJX manipulation tasks and trained BC bases land, the task is PointReach with a
scripted, deliberately biased base (about 45% success).
"""
from __future__ import annotations

import dataclasses
import time

import jax
from absl import app
from tqdm import tqdm

from resfit_jax.base_policy import FunctionBase
from resfit_jax.envs import PointReach
from resfit_jax.envs.point_reach import biased_base_action, expert_action
from resfit_jax.normalization import ActionScaler
from resfit_jax.replay import ReplayBuffer
from resfit_jax.residual_td3 import PRESETS, make_learner
from resfit_jax.training.evaluation import wilson_interval
from resfit_jax.training.sim_loop import SimLoop, fill_from_policy


@dataclasses.dataclass(frozen=True)
class QuickstartConfig:
    preset: str = "cpu"
    num_envs: int = 16
    demo_envs: int = 16
    demo_steps: int = 200          # vector steps of expert rollouts (~60 demos)
    warmup_steps: int = 60         # vector steps of base + uniform noise (~1k env steps)
    critic_warmup: int = 500       # critic-only updates
    train_chunks: int = 12         # chunks of chunk_steps vector steps
    chunk_steps: int = 100
    eval_episodes: int = 200
    replay_capacity: int = 50_000
    seed: int = 0


def run(cfg: QuickstartConfig, progress: bool = False) -> dict:
    """Run the pipeline; returns base / residual eval dicts and per-chunk training history."""
    task = PointReach()
    base = FunctionBase(biased_base_action, task.action_size)
    lcfg = PRESETS[cfg.preset]()
    scaler = ActionScaler.from_bounds(task.action_low, task.action_high, lcfg.action_scale)
    learner = make_learner(lcfg, task.observation_spec, task.action_size)
    loop = SimLoop(task, base, learner, scaler, num_envs=cfg.num_envs,
                   replay_capacity=cfg.replay_capacity)
    keys = jax.random.split(jax.random.key(cfg.seed), 5)

    def demo_policy(k, obs):
        return expert_action(obs) + 0.1 * jax.random.normal(k, obs.shape[:-1] + (task.action_size,))

    offline = jax.jit(lambda k: fill_from_policy(
        ReplayBuffer(20_000), loop.writer, task, base, scaler, demo_policy, k,
        cfg.demo_envs, cfg.demo_steps))(keys[0])
    evaluate = jax.jit(loop.evaluate, static_argnums=2)
    base_eval = evaluate(None, keys[1], cfg.eval_episodes)
    ls = loop.init(keys[2], learner.init(keys[3]))
    ls, _ = jax.jit(loop.warmup, static_argnums=1)(ls, cfg.warmup_steps)
    ls, _ = jax.jit(loop.critic_warmup, static_argnums=2)(ls, offline, cfg.critic_warmup)
    train = jax.jit(loop.train, static_argnums=2)
    history = []
    bar = tqdm(range(cfg.train_chunks), desc="residual TD3", disable=not progress)
    for _ in bar:
        ls, stats = train(ls, offline, cfg.chunk_steps)
        rate = float(stats["successes"]) / max(float(stats["episodes"]), 1.0)
        history.append({"env_steps": int(ls.env_steps), "train_success": rate,
                        "critic_loss": float(stats["critic_loss"]), "q_mean": float(stats["q_mean"]),
                        "residual_abs_mean": float(stats["residual_abs_mean"])})
        bar.set_postfix(env_steps=int(ls.env_steps), train_success=f"{rate:.2f}")
    final = evaluate(ls.learner_state, keys[1], cfg.eval_episodes)
    return {"base": base_eval, "residual": final, "history": history,
            "env_steps": int(ls.env_steps), "learner_state": ls.learner_state}


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate p over n episodes."""
    return wilson_interval(round(p * n), n, z)


def main(_):
    cfg = QuickstartConfig()
    print("Resolved config:", cfg)
    t0 = time.time()
    out = run(cfg, progress=True)
    n = cfg.eval_episodes
    print(f"\nPointReach, {n} matched evaluation episodes, {out['env_steps']} training env steps, "
          f"{time.time() - t0:.0f} s on {jax.default_backend()}")
    print(f"{'policy':<10}{'success':>9}{'95% CI':>16}{'mean steps (successes)':>25}")
    for name in ("base", "residual"):
        e = out[name]
        p = float(e["success_rate"])
        lo, hi = wilson(p, n)
        label = "BC base" if name == "base" else "ResFiT"
        print(f"{label:<10}{p:>9.1%}{f'[{lo:.2f}, {hi:.2f}]':>16}{float(e['mean_success_length']):>25.1f}")


if __name__ == "__main__":
    app.run(main)
